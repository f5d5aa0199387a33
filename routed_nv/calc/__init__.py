"""Pure desired-state calculation: (config, directory view) -> desired kernel objects."""
