"""What the running agent knows, as one immutable value: status, lookups, metrics read it.

The loop thread builds a Snapshot on request (under its lock, from values it replaces whole), so
the control socket and the metrics thread never see a half-updated agent and never block an
apply. Everything here is plain data; `report.py` turns it into answers.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from routed_nv.calc import mobility
from routed_nv.calc.duplicates import Duplicate
from routed_nv.calc.routing import RoutingConflict, desired_routing, endpoint_objects
from routed_nv.config.model import Config
from routed_nv.model.directory import DirectoryView, IPNetwork
from routed_nv.model.directory_delta import DirectoryDelta
from routed_nv.model.directory_source import PeerStatus, RejectedRoute
from routed_nv.model.routing import Route


@dataclass(frozen=True)
class SaInfo:
    """An ESP SA of ours in the kernel, without its key."""

    src: ipaddress.IPv6Address
    dst: ipaddress.IPv6Address
    spi: int
    tenant_id: int


@dataclass(frozen=True)
class Counts:
    tenants: int = 0
    local_endpoints: int = 0
    remote_addresses: int = 0
    routes: int = 0  # every route routed_nv wants in the kernel (endpoint, remote, plumbing)
    sas: int = 0
    stale_addresses: int = 0  # local addresses another host announced later (calc/mobility.py)
    local_by_tenant: dict[int, int] = field(default_factory=dict)
    remote_by_tenant: dict[int, int] = field(default_factory=dict)


def count(config: Config, view: DirectoryView, sas: Iterable[SaInfo]) -> Counts:
    ids = {name: t.id for name, t in config.tenants.items()}
    local = Counter(ids[ep.tenant] for ep in config.endpoints.values())
    remote = Counter(r.tenant_id for r in view.remote_routes if r.tenant_id in ids.values())
    try:
        # one VRF route per remote address, none of them a local one's (mobility.resolve): no
        # need to build 100,000 of them to count them
        local_only = dataclasses.replace(view, remote_routes=frozenset())
        routes = len(desired_routing(config, local_only).routes) + remote.total()
    except RoutingConflict:  # the apply reported it; nothing of it is in the kernel
        routes = 0
    return Counts(
        tenants=len(ids),
        local_endpoints=local.total(),
        remote_addresses=remote.total(),
        routes=routes,
        sas=len(list(sas)),
        stale_addresses=len(mobility.stale(view)),
        local_by_tenant=dict(local),
        remote_by_tenant=dict(remote),
    )


def changed_endpoints(
    since: tuple[Config, DirectoryView], config: Config, view: DirectoryView
) -> set[str] | None:
    """The endpoints whose definition or claims differ from `since`; None when anything else
    may differ (other config, remote routes)."""
    old_config, old_view = since
    if old_config.model_copy(update={"endpoints": {}}) != config.model_copy(
        update={"endpoints": {}}
    ):
        return None
    if view.remote_routes != old_view.remote_routes:
        return None
    old, new = old_config.endpoints, config.endpoints
    names = {n for n in old.keys() | new.keys() if old.get(n) != new.get(n)}
    # claims are for single addresses: compare addresses, not networks made of each one
    moved = {
        (c.tenant_id, c.prefix.network_address)
        for c in old_view.claims ^ view.claims
        if c.prefix.prefixlen == c.prefix.max_prefixlen
    }
    for c in (old_config, config) if moved else ():
        for name, ep in c.endpoints.items():
            tid = c.tenants[ep.tenant].id
            if any((tid, a) in moved for a in ep.addresses):
                names.add(name)
    return names


def recount_endpoints(
    counts: Counts,
    before: tuple[Config, DirectoryView],
    after: tuple[Config, DirectoryView],
    names: set[str],
) -> Counts:
    """`counts` after a change of these endpoints alone (changed_endpoints): O(names), where
    count() builds every endpoint's routes (at 1,000 endpoints most of an API change's CPU)."""
    old_routes = sum(isinstance(o, Route) for o in endpoint_objects(*before, names))
    new_routes = sum(isinstance(o, Route) for o in endpoint_objects(*after, names))
    config = after[0]
    ids = {name: t.id for name, t in config.tenants.items()}
    local = Counter(ids[ep.tenant] for ep in config.endpoints.values())
    return dataclasses.replace(
        counts,
        local_endpoints=local.total(),
        routes=counts.routes - old_routes + new_routes,
        stale_addresses=len(mobility.stale(after[1])),
        local_by_tenant=dict(local),
    )


def recount(counts: Counts, config: Config, delta: DirectoryDelta, sas: int) -> Counts:
    """`counts` after a delta of other hosts' addresses alone: O(delta), where count() is
    O(view) (each remote address is one VRF route)."""
    ids = {t.id for t in config.tenants.values()}
    remote = Counter(counts.remote_by_tenant)
    remote.update(r.tenant_id for r in delta.remote_added if r.tenant_id in ids)
    remote.subtract(r.tenant_id for r in delta.remote_removed if r.tenant_id in ids)
    step = remote.total() - counts.remote_addresses
    return dataclasses.replace(
        counts,
        remote_addresses=remote.total(),
        routes=counts.routes + step,
        sas=sas,
        remote_by_tenant={t: n for t, n in remote.items() if n},
    )


@dataclass(frozen=True)
class ApplyRecord:
    time: float  # wall clock, seconds since the epoch, at the start
    seconds: float
    ok: bool
    changes: int
    errors: tuple[str, ...]
    trigger: str  # what made it run: start, directory, reload, resync, retry


@dataclass(frozen=True)
class Drift:
    """The kernel against the last applied view: what an apply would change (empty: in sync)."""

    time: float  # wall clock of the check
    objects: tuple[str, ...]


@dataclass(frozen=True)
class Withdrawn:
    """A remote address the applied view had and lost: who announced it, when it went."""

    host: str
    host_address: str
    time: float  # wall clock of the apply that no longer had it


@dataclass(frozen=True)
class SourceInfo:
    name: str
    in_sync: bool
    detail: str
    peers: tuple[PeerStatus, ...]
    rejected: tuple[RejectedRoute, ...]


@dataclass(frozen=True)
class Snapshot:
    state: str  # starting, ready, degraded, stopping
    pid: int
    started: float  # wall clock
    config: Config
    view: DirectoryView  # the view last applied
    source: SourceInfo
    last_apply: ApplyRecord | None
    last_ok: float | None  # wall clock of the last apply without errors
    counts: Counts
    sas: tuple[SaInfo, ...]
    reconciles: int
    reconcile_errors: int
    config_errors: int
    rejected_total: dict[str, int]  # rejections seen, by reason (counted when first seen)
    duplicates: tuple[Duplicate, ...] = ()  # local addresses another host holds too
    drift: Drift | None = None  # None before the first apply
    # (tenant id, prefix) -> the last withdrawal, for `lookup` (bounded: loop.WITHDRAWN_MAX)
    withdrawn: dict[tuple[int, IPNetwork], Withdrawn] = field(default_factory=dict)
