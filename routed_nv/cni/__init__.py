"""routed-nv-cni: a CNI 1.1 plugin on the agent's endpoint API (docs/cni.md). Stdlib only, so
that a runtime's ADD does not pay for the agent's libraries."""
