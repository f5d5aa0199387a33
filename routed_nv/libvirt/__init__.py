"""The libvirt / QEMU integration: the qemu hook (docs/libvirt.md)."""
