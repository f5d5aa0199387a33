"""Persistent tap devices for QEMU, made with the tun driver's ioctls (stdlib only: the hook
blocks domain start). QEMU attaches to the tap by name (`managed='no'`), as its owner/group."""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import subprocess

from routed_nv.errors import RoutedNvError

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE
SIOCSIFHWADDR = 0x8924
SIOCGIFHWADDR = 0x8927
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000  # what QEMU asks for; a persistent tap keeps the flags of its creator
ARPHRD_ETHER = 1


class TapError(RoutedNvError):
    """One line naming the tap and what failed."""


# By name in this process's network namespace, not through /sys/class/net: sysfs shows the
# namespace it was mounted in, which is not ours after a bare setns or unshare (no remount).
def exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def mac_of(name: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = fcntl.ioctl(s, SIOCGIFHWADDR, struct.pack("16s16x", name.encode()))
    return ":".join(f"{b:02x}" for b in ifreq[18:24])  # after the name and sa_family


def create(name: str, mac: str, uid: int | None, gid: int | None) -> bool:
    """Make the persistent tap (True), or find it already there (False): an existing tap is
    given the owner, group and MAC again, so a repeated prepare converges."""
    made = not exists(name)
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:  # no static node and no tun module loaded
        raise TapError(f"tap {name}: /dev/net/tun: {exc.strerror} (modprobe tun)") from None
    try:
        _ioctl(fd, name, "attach", TUNSETIFF, _ifreq(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        if uid is not None:
            _ioctl(fd, name, "set owner", TUNSETOWNER, uid)
        if gid is not None:
            _ioctl(fd, name, "set group", TUNSETGROUP, gid)
        _ioctl(fd, name, "make persistent", TUNSETPERSIST, 1)
    except TapError:
        if made:
            _unpersist(fd, name)
        raise
    finally:
        os.close(fd)
    try:
        set_mac(name, mac)
    except TapError:
        if made:
            delete(name)
        raise
    return made


def set_mac(name: str, mac: str) -> None:
    raw = bytes.fromhex(mac.replace(":", ""))
    req = struct.pack("16sH6s8x", name.encode(), ARPHRD_ETHER, raw)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            fcntl.ioctl(s.fileno(), SIOCSIFHWADDR, req)
        except OSError as exc:
            raise TapError(f"tap {name}: set MAC {mac}: {exc.strerror}") from None


def pin_neighbours(name: str, mac: str, addresses: list[str]) -> None:
    """Permanent neighbour entries for the guest's addresses on its tap. Without them the host
    learns the guest's MAC by ARP/NDP, which a paused guest (an incoming migration until the
    switchover) cannot answer: the kernel then drops what waits for resolution (about a second
    of a 10 ms ping in the lab), where with them frames wait in the tap's queue for the guest.
    They go with the tap (after the agent has enslaved it: enslaving flushes entries)."""
    batch = "".join(f"neigh replace {a} lladdr {mac} dev {name} nud permanent\n" for a in addresses)
    done = subprocess.run(
        ["ip", "-batch", "-"], input=batch, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise TapError(f"tap {name}: neighbour entries: {done.stderr.strip().splitlines()[-1:]}")


def delete(name: str) -> None:
    """Drop persistence: the tap goes when its last user (QEMU) has closed it. Absent is fine."""
    if not exists(name):
        return
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        _ioctl(fd, name, "attach", TUNSETIFF, _ifreq(name, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
        _unpersist(fd, name)
    finally:
        os.close(fd)


def _unpersist(fd: int, name: str) -> None:
    _ioctl(fd, name, "drop persistence", TUNSETPERSIST, 0)


def _ifreq(name: str, flags: int) -> bytes:
    return struct.pack("16sH22x", name.encode(), flags)


def _ioctl(fd: int, name: str, what: str, request: int, arg: bytes | int) -> None:
    try:
        fcntl.ioctl(fd, request, arg)
    except OSError as exc:
        raise TapError(f"tap {name}: {what}: {exc.strerror}") from None
