"""The agent: the reconcile loop, the Datapath that runs the drivers in order, the directory
sources, the control socket and the log; the one layer that imports calc and the drivers."""
