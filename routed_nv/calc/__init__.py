"""Pure desired-state calculation: (config, directory view, loaded keys) -> desired kernel objects
(routed_nv.model). Reads no files: the agent loads keys and credentials and passes them in."""
