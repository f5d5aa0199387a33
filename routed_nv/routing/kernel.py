"""What the routing driver needs from the kernel of one network namespace, and its errors.

netlink.py implements it (pyroute2 for links, addresses and neighbours; rtnl.py for routes); unit
tests implement it with a dictionary. Read methods report facts (LinkState, every address of every
interface); which of them routed_nv owns is the driver's decision.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from routed_nv.errors import RoutedNvError, TransientError
from routed_nv.model.routing import (
    Address,
    IPInterface,
    Link,
    NeighProxy,
    PolicyRule,
    Route,
    Tunnel,
)


class KernelError(RoutedNvError):
    """A kernel operation failed; the message says why in words (e.g. "Network is unreachable")
    and callers prefix it with the object they were working on."""


class AlreadyExists(KernelError):
    pass


class NotFound(KernelError):
    pass


class NetnsNotFound(KernelError):
    pass


class Busy(KernelError, TransientError):
    """The kernel is busy with the object (EBUSY, EAGAIN): the next apply tries again."""


# "Already gone": what deleting a missing route, address, neighbour or device answers.
_GONE = {errno.ENOENT, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENODEV}


def error_from_errno(code: int, detail: str | None = None) -> KernelError:
    """The KernelError for a netlink errno; `detail` is the kernel's extended ack text if any."""
    words = os.strerror(code) + (f" ({detail})" if detail else "")
    if code == errno.EEXIST:
        return AlreadyExists(words)
    if code in _GONE:
        return NotFound(words)
    if code in (errno.EBUSY, errno.EAGAIN):
        return Busy(words)
    return KernelError(words)


class RouteOp(NamedTuple):
    delete: bool  # False: replace (add or overwrite)
    route: Route


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

    def addresses(self) -> list[tuple[str, IPInterface]]:
        """Every address of every interface."""

    def add_address(self, address: Address) -> None: ...

    def delete_address(self, address: Address) -> None: ...

    def routes(self, protos: set[int]) -> list[Route]:
        """Routes of every table whose protocol is one of `protos`."""

    def write_routes(self, ops: Sequence[RouteOp]) -> list[KernelError | None]:
        """Apply the ops in order, many per round trip; one outcome per op (None: done). Deleting
        a route that is already gone is success."""

    def neigh_proxies(self) -> list[NeighProxy]:
        """Every IPv6 proxy-NDP entry."""

    def add_neigh_proxy(self, proxy: NeighProxy) -> None: ...

    def delete_neigh_proxy(self, proxy: NeighProxy) -> None: ...

    def rules(self) -> list[PolicyRule]:
        """Every `from all lookup <table>` rule of both families; rules with any selector
        (l3mdev, iif, fwmark, ...) or another action are not listed."""

    def add_rule(self, rule: PolicyRule) -> None: ...

    def delete_rule(self, rule: PolicyRule) -> None:
        """Delete exactly this rule (priority, table and protocol); gone already is success."""

    def read_sysctl(self, path: str) -> str | None:
        """The value below /proc/sys, None if the entry does not exist (yet)."""

    def write_sysctl(self, path: str, value: str) -> None: ...

    def close(self) -> None: ...
