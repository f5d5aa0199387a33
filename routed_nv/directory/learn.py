"""From the mirror tables' routes to the DirectoryView the datapath calculation consumes (pure).

BGP is not trusted blindly: a host can announce anything. Each mirror route is checked against
this host's config, and what fails is rejected with a kind (a bounded label for metrics) and a
sentence (for logs and `routed-nv status`):
- the route must carry one tenant community (BIRD marks a route that carries several, which
  would otherwise land in each of those tenants' tables: one route, one tenant);
- the tenant (from the mirror table) must be one this host knows;
- the prefix must be one address (/32 or /128) inside one of the tenant's subnets;
- the next hop must be another host's host address (<its /64>::1) inside the underlay aggregate
  (a mirror route without one, not written by BIRD, is refused and reported too). The agent's
  BGP source adds the paths BIRD could not write (next hop unreachable from here) as the mirror
  routes they would have been: a foreign next hop is refused here like any other.
BIRD has already chosen one location per (tenant, address) by mobility sequence (a moved
endpoint's route carries local_pref 100 + sequence; docs/directory.md) and the mirror table holds
only that choice, with the sequence in the route's `window` metric. Should a table hold more than
one (routes left by an earlier BIRD config, or written by hand), the lowest metric wins, as it
would in the kernel, then the lowest host address, so the choice never depends on the order
routes were read in.
An address this host holds itself is not remote: its valid routes are `contested` (another host
announces it too: a move, decided by calc/mobility.py). This host's own announcements (its
publish tables) become `published` claims, the other input of that decision.

A host learned from BGP is known by its /64 only. Its host id (the SPI sender slot, needed only
for static keying) comes from config.peers when a peer has that /64, and is UNKNOWN_HOST_ID
otherwise: IKE keying does not need it; static keying cannot key such a peer (the XFRM
calculation reports the clash).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from routed_nv.config.model import Config, Tenant
from routed_nv.config.views import local_addresses
from routed_nv.model import markers
from routed_nv.model.directory import Claim, DirectoryView, IPNetwork, PeerHost, RemoteRoute
from routed_nv.model.mobility import MAX_SEQUENCE
from routed_nv.model.routing import DEFAULT_METRIC

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
UNKNOWN_HOST_ID = 0
HOST_PREFIX_LEN = 64
HOST_INTERFACE_ID = 1  # a host address is <prefix>::1 (config.model.Host.address)


# slots: a watch keeps one per route, 100,000 and more
@dataclass(frozen=True, slots=True)
class MirrorRoute:
    """A route as BIRD wrote it into a mirror table."""

    table: int
    prefix: IPNetwork
    next_hop: IPAddress | None  # None: a route without a gateway (not BIRD's), refused
    metric: int
    sequence: int = 0  # the mobility sequence (model/mobility.py), 0 if none
    tenants: int = 1  # how many tenant communities the BGP route carries (mobility.MIRROR_TENANTS)

    def sort_key(self) -> tuple[int, ...]:
        # ipaddress objects of different versions do not compare; their integers do.
        p, n = self.prefix, self.next_hop
        return (
            self.table,
            p.version,
            int(p.network_address),
            p.prefixlen,
            n.version if n is not None else 0,
            int(n) if n is not None else 0,
            self.metric,
            self.sequence,
            self.tenants,
        )


@dataclass(frozen=True, slots=True)
class PublishedRoute:
    """A route in one of this host's publish tables: the routing driver's, read back."""

    table: int
    prefix: IPNetwork
    metric: int
    proto: int


class Reason(StrEnum):
    NOT_MIRROR = "not-mirror-table"
    MULTIPLE_TENANTS = "multiple-tenants"
    UNKNOWN_TENANT = "unknown-tenant"
    NOT_ONE_ADDRESS = "not-one-address"
    OUTSIDE_SUBNETS = "outside-tenant-subnets"
    BAD_NEXT_HOP = "bad-next-hop"
    SELF = "next-hop-is-this-host"
    SUPERSEDED = "superseded"


@dataclass(frozen=True)
class Rejection:
    route: MirrorRoute
    reason: Reason
    detail: str

    def __str__(self) -> str:
        r = self.route
        via = r.next_hop or "no gateway"
        return f"{r.prefix} via {via} (table {r.table}): {self.reason}: {self.detail}"


@dataclass(frozen=True)
class Learned:
    view: DirectoryView
    rejected: tuple[Rejection, ...]


@dataclass(frozen=True)
class _Candidate:
    route: RemoteRoute
    mirror: MirrorRoute

    def rank(self) -> tuple[int, int]:
        return (self.mirror.metric, int(self.route.peer.address))


def learn(
    config: Config, routes: Iterable[MirrorRoute], published: Iterable[PublishedRoute] = ()
) -> Learned:
    local = local_addresses(config)
    check = _Checker(config)
    rejected: list[Rejection] = []
    contested: set[RemoteRoute] = set()
    locations: dict[tuple[int, IPNetwork], list[_Candidate]] = {}
    for mirror in sorted(set(routes), key=MirrorRoute.sort_key):
        outcome = check(mirror)
        if isinstance(outcome, Rejection):
            rejected.append(outcome)
            continue
        key = (outcome.route.tenant_id, outcome.route.prefix)
        if key in local:
            contested.add(outcome.route)
        else:
            locations.setdefault(key, []).append(outcome)
    chosen = []
    for candidates in locations.values():
        winner, *losers = sorted(candidates, key=_Candidate.rank)
        chosen.append(winner.route)
        detail = f"{winner.route.peer.address} (metric {winner.mirror.metric}) wins"
        rejected += [Rejection(c.mirror, Reason.SUPERSEDED, detail) for c in losers]
    claims = frozenset(c for p in published if (c := _claim(config, p)) is not None)
    view = DirectoryView(frozenset(chosen), frozenset(contested), claims)
    return Learned(view, tuple(rejected))


def _claim(config: Config, route: PublishedRoute) -> Claim | None:
    """This host's announcement that a publish-table route stands for (None: not one of ours;
    BIRD ignores it too)."""
    tenant_id = route.table - markers.PUBLISH_TABLE_BASE
    sequence = route.metric - DEFAULT_METRIC[route.prefix.version]
    if (
        route.proto not in (markers.RTPROT_ENDPOINT, markers.RTPROT_STALE)
        or not markers.TENANT_ID_MIN <= tenant_id <= markers.TENANT_ID_MAX
        or not 0 <= sequence <= MAX_SEQUENCE
        or route.prefix.prefixlen != route.prefix.max_prefixlen
    ):
        return None
    return Claim(tenant_id, route.prefix, sequence, stale=route.proto == markers.RTPROT_STALE)


class _Checker:
    """The checks of one learn() pass. The next-hop checks depend only on the next hop, of
    which there is one per peer host, so each is done once per pass (the agent runs learn
    over every mirror route on each batch of route events: 100,000 routes, a few hosts)."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._tenants: dict[int, Tenant] = {}
        for tenant in config.tenants.values():
            self._tenants.setdefault(tenant.id, tenant)
        self._known = {p.underlay_prefix: (name, p.id) for name, p in config.peers.items()}
        self._peers: dict[IPAddress | None, PeerHost | tuple[Reason, str]] = {}

    def __call__(self, mirror: MirrorRoute) -> _Candidate | Rejection:
        def reject(reason: Reason, detail: str) -> Rejection:
            return Rejection(mirror, reason, detail)

        tenant_id = mirror.table - markers.MIRROR_TABLE_BASE
        if not markers.TENANT_ID_MIN <= tenant_id <= markers.TENANT_ID_MAX:
            return reject(Reason.NOT_MIRROR, f"table {mirror.table} is not a mirror table")
        if mirror.tenants != 1:
            detail = f"tagged for {mirror.tenants} tenants; a route belongs to one"
            return reject(Reason.MULTIPLE_TENANTS, detail)
        tenant = self._tenants.get(tenant_id)
        if tenant is None:
            return reject(Reason.UNKNOWN_TENANT, f"tenant {tenant_id} is not configured here")
        prefix = mirror.prefix
        if prefix.prefixlen != prefix.max_prefixlen:
            return reject(Reason.NOT_ONE_ADDRESS, "an endpoint route is a /32 or /128")
        subnets = tenant.ipv4 if prefix.version == 4 else tenant.ipv6
        # one address: inside a subnet is its address in it (cheaper than subnet_of)
        if not any(prefix.network_address in s for s in subnets):
            return reject(Reason.OUTSIDE_SUBNETS, f"not in tenant {tenant_id}'s subnets")
        peer = self._peers.get(mirror.next_hop)
        if peer is None:
            peer = self._peers[mirror.next_hop] = self._peer(mirror.next_hop)
        if isinstance(peer, tuple):
            return reject(*peer)
        return _Candidate(RemoteRoute(tenant_id, prefix, peer, mirror.sequence), mirror)

    def _peer(self, next_hop: IPAddress | None) -> PeerHost | tuple[Reason, str]:
        if next_hop is None:
            return Reason.BAD_NEXT_HOP, "no next-hop address (not a route BIRD wrote)"
        host_prefix = _host_prefix(next_hop)
        aggregate = self._config.host.underlay_aggregate
        if host_prefix is None or not host_prefix.subnet_of(aggregate):
            return Reason.BAD_NEXT_HOP, f"not a host address (<a /64 in {aggregate}>::1)"
        if host_prefix == self._config.host.underlay_prefix:
            return Reason.SELF, "announced with this host's own address"
        name, host_id = self._known.get(host_prefix) or (str(host_prefix), UNKNOWN_HOST_ID)
        return PeerHost(name, host_id, host_prefix)


def _host_prefix(next_hop: IPAddress) -> ipaddress.IPv6Network | None:
    """The /64 whose host address the next hop is, or None if it is not a host address."""
    if next_hop.version != 6:
        return None
    prefix = ipaddress.IPv6Network((int(next_hop), HOST_PREFIX_LEN), strict=False)
    return prefix if prefix[HOST_INTERFACE_ID] == next_hop else None
