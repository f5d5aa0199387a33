"""Answers to the control socket's questions, as JSON-ready data (pure).

The same functions answer from a running agent's Snapshot and, for `endpoint list` and `lookup`
without an agent, from the configuration alone; the commands say which one answered.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from routed_nv import __version__
from routed_nv.agent.snapshot import Drift, SaInfo, Snapshot
from routed_nv.calc import mobility
from routed_nv.calc.duplicates import SELF
from routed_nv.config.loader import shorten
from routed_nv.config.model import Config
from routed_nv.errors import RoutedNvError
from routed_nv.model import markers
from routed_nv.model.directory import DirectoryView, IPNetwork, RemoteRoute

Json = dict[str, Any]


class QueryError(RoutedNvError, ValueError):
    """The question itself is wrong (unknown tenant, not an address): a usage error."""


def rfc3339(stamp: float | None) -> str | None:
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="milliseconds")


def status(snap: Snapshot, now: float | None = None) -> Json:
    now = time.time() if now is None else now
    c, src, last = snap.counts, snap.source, snap.last_apply
    state, reason = snap.state, {}
    if state == "ready" and not src.in_sync:
        # the datapath is as applied, but what it was applied from is not current (BIRD
        # unreachable, sessions down): remote hosts may already have lost this host's routes
        state, reason = "degraded", {"reason": f"directory {src.name} not in sync: {src.detail}"}
    return {
        "agent": reason
        | {
            "state": state,
            "host": snap.config.host.name,
            "pid": snap.pid,
            "version": __version__,
            "started": rfc3339(snap.started),
            "uptime_s": round(now - snap.started, 1),
        },
        "directory": {
            "source": src.name,
            "in_sync": src.in_sync,
            "detail": src.detail,
            "peers_up": sum(p.up for p in src.peers),
            "peers": [
                # an address the source does not know (an upstream's) is left out, not ""
                {"name": p.name}
                | ({"address": p.address} if p.address else {})
                | {"state": p.state, "since": p.since, "info": p.info}
                for p in src.peers
            ],
            "rejected": [{"reason": str(r.reason), "route": str(r)} for r in src.rejected],
            "rejected_total": snap.rejected_total,
            "stale": stale_addresses(snap.view),
            "duplicates": duplicates(snap),
        },
        "datapath": {
            "tenants": c.tenants,
            "local_endpoints": c.local_endpoints,
            "remote_addresses": c.remote_addresses,
            "routes": c.routes,
            "sas": c.sas,
        },
        "kernel": kernel(snap.drift, now),
        "last_apply": None
        if last is None
        else {
            "time": rfc3339(last.time),
            "seconds": round(last.seconds, 3),
            "ok": last.ok,
            "changes": last.changes,
            "errors": list(last.errors),
            "trigger": last.trigger,
        },
        "last_ok": rfc3339(snap.last_ok),
        "reconciles": snap.reconciles,
        "reconcile_errors": snap.reconcile_errors,
        "config_errors": snap.config_errors,
    }


def kernel(drift: Drift | None, now: float) -> Json:
    """The kernel against the agent's view: in sync, or the objects an apply would change; when
    that was found and how long ago (a recent check is reused, not repeated)."""
    if drift is None:
        return {"in_sync": None, "differ": None, "objects": [], "checked": None, "age_s": None}
    return {
        "in_sync": not drift.objects,
        "differ": len(drift.objects),
        "objects": list(drift.objects),
        "checked": rfc3339(drift.time),
        "age_s": round(max(0.0, now - drift.time), 1),
    }


# a routing change as the routing driver names it: "+ route 10.0.0.2/32 via ... table 268435556"
_ROUTE_CHANGE = re.compile(r"^([+~-]) route (?:unreachable )?(\S+) .*\btable (\d+) ")
_ROUTE_STATE = {"+": "missing", "~": "different", "-": "unexpected"}


def kernel_route(drift: Drift | None, tenant_id: int, prefix: IPNetwork) -> str:
    """The kernel's route for `prefix` in the tenant's VRF: ok, missing, different (from the
    one wanted), or unknown (not checked yet)."""
    if drift is None:
        return "unknown"
    table = str(markers.vrf_table(tenant_id))
    for line in drift.objects:
        m = _ROUTE_CHANGE.match(line)
        if m and m[3] == table and m[2] == str(prefix):
            return _ROUTE_STATE[m[1]]
    return "ok"


def withdrawn(snap: Snapshot, tenant: str, address: str) -> str:
    """Why a lookup found nothing: who withdrew the address and when, if this agent saw it go
    ("" when it never had it, or forgot it)."""
    _, tid = _tenant(snap.config, tenant)
    went = snap.withdrawn.get((tid, ipaddress.ip_network(_address(address))))
    if went is None:
        return ""
    return f"last announced by {went.host} ({went.host_address}), withdrawn at {rfc3339(went.time)}"


def _tenant(config: Config, tenant: str) -> tuple[str, int]:
    """A tenant given by name or by id."""
    for name, t in config.tenants.items():
        if tenant in (name, str(t.id)):
            return name, t.id
    raise QueryError(f"no tenant {shorten(repr(tenant))} in this host's configuration")


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise QueryError(f"{shorten(repr(text))} is not an IPv4 or IPv6 address") from None


def lookup(
    config: Config,
    view: DirectoryView,
    sas: Iterable[SaInfo] | None,
    tenant: str,
    address: str,
    drift: Drift | None = None,
) -> Json | None:
    """Who holds `address` in `tenant`: this host (which endpoint) or a peer, with the tenant
    outer addresses and, when the SAs are known (sas is not None), the SPIs both ways; from a
    running agent (drift given) also whether the kernel's route matches (`kernel_route`)."""
    name, tid = _tenant(config, tenant)
    addr = _address(address)
    mine = config.host.tenant_address(tid)
    prefix = ipaddress.ip_network(addr)
    answer: Json = {"tenant": name, "tenant_id": tid, "address": str(addr)}
    if sas is not None:
        answer["kernel_route"] = kernel_route(drift, tid, prefix)
        answer["kernel_checked"] = rfc3339(drift.time) if drift else None
    for ep_name, ep in sorted(config.endpoints.items()):
        if ep.tenant == name and addr in ep.addresses:
            return answer | {
                "location": "local",
                "endpoint": ep_name,
                "host": config.host.name,
                "host_address": str(config.host.address),
                "tenant_address": str(mine),
            }
    route = next((r for r in view.remote_routes if r.tenant_id == tid and r.prefix == prefix), None)
    if route is None:
        return None
    theirs = route.peer.tenant_address(tid)
    spis: Json | None = None
    if sas is not None:
        found = list(sas)
        spis = {
            "out": [_hex(s.spi) for s in found if (s.src, s.dst) == (mine, theirs)],
            "in": [_hex(s.spi) for s in found if (s.src, s.dst) == (theirs, mine)],
        }
    return answer | {
        "location": "remote",
        "host": route.peer.name,
        "host_address": str(route.peer.address),
        "tenant_address": str(theirs),
        "spis": spis,
    }


