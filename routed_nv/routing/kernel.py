"""What the routing driver needs from the kernel of one network namespace, and its errors.

netlink.py implements it with pyroute2; unit tests implement it with a dictionary. Read methods
report facts (LinkState); which of them routed_nv owns is the driver's decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from routed_nv.routing.objects import Address, IPInterface, Link, NeighProxy, Route, Tunnel


class KernelError(Exception):
    """A kernel operation failed; the message says why in words (e.g. "Network is unreachable")
    and callers prefix it with the object they were working on."""


class AlreadyExists(KernelError):
    pass


class NotFound(KernelError):
    pass


class NetnsNotFound(KernelError):
    pass


@dataclass(frozen=True)
class LinkState:
    """One link as the kernel reports it."""

    name: str
    index: int
    kind: str | None  # IFLA_INFO_KIND, None for plain devices
    mtu: int
    up: bool
    master: str | None
    vrf_table: int | None = None
    tunnel: Tunnel | None = None
    peer_index: int | None = None  # veth: the other end's ifindex (in its own namespace)


class Kernel(Protocol):
    def links(self) -> list[LinkState]: ...

    def add_link(self, link: Link) -> None:
        """Create the link, then set its MTU, master and state (AlreadyExists if the name is
        taken)."""

    def set_link(self, name: str, mtu: int | None, master: str | None, up: bool) -> None:
        """Change a link in place; master None releases it from its master."""

    def delete_link(self, name: str) -> None: ...

    def addresses(self, ifnames: set[str]) -> list[tuple[str, IPInterface]]: ...

    def add_address(self, address: Address) -> None: ...

    def delete_address(self, address: Address) -> None: ...

    def routes(self, protos: set[int]) -> list[Route]:
        """Routes of every table whose protocol is one of `protos`."""

    def replace_route(self, route: Route) -> None: ...

    def delete_route(self, route: Route) -> None: ...

    def neigh_proxies(self, ifnames: set[str]) -> list[NeighProxy]: ...

    def add_neigh_proxy(self, proxy: NeighProxy) -> None: ...

    def delete_neigh_proxy(self, proxy: NeighProxy) -> None: ...

    def read_sysctl(self, path: str) -> str | None:
        """The value below /proc/sys, None if the entry does not exist (yet)."""

    def write_sysctl(self, path: str, value: str) -> None: ...

    def close(self) -> None: ...
