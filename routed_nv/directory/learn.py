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
from typing import TypeVar

from routed_nv.config.model import Config, Tenant
from routed_nv.config.views import local_addresses
from routed_nv.model import markers
from routed_nv.model.directory import Claim, DirectoryView, IPNetwork, PeerHost, RemoteRoute
from routed_nv.model.directory_delta import DirectoryDelta, Marks, TenantPeer
from routed_nv.model.mobility import MAX_SEQUENCE
from routed_nv.model.route_set import SharedSet
from routed_nv.model.routing import DEFAULT_METRIC

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
UNKNOWN_HOST_ID = 0
HOST_PREFIX_LEN = 64
HOST_INTERFACE_ID = 1  # a host address is <prefix>::1 (config.model.Host.address)
T = TypeVar("T")


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


@dataclass(frozen=True, slots=True)
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


Where = tuple[int, IPNetwork]


class Learner:
    """learn() kept current one route at a time: `update` changes only the (tenant, address)
    pairs its routes are for and answers with the delta of the view, so a directory event costs
    what it changes, not the 100,000 routes a host may carry. `view` and `rejected` are always
    what learn() over the same routes would give (tests check that). The view's remote routes
    are a SharedSet, changed by each update's delta: a new view shares all but the changed
    buckets with the one before, so no event copies the whole set."""

    def __init__(
        self,
        config: Config,
        routes: Iterable[MirrorRoute] = (),
        published: Iterable[PublishedRoute] = (),
    ) -> None:
        self.config = config
        self._local = local_addresses(config)
        self._check = _Checker(config)
        self._paths: dict[MirrorRoute, RemoteRoute | Rejection] = {}
        # the mirror routes of each valid, not local address, the winner first. Almost every
        # address has one: it is kept bare, not in a 1-tuple (100,000 tuples are ~6 MB)
        self._locations: dict[Where, MirrorRoute | tuple[MirrorRoute, ...]] = {}
        self._superseded: dict[Where, tuple[Rejection, ...]] = {}
        self._contested: dict[RemoteRoute, int] = {}  # several mirror routes may give one
        self._published: dict[PublishedRoute, Claim] = {}
        self._claims: dict[Claim, int] = {}
        self._peers: dict[TenantPeer, int] = {}  # routes per (tenant, peer host)
        self._remote: SharedSet[RemoteRoute] = SharedSet()
        self._view: DirectoryView | None = None  # built when asked, until the next change
        self.rejections = 0  # counts changes of `rejected`: a refused route changes no view
        self._refused: dict[MirrorRoute, Rejection] = {}  # by the checks
        self._rejected: tuple[int, tuple[Rejection, ...]] | None = None  # rejected, as of
        self.update([(True, r) for r in routes] + [(True, p) for p in published])

    @property
    def view(self) -> DirectoryView:
        if self._view is None:
            self._view = DirectoryView(
                self._remote, frozenset(self._contested), frozenset(self._claims)
            )
        return self._view

    @property
    def rejected(self) -> tuple[Rejection, ...]:
        if self._rejected is None or self._rejected[0] != self.rejections:
            found = sorted(self._refused.values(), key=lambda r: r.route.sort_key())
            losers = (r for rejections in self._superseded.values() for r in rejections)
            self._rejected = (self.rejections, (*found, *losers))
        return self._rejected[1]

    def learned(self) -> Learned:
        return Learned(self.view, self.rejected)

    def update(
        self, changes: Iterable[tuple[bool, MirrorRoute | PublishedRoute]]
    ) -> DirectoryDelta:
        """Add (True) or remove (False) each route in turn; the net change of the view. Adding a
        route already there, or removing one that is not, changes nothing."""
        batch = _Batch()
        for added, route in changes:
            if isinstance(route, PublishedRoute):
                self._publish(batch, added, route)
            elif added:
                self._add(batch, route)
            else:
                self._remove(batch, route)
        delta = batch.delta()
        if delta:
            self._remote = self._remote.changed(delta.remote_added, delta.remote_removed)
            self._view = None
        return delta

    def _add(self, batch: _Batch, mirror: MirrorRoute) -> None:
        if mirror in self._paths:
            return
        outcome = self._check(mirror)
        if isinstance(outcome, Rejection):
            self._paths[mirror] = self._refused[mirror] = outcome
            self.rejections += 1
            return
        route = self._paths[mirror] = outcome.route  # not the _Candidate: ~50 B a route
        key = (route.tenant_id, route.prefix)
        if key in self._local:
            _count(self._contested, route, 1, batch.contested)
            return
        self._choose(batch, key, (*self._candidates(key), mirror))

    def _remove(self, batch: _Batch, mirror: MirrorRoute) -> None:
        outcome = self._paths.get(mirror)
        if outcome is None:
            return
        if isinstance(outcome, Rejection):
            del self._paths[mirror], self._refused[mirror]
            self.rejections += 1
            return
        key = (outcome.tenant_id, outcome.prefix)
        if key in self._local:
            del self._paths[mirror]
            _count(self._contested, outcome, -1, batch.contested)
            return
        self._choose(batch, key, tuple(m for m in self._candidates(key) if m != mirror))
        del self._paths[mirror]  # after: _choose looks up the old winner's route

    def _candidates(self, key: Where) -> tuple[MirrorRoute, ...]:
        found = self._locations.get(key, ())
        return found if isinstance(found, tuple) else (found,)

    def _route(self, mirror: MirrorRoute) -> RemoteRoute:
        route = self._paths[mirror]
        assert isinstance(route, RemoteRoute)  # a location is a valid path
        return route

    def _rank(self, mirror: MirrorRoute) -> tuple[tuple[int, int], tuple[int, ...]]:
        return (mirror.metric, int(self._route(mirror).peer.address)), mirror.sort_key()

    def _choose(self, batch: _Batch, key: Where, candidates: tuple[MirrorRoute, ...]) -> None:
        """The winner of one address again, now that its locations are `candidates`, as learn()
        picks it (rank, then the route order)."""
        before = self._candidates(key)
        old = self._route(before[0]) if before else None
        if self._superseded.pop(key, None):
            self.rejections += 1
        new = None
        if not candidates:
            del self._locations[key]
        elif len(candidates) == 1:
            self._locations[key] = candidates[0]
            new = self._route(candidates[0])
        else:
            ranked = sorted(candidates, key=self._rank)
            self._locations[key] = tuple(ranked)
            new = self._route(ranked[0])
            self.rejections += 1
            detail = f"{new.peer.address} (metric {ranked[0].metric}) wins"
            self._superseded[key] = tuple(
                Rejection(m, Reason.SUPERSEDED, detail) for m in ranked[1:]
            )
        if old is not None and old != new:
            batch.remote.change(old, False)
            _count(self._peers, (key[0], old.peer), -1, batch.peers)
        if new is not None and new != old:
            batch.remote.change(new, True)
            _count(self._peers, (key[0], new.peer), 1, batch.peers)

    def _publish(self, batch: _Batch, added: bool, route: PublishedRoute) -> None:
        if added and route not in self._published:
            claim = _claim(self.config, route)
            if claim is not None:
                self._published[route] = claim
                _count(self._claims, claim, 1, batch.published)
        elif not added and route in self._published:
            _count(self._claims, self._published.pop(route), -1, batch.published)


def _count(counts: dict[T, int], item: T, step: int, marks: Marks[T]) -> None:
    """Count `item` up or down; the set of counted items changes when a count leaves or
    reaches 0."""
    n = counts.get(item, 0) + step
    if n:
        counts[item] = n
    else:
        del counts[item]
    if n == 0 or n == step:
        marks.change(item, n > 0)


class _Batch:
    def __init__(self) -> None:
        self.remote: Marks[RemoteRoute] = Marks()
        self.contested: Marks[RemoteRoute] = Marks()
        self.published: Marks[Claim] = Marks()
        self.peers: Marks[TenantPeer] = Marks()

    def delta(self) -> DirectoryDelta:
        return DirectoryDelta(
            *self.remote.net(),
            *self.contested.net(),
            *self.published.net(),
            frozenset(self.peers),
        )