def _hex(spi: int) -> str:
    return f"0x{spi:08x}"


def endpoints(config: Config, view: DirectoryView) -> list[Json]:
    """Local endpoints by name, then one row per remote address (the directory carries
    addresses, not endpoint names)."""
    rows: list[Json] = [
        {
            "name": name,
            "tenant": ep.tenant,
            "addresses": [str(a) for a in ep.addresses],
            "location": "local",
            "host": config.host.name,
            "interface": ep.interface,
            "netns": ep.netns,
        }
        for name, ep in sorted(config.endpoints.items())
    ]
    names = _tenant_names(config)
    rows += [
        {
            "name": None,
            "tenant": names.get(r.tenant_id, str(r.tenant_id)),
            "addresses": [str(r.prefix.network_address)],
            "location": "remote",
            "host": r.peer.name,
            "interface": None,
            "netns": None,
        }
        for r in _sorted(view.remote_routes)
    ]
    return rows


def directory(snap: Snapshot) -> Json:
    names = _tenant_names(snap.config)
    return {
        "source": snap.source.name,
        "in_sync": snap.source.in_sync,
        "routes": [
            {
                "tenant": names.get(r.tenant_id, str(r.tenant_id)),
                "tenant_id": r.tenant_id,
                "prefix": str(r.prefix),
                "host": r.peer.name,
                "host_address": str(r.peer.address),
                "next_hop": str(r.peer.tenant_address(r.tenant_id)),
            }
            for r in _sorted(snap.view.remote_routes)
        ],
        "rejected": [{"reason": str(r.reason), "route": str(r)} for r in snap.source.rejected],
    }


def stale_addresses(view: DirectoryView) -> list[Json]:
    """Local addresses another host announced with a newer mobility sequence: this host no
    longer announces them and routes them to that host (calc/mobility.py)."""
    winners = {(r.tenant_id, r.prefix): r for r in view.remote_routes}
    rows = []
    for c in sorted(mobility.stale(view), key=lambda c: (c.tenant_id, _address_key(c.prefix))):
        winner = winners.get((c.tenant_id, c.prefix))
        rows.append(
            {
                "tenant_id": c.tenant_id,
                "prefix": str(c.prefix),
                "sequence": c.sequence,
                "host_address": str(winner.peer.address) if winner else None,
            }
        )
    return rows


def duplicates(snap: Snapshot) -> list[Json]:
    """Local addresses another host announces too and that came back here at least once, or
    that are frozen (calc/duplicates.py): both hosts named."""
    names = _tenant_names(snap.config)
    return [
        {
            "tenant": names.get(d.tenant_id, str(d.tenant_id)),
            "tenant_id": d.tenant_id,
            "prefix": str(d.prefix),
            "hosts": [snap.config.host.name, d.other],
            "other_address": d.other_address,
            "moves": d.moves,
            "frozen": d.frozen,
            "held_by": snap.config.host.name if d.holder == SELF else d.holder,
        }
        for d in snap.duplicates
    ]


def duplicate(snap: Snapshot, tenant: str, address: str) -> tuple[int, IPNetwork] | None:
    """(tenant id, /32 or /128) of a reported duplicate, for clearing it; None if it is none."""
    _, tid = _tenant(snap.config, tenant)
    prefix = ipaddress.ip_network(_address(address))
    found = any((d.tenant_id, d.prefix) == (tid, prefix) for d in snap.duplicates)
    return (tid, prefix) if found else None


def _address_key(prefix: IPNetwork) -> tuple[int, int]:
    return (prefix.version, int(prefix.network_address))


def _tenant_names(config: Config) -> dict[int, str]:
    return {t.id: name for name, t in config.tenants.items()}


def _sorted(routes: Iterable[RemoteRoute]) -> list[RemoteRoute]:
    # addresses of both families do not compare with each other; their integers do
    return sorted(
        routes,
        key=lambda r: (r.tenant_id, r.prefix.version, int(r.prefix.network_address), r.peer.name),
    )
