"""routed_nv: routed network virtualization for Linux hypervisor hosts."""

__version__ = "0.1.0"
