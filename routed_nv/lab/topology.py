"""The lab's description: underlay nodes, tenants and workloads (data only, validated).

Addressing plan (documented here because the builder and the tests share it):
- every underlay node (host or route reflector) owns a /64 inside the underlay aggregate;
- its uplink to the underlay router carries `<node /64>:ffff::1`. Interface ids ::1..::ffff are
  left to the datapath: ::1 is the host address, ::1:<tenant id> the tenant outer addresses;
- each router<->node veth is a point-to-point link addressed fe80::1 (router) / fe80::2 (node);
  the router routes each node /64 to fe80::2 on that link, and nodes route the aggregate to fe80::1:
  statically, or (`bgp_underlay`) learned by eBGP between the nodes' BIRD and the router's, which
  then plays the top-of-rack router (lab/bird.py); the builder installs no underlay routes then.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address, IPv6Network

from routed_nv.errors import RoutedNvError

NS_PREFIX = "rnv-lab-"  # every namespace the lab creates; cleanup only ever touches these
ROUTER = "router"
UPLINK = "uplink"  # the node's link to the underlay router
WORKLOAD_IFNAME = "eth0"
ROUTER_LINK_LOCAL = IPv6Address("fe80::1")
NODE_LINK_LOCAL = IPv6Address("fe80::2")
UPLINK_INTERFACE_ID = 0xFFFF_0000_0000_0001  # :ffff::1, clear of ::1 and ::1:<tenant id>
IFNAMSIZ = 15


class TopologyError(RoutedNvError, ValueError):
    pass


@dataclass(frozen=True)
class Node:
    """A machine on the underlay: a hypervisor host, or (later) a route reflector."""

    id: int
    name: str
    prefix: IPv6Network

    @property
    def namespace(self) -> str:
        return NS_PREFIX + self.name

    @property
    def uplink_address(self) -> IPv6Address:
        return self.prefix[UPLINK_INTERFACE_ID]

    @property
    def router_link(self) -> str:
        """The router's side of this node's uplink."""
        return f"to-{self.name}"


@dataclass(frozen=True)
class Tenant:
    id: int
    name: str
    ipv4: ipaddress.IPv4Network
    ipv6: IPv6Network


@dataclass(frozen=True)
class Workload:
    name: str
    tenant: str
    host: str
    ipv4: IPv4Address
    ipv6: IPv6Address

    @property
    def namespace(self) -> str:
        return NS_PREFIX + self.name

    @property
    def host_link(self) -> str:
        """The workload veth's host side (its other side is eth0 in the workload namespace)."""
        return f"wl-{self.name}"


@dataclass(frozen=True)
class Topology:
    aggregate: IPv6Network
    hosts: tuple[Node, ...]
    tenants: tuple[Tenant, ...]
    workloads: tuple[Workload, ...]
    route_reflectors: tuple[Node, ...] = field(default=())  # BGP arrives with the directory
    bgp_underlay: bool = False  # underlay routes from eBGP with the router, not static ones

    def __post_init__(self) -> None:
        validate(self)

    @property
    def router_namespace(self) -> str:
        return NS_PREFIX + ROUTER

    @property
    def underlay_nodes(self) -> tuple[Node, ...]:
        return self.hosts + self.route_reflectors

    @property
    def namespaces(self) -> list[str]:
        """Every namespace of the lab, in creation order."""
        return [
            self.router_namespace,
            *(n.namespace for n in self.underlay_nodes),
            *(w.namespace for w in self.workloads),
        ]

    def host(self, name: str) -> Node:
        return next(h for h in self.hosts if h.name == name)

    def tenant(self, name: str) -> Tenant:
        return next(t for t in self.tenants if t.name == name)

    def workloads_on(self, host: str) -> list[Workload]:
        return [w for w in self.workloads if w.host == host]


def _duplicates(values: list[object]) -> list[object]:
    return [v for v, n in Counter(values).items() if n > 1]


