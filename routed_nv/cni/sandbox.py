"""The container's network namespace, as the plugin sees it: a name the agent can use, and what
is inside it (for the result and CHECK). The agent does the kernel work; this only pins and reads.

The agent knows namespaces by name under /run/netns (routed_nv/netns.py). A CNI_NETNS that is
one of those (a valid endpoint-style name) is passed as is; any other (/proc/PID/ns/net, Podman's
42-character netns-UUID names) is pinned by a bind mount at /run/netns/<endpoint id>, which DEL
and GC remove: the mount keeps the namespace the agent was told about, whatever the PID does.
Reads inside the namespace use /proc/thread-self/net and ioctls from a thread that entered it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import ipaddress
import os
import re
import socket
import struct
from dataclasses import dataclass, field

from routed_nv import netns as rnv_netns
from routed_nv.errors import RoutedNvError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")  # config/types.py's Name
NAMED_DIRS = ("/run/netns", "/var/run/netns")
MS_BIND = 4096
MNT_DETACH = 2
SIOCGIFMTU = 0x8921
SIOCGIFHWADDR = 0x8927


class SandboxError(RoutedNvError):
    pass


def agent_name(cni_netns: str) -> str | None:
    """The name the agent can open, if CNI_NETNS already is one (else it needs a pin)."""
    directory, name = os.path.split(os.path.normpath(cni_netns))
    return name if directory in NAMED_DIRS and _NAME.match(name) else None


def pin(cni_netns: str, name: str) -> None:
    """Bind-mount the namespace at /run/netns/<name> (as `ip netns attach` would)."""
    target = os.path.join(rnv_netns.NETNS_DIR, name)
    os.makedirs(rnv_netns.NETNS_DIR, mode=0o755, exist_ok=True)
    with open(target, "a"):
        pass
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(cni_netns.encode(), target.encode(), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise SandboxError(f"cannot pin {cni_netns} at {target}: {os.strerror(err)}")


def unpin(name: str) -> None:
    """Undo pin(); nothing there is fine (DEL is idempotent)."""
    target = os.path.join(rnv_netns.NETNS_DIR, name)
    if not os.path.exists(target):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.umount2(target.encode(), MNT_DETACH)  # EINVAL: not mounted (a half-made pin)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(target)


@dataclass
class Inside:
    """The container side as the kernel has it."""

    ifname: str
    present: bool = False
    mac: str = ""
    mtu: int = 0
    addresses: set[str] = field(default_factory=set)  # of every interface, without length
    v4_gateways: set[str] = field(default_factory=set)  # default routes' next hops on ifname
    v6_gateways: set[str] = field(default_factory=set)


def inspect(cni_netns: str, ifname: str) -> Inside:
    """Read ifname, the addresses and the default routes inside the namespace."""

    def read() -> Inside:
        inside = Inside(ifname)
        try:
            socket.if_nametoindex(ifname)
        except OSError:
            return inside
        inside.present = True
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = struct.pack("16s24x", ifname.encode())
            hw = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, req)
            inside.mac = ":".join(f"{b:02x}" for b in hw[18:24])
            inside.mtu = struct.unpack_from("i", fcntl.ioctl(s.fileno(), SIOCGIFMTU, req), 16)[0]
        inside.addresses = _v4_local() | _v6_addresses()
        inside.v4_gateways, inside.v6_gateways = _v4_defaults(ifname), _v6_defaults(ifname)
        return inside

    try:
        return rnv_netns.run_in_netns_path(cni_netns, read)
    except (rnv_netns.NetnsError, OSError) as exc:
        raise SandboxError(f"{cni_netns}: {exc}") from None


def _proc(name: str) -> list[str]:
    with open(f"/proc/thread-self/net/{name}") as f:  # this thread's namespace
        return f.read().splitlines()


def _v4_local() -> set[str]:
    """Local IPv4 addresses: fib_trie's "/32 host LOCAL" leaves."""
    out, last = set(), ""
    for line in _proc("fib_trie"):
        text = line.strip()
        if text.startswith("|--"):
            last = text[3:].strip()
        elif text.startswith("/32 host LOCAL") and last:
            out.add(last)
    return out


def _v6_addresses() -> set[str]:
    out = set()
    for line in _proc("if_inet6"):
        hexaddr = line.split()[0]
        out.add(str(ipaddress.IPv6Address(bytes.fromhex(hexaddr))))
    return out


def _v4_defaults(ifname: str) -> set[str]:
    out = set()
    for line in _proc("route")[1:]:
        cols = line.split()
        if cols[0] == ifname and cols[1] == "00000000" and cols[7] == "00000000":
            out.add(str(ipaddress.IPv4Address(struct.pack("<I", int(cols[2], 16)))))
    return out


def _v6_defaults(ifname: str) -> set[str]:
    out = set()
    for line in _proc("ipv6_route"):
        cols = line.split()
        if cols[-1] == ifname and cols[0] == "0" * 32 and cols[1] == "00":
            out.add(str(ipaddress.IPv6Address(bytes.fromhex(cols[4]))))
    return out


def host_link(name: str) -> tuple[str, int, str] | None:
    """(mac, mtu, master) of a host-side link, None if it is not there."""
    base = f"/sys/class/net/{name}"
    try:
        with open(f"{base}/address") as f:
            mac = f.read().strip()
        with open(f"{base}/mtu") as f:
            mtu = int(f.read())
    except OSError:
        return None
    master = (
        os.path.basename(os.readlink(f"{base}/master")) if os.path.islink(f"{base}/master") else ""
    )
    return mac, mtu, master
