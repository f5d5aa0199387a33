"""The agent: one-shot apply now, the continuous reconcile loop with the directory later."""
