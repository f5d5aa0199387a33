"""The multi-host lab: topology, namespace builder, UML runner and the `routed-nv lab` commands."""
