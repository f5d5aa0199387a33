"""The routing objects routed_nv wants in the kernel, as plain frozen values.

The calculation produces them, the driver reads the kernel back into the same types and compares.
`netns` None means "the host's namespace" (whichever namespace the driver was opened for); any
other value names a workload namespace under /run/netns.
Every object has `describe()` (names it, for errors) and `__str__` (all managed values, for plans).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# The kernel's default route metric when none is given (IPv4 0, IPv6 1024).
DEFAULT_METRIC = {4: 0, 6: 1024}
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
MAIN_TABLE = 254
LOCAL_TABLE = 255


def _in(netns: str | None) -> str:
    return f" netns {netns}" if netns else ""


@dataclass(frozen=True, order=True)
class Sysctl:
    path: str  # below /proc/sys, e.g. "net/ipv6/conf/rnv0/accept_dad" (interface dots kept)
    value: str
    netns: str | None = None

    @property
    def key(self) -> tuple[str | None, str]:
        return (self.netns, self.path)

    def describe(self) -> str:
        return f"sysctl {self.path}{_in(self.netns)}"

    def __str__(self) -> str:
        return f"sysctl {self.path} = {self.value}{_in(self.netns)}"


class LinkKind(StrEnum):
    DUMMY = "dummy"
    VRF = "vrf"
    IP6TNL = "ip6tnl"
    VETH = "veth"


# Creation order: a VRF must exist before its tunnel and veths are enslaved to it.
LINK_ORDER = {LinkKind.DUMMY: 0, LinkKind.VRF: 1, LinkKind.IP6TNL: 2, LinkKind.VETH: 3}


@dataclass(frozen=True)
class Tunnel:
    """An NBMA ip6tnl: the outer destination comes from each route's next hop."""

    local: ipaddress.IPv6Address
    remote: ipaddress.IPv6Address | None = None  # None: "remote any"
    mode: str = "any"  # carries IPv4 and IPv6
    hoplimit: int = 64
    encap_limit: int | None = None  # None: "encaplimit none" (no destination option header)

    def __str__(self) -> str:
        limit = "none" if self.encap_limit is None else self.encap_limit
        return (
            f"mode {self.mode} local {self.local} remote {self.remote or 'any'} "
            f"hoplimit {self.hoplimit} encaplimit {limit}"
        )


@dataclass(frozen=True)
class VethPeer:
    netns: str
    name: str


@dataclass(frozen=True)
class Link:
    """A link routed_nv creates and deletes (recognised by its name, see markers)."""

    name: str
    kind: LinkKind
    netns: str | None = None
    mtu: int | None = None  # None: left at the kernel's default
    master: str | None = None
    up: bool = True
    vrf_table: int | None = None
    tunnel: Tunnel | None = None
    veth_peer: VethPeer | None = None

    @property
    def key(self) -> tuple[str | None, str]:
        return (self.netns, self.name)

    def same_identity(self, other: Link) -> bool:
        """False when the kernel cannot change one into the other in place (must recreate)."""
        return (self.kind, self.vrf_table, self.tunnel, self.veth_peer) == (
            other.kind,
            other.vrf_table,
            other.tunnel,
            other.veth_peer,
        )

    def describe(self) -> str:
        return f"link {self.name}{_in(self.netns)}"

    def __str__(self) -> str:
        parts = [f"link {self.name} type {self.kind}"]
        if self.vrf_table is not None:
            parts.append(f"table {self.vrf_table}")
        if self.tunnel is not None:
            parts.append(str(self.tunnel))
        if self.veth_peer is not None:
            parts.append(f"peer {self.veth_peer.name} netns {self.veth_peer.netns}")
        if self.mtu is not None:
            parts.append(f"mtu {self.mtu}")
        parts.append(f"master {self.master}" if self.master else "nomaster")
        parts.append("up" if self.up else "down")
        return " ".join(parts) + _in(self.netns)


@dataclass(frozen=True)
class Port:
    """An interface routed_nv configures but does not own: a workload's tap or the workload end
    of a veth pair. It is never created or deleted, only enslaved/released, sized and set up."""

    name: str
    mtu: int | None  # None: left as the hypervisor set it
    netns: str | None = None
    master: str | None = None
    up: bool = True

    @property
    def key(self) -> tuple[str | None, str]:
        return (self.netns, self.name)

    def describe(self) -> str:
        return f"port {self.name}{_in(self.netns)}"

    def __str__(self) -> str:
        master = f"master {self.master}" if self.master else "nomaster"
        return f"port {self.name} mtu {self.mtu} {master} {'up' if self.up else 'down'}" + _in(
            self.netns
        )


