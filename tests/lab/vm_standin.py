"""A VM stand-in for the libvirt lab test: what QEMU does with a `managed='no'` tap, relaying
the host tap's frames to and from a tap in the "guest" netns (whose eth0 has the guest's MAC,
addresses and routes). Like an incoming QEMU, it opens the host tap first and, with --paused,
reads nothing until a line arrives on stdin (the migration's switchover); frames meanwhile wait
in the tap's queue. Runs until SIGTERM; prints "attached" and then "running" on stdout.

    vm_standin.py HOST_NETNS HOST_TAP GUEST_NETNS GUEST_TAP [--paused]
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import struct
import sys

from routed_nv.netns import run_in_netns

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI = 0x0002, 0x1000


def attach(netns: str, name: str) -> int:
    """The tap's fd; /dev/net/tun opened in the tap's namespace finds it there."""

    def inside() -> int:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI))
        return fd

    return run_in_netns(netns, inside)


def main() -> None:
    host_ns, host_tap, guest_ns, guest_tap = sys.argv[1:5]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    host = attach(host_ns, host_tap)
    print("attached", flush=True)
    if "--paused" in sys.argv:
        sys.stdin.readline()
    guest = attach(guest_ns, guest_tap)
    print("running", flush=True)
    other = {host: guest, guest: host}
    while True:
        for fd in select.select([host, guest], [], [])[0]:
            frame = os.read(fd, 65536)
            with contextlib.suppress(OSError):  # a full or down tap drops it, as a NIC would
                os.write(other[fd], frame)


if __name__ == "__main__":
    main()