def validate(topology: Topology) -> None:
    """Raise TopologyError on the first inconsistency, naming the offending object."""
    nodes = topology.underlay_nodes
    names = [n.name for n in nodes] + [w.name for w in topology.workloads] + [ROUTER]
    checks: list[tuple[list[object], str]] = [
        (_duplicates(names), "duplicate namespace names"),
        (_duplicates([n.id for n in nodes]), "duplicate node ids"),
        (_duplicates([n.prefix for n in nodes]), "duplicate node prefixes"),
        (_duplicates([t.id for t in topology.tenants]), "duplicate tenant ids"),
        (_duplicates([t.name for t in topology.tenants]), "duplicate tenant names"),
    ]
    for found, what in checks:
        if found:
            raise TopologyError(f"{what}: {', '.join(map(str, found))}")
    for node in nodes:
        if node.prefix.prefixlen != 64 or not node.prefix.subnet_of(topology.aggregate):
            raise TopologyError(f"{node.name}: {node.prefix} is not a /64 in {topology.aggregate}")
        if len(node.router_link) > IFNAMSIZ:
            raise TopologyError(f"{node.name}: name too long for link {node.router_link}")
    hosts = {h.name for h in topology.hosts}
    tenants = {t.name: t for t in topology.tenants}
    for w in topology.workloads:
        tenant = tenants.get(w.tenant)
        if tenant is None or w.host not in hosts:
            raise TopologyError(f"{w.name}: unknown tenant {w.tenant!r} or host {w.host!r}")
        if w.ipv4 not in tenant.ipv4 or w.ipv6 not in tenant.ipv6:
            raise TopologyError(f"{w.name}: addresses outside {tenant.ipv4} / {tenant.ipv6}")
        if len(w.host_link) > IFNAMSIZ:
            raise TopologyError(f"{w.name}: name too long for link {w.host_link}")
    for tenant in topology.tenants:
        members = [w for w in topology.workloads if w.tenant == tenant.name]
        clash = _duplicates([w.ipv4 for w in members]) + _duplicates([w.ipv6 for w in members])
        if clash:
            raise TopologyError(f"tenant {tenant.name}: duplicate addresses {clash}")


def default_topology() -> Topology:
    """3 hosts, 2 tenants with the same (overlapping) subnets, one workload per tenant per host."""
    hosts = tuple(
        Node(id=i, name=f"host{i}", prefix=IPv6Network(f"2001:db8:0:{i}::/64")) for i in (1, 2, 3)
    )
    subnet4, subnet6 = ipaddress.IPv4Network("10.0.0.0/24"), IPv6Network("fd10::/64")
    tenants = (Tenant(100, "blue", subnet4, subnet6), Tenant(200, "red", subnet4, subnet6))
    return Topology(IPv6Network("2001:db8::/48"), hosts, tenants, one_each(tenants, hosts))


def one_each(tenants: tuple[Tenant, ...], hosts: tuple[Node, ...]) -> tuple[Workload, ...]:
    """One workload per tenant per host, named <tenant><host id>, host id as its address."""
    return tuple(
        Workload(
            name=f"{t.name}{h.id}",
            tenant=t.name,
            host=h.name,
            ipv4=t.ipv4[h.id],
            ipv6=t.ipv6[h.id],
        )
        for t in tenants
        for h in hosts
    )


def directory_topology(hosts: int = 3, reflectors: int = 2) -> Topology:
    """The default topology plus route reflectors (rr1, rr2) for the BGP directory, with a
    BGP underlay (every node announces its /64 to the router). `hosts` and `reflectors` make it
    smaller (the directory benchmark's 2-host/1-RR mode keeps host1, host2 and rr1).

    Route reflector ids and /64s follow the hosts' pattern (id 11 -> 2001:db8:0:11::/64) so that
    router ids, derived from node ids, are unique across the whole underlay.
    """
    base = default_topology()
    kept = base.hosts[:hosts]
    names = {h.name for h in kept}
    workloads = tuple(w for w in base.workloads if w.host in names)
    rrs = tuple(
        Node(id=i, name=f"rr{n}", prefix=IPv6Network(f"2001:db8:0:{i}::/64"))
        for n, i in ((1, 11), (2, 12))
    )
    return Topology(
        base.aggregate, kept, base.tenants, workloads, rrs[:reflectors], bgp_underlay=True
    )