@dataclass(frozen=True, order=True)
class Address:
    ifname: str
    address: IPInterface  # IPv6 addresses are always added with nodad
    netns: str | None = None

    @property
    def key(self) -> Address:
        return self

    def describe(self) -> str:
        return f"address {self.address} dev {self.ifname}{_in(self.netns)}"

    __str__ = describe


# slots: the routing driver caches one per remote route (100,000 and more)
@dataclass(frozen=True, slots=True)
class Route:
    dst: IPNetwork
    table: int
    proto: int
    dev: str | None = None
    via: IPAddress | None = None  # an IPv6 next hop of an IPv4 route uses RTA_VIA
    onlink: bool = False
    unreachable: bool = False
    scope: int = RT_SCOPE_UNIVERSE
    metric: int = field(default=-1)  # -1: the kernel's default for the family
    netns: str | None = None

    def __post_init__(self) -> None:
        if self.metric == -1:
            object.__setattr__(self, "metric", DEFAULT_METRIC[self.dst.version])

    @property
    def key(self) -> tuple[str | None, int, IPNetwork, int]:
        # what the kernel itself uses to tell two routes apart (tos is always 0 here)
        return (self.netns, self.table, self.dst, self.metric)

    def describe(self) -> str:
        return f"route {self.dst} table {self.table}{_in(self.netns)}"

    def __str__(self) -> str:
        parts = ["route", "unreachable" if self.unreachable else "", str(self.dst)]
        if self.via is not None:
            parts.append(f"via {self.via}")
        if self.dev is not None:
            parts.append(f"dev {self.dev}")
        if self.onlink:
            parts.append("onlink")
        if self.scope == RT_SCOPE_LINK:
            parts.append("scope link")
        parts.append(f"table {self.table} proto {self.proto} metric {self.metric}")
        return " ".join(p for p in parts if p) + _in(self.netns)


@dataclass(frozen=True, order=True)
class NeighProxy:
    """An IPv6 proxy-NDP entry: the host answers neighbour solicitations for `address`."""

    ifname: str
    address: ipaddress.IPv6Address
    netns: str | None = None

    @property
    def key(self) -> NeighProxy:
        return self

    def describe(self) -> str:
        return f"neigh proxy {self.address} dev {self.ifname}{_in(self.netns)}"

    __str__ = describe


@dataclass(frozen=True, order=True)
class PolicyRule:
    """An `ip rule` that sends every packet of a family to one table (`from all lookup T`), the
    only kind routed_nv writes."""

    version: int  # 4 or 6
    priority: int
    table: int
    proto: int  # rtm_protocol; a rule carrying one of our protocol numbers is ours
    netns: str | None = None

    @property
    def key(self) -> tuple[str | None, int, int, int]:
        return (self.netns, self.version, self.priority, self.table)

    def describe(self) -> str:
        return f"rule -{self.version} pref {self.priority} lookup {self.table}{_in(self.netns)}"

    def __str__(self) -> str:
        return (
            f"rule -{self.version} pref {self.priority} from all lookup {self.table} "
            f"proto {self.proto}{_in(self.netns)}"
        )


@dataclass(frozen=True)
class DesiredRouting:
    """Everything the routing datapath of one host should have, in every namespace it touches."""

    sysctls: frozenset[Sysctl] = frozenset()
    links: frozenset[Link] = frozenset()
    ports: frozenset[Port] = frozenset()
    addresses: frozenset[Address] = frozenset()
    routes: frozenset[Route] = frozenset()
    neigh_proxies: frozenset[NeighProxy] = frozenset()
    rules: frozenset[PolicyRule] = frozenset()

    def namespaces(self) -> set[str | None]:
        found: set[str | None] = {None}
        for group in (
            self.sysctls,
            self.links,
            self.ports,
            self.addresses,
            self.routes,
            self.neigh_proxies,
            self.rules,
        ):
            found.update(obj.netns for obj in group)
        return found
