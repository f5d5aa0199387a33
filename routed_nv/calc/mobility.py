"""Which host announces a tenant address that more than one host holds (pure; docs/directory.md).

EVPN MAC Mobility (RFC 7432 §15) with the directory as the only memory: every input is in the
kernel (this host's publish table and the mirror tables, which carry other hosts' sequences), so
a restarted agent decides exactly as before. For each address this host holds:
- not announced yet: announce it with one more than the highest sequence another host announces
  it with (0 if none does): the newest location wins;
- announced with p: keep it, unless another host announces it with a higher sequence, or the same
  sequence from a lower host address (RFC 7432's tie-break): then this host is *stale*;
- stale: stop announcing it (the stale marker in the publish table keeps the winning sequence),
  route it to the winner like any remote address, keep the workload as configured; when no other
  host announces it any more, announce it again with one more than the sequence it lost to.
A host whose endpoint is still attached does not stay stale for good: calc/duplicates.py re-asserts
it, and freezes an address that keeps changing location (a duplicate).
Each rule is a fixed point of itself (what it writes is what it reads back next time), so the
agent's apply, the kernel event and the next apply settle after one round. With several
claimants at once the losers withdraw one round after the other; each host only needs the best
other announcement, which BIRD's mirror table is (highest sequence first).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from routed_nv.calc.duplicates import Guard
from routed_nv.config.model import Config
from routed_nv.config.views import local_addresses
from routed_nv.model.directory import Claim, DirectoryView, IPNetwork, RemoteRoute
from routed_nv.model.mobility import MAX_SEQUENCE
from routed_nv.model.routing import IPAddress

Where = tuple[int, IPNetwork]


def rank(route: RemoteRoute) -> tuple[int, int]:
    """Higher is better: the highest sequence, then the lowest host address."""
    return (route.sequence, -int(route.peer.address))


def beats(route: RemoteRoute, sequence: int, own: IPAddress) -> bool:
    """Whether another host's announcement wins over this host's with `sequence`."""
    return rank(route) > (sequence, -int(own))


def decide(current: Claim | None, best: RemoteRoute | None, own: IPAddress, where: Where) -> Claim:
    """This host's claim on one address, from its announcement in the kernel (None: none yet)
    and the best announcement of another host (None: no other host announces it)."""
    tid, prefix = where
    if current is None:
        sequence = 0 if best is None else min(best.sequence + 1, MAX_SEQUENCE)
        return Claim(tid, prefix, sequence)
    if current.stale:
        if best is None:
            return Claim(tid, prefix, min(current.sequence + 1, MAX_SEQUENCE))
        return Claim(tid, prefix, max(current.sequence, best.sequence), stale=True)
    if best is not None and beats(best, current.sequence, own):
        return Claim(tid, prefix, best.sequence, stale=True)
    return Claim(tid, prefix, current.sequence)


def resolve(
    config: Config, view: DirectoryView, guard: Guard | None = None, now: float = 0.0
) -> DirectoryView:
    """The view with `claims` decided for every local address, and the winner's route among the
    remote routes for each stale one (so that routing, SAs and status treat it as remote).
    With a guard (calc/duplicates.py, the agent's), a still-attached address that lost is
    re-asserted and a flapping one frozen; `now` is its clock."""
    local = local_addresses(config)
    if guard is not None:
        guard.keep_only(local)
    own = config.host.address
    published = {(c.tenant_id, c.prefix): c for c in view.published}
    # A remote route for a local address (kept from before the address became local while the
    # source was out of sync) is one more announcement by another host.
    others = _by_address(r for r in (*view.contested, *view.remote_routes) if _where(r) in local)
    claims, winners = set(), set()
    for where in local:
        candidates = others.get(where, [])
        best = max(candidates, key=rank) if candidates else None
        current = published.get(where)
        claim = decide(current, best, own, where)
        if guard is not None:
            claim = guard.judge(where, current, claim, best, now)
        claims.add(claim)
        if claim.stale and best is not None:
            winners.add(best)
    remote = view.remote_routes
    if winners or any(_where(r) in local for r in remote):
        remote = frozenset({r for r in remote if _where(r) not in local} | winners)
    # else the source's set as it is: a copy would be a second 100,000 routes the agent keeps
    return dataclasses.replace(view, remote_routes=remote, claims=frozenset(claims))


def stale(view: DirectoryView) -> frozenset[Claim]:
    return frozenset(c for c in view.claims if c.stale)


def _where(route: RemoteRoute) -> Where:
    return (route.tenant_id, route.prefix)


def _by_address(routes: Iterable[RemoteRoute]) -> dict[Where, list[RemoteRoute]]:
    found: dict[Where, list[RemoteRoute]] = {}
    for r in routes:
        found.setdefault(_where(r), []).append(r)
    return found
