"""A DirectoryView as JSON and back: how `routed-nv apply` gets the view the agent applied.

On a host whose directory is BGP, only the agent knows the remote routes (and the mobility
claims); `apply` asks for them over the control socket instead of planning from the static
entries, which would delete everything learned.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from routed_nv.model.directory import Claim, DirectoryView, PeerHost, RemoteRoute

Json = dict[str, Any]


def encode(view: DirectoryView) -> Json:
    # sorted by repr: IPv4 and IPv6 prefixes do not compare with each other
    return {
        "remote_routes": [_route(r) for r in sorted(view.remote_routes, key=repr)],
        "contested": [_route(r) for r in sorted(view.contested, key=repr)],
        "published": [_claim(c) for c in sorted(view.published, key=repr)],
        "claims": [_claim(c) for c in sorted(view.claims, key=repr)],
    }


def decode(data: Json) -> DirectoryView:
    """ValueError (or KeyError, TypeError) when data is not what encode() makes."""
    return DirectoryView(
        remote_routes=frozenset(_to_route(r) for r in data["remote_routes"]),
        contested=frozenset(_to_route(r) for r in data["contested"]),
        published=frozenset(_to_claim(c) for c in data["published"]),
        claims=frozenset(_to_claim(c) for c in data["claims"]),
    )


def _route(r: RemoteRoute) -> Json:
    peer = {"name": r.peer.name, "id": r.peer.id, "underlay_prefix": str(r.peer.underlay_prefix)}
    return {"tenant_id": r.tenant_id, "prefix": str(r.prefix), "peer": peer, "sequence": r.sequence}


def _claim(c: Claim) -> Json:
    return {
        "tenant_id": c.tenant_id,
        "prefix": str(c.prefix),
        "sequence": c.sequence,
        "stale": c.stale,
    }


def _to_route(r: Json) -> RemoteRoute:
    p = r["peer"]
    peer = PeerHost(str(p["name"]), int(p["id"]), ipaddress.IPv6Network(p["underlay_prefix"]))
    return RemoteRoute(
        int(r["tenant_id"]), ipaddress.ip_network(r["prefix"]), peer, int(r["sequence"])
    )


def _to_claim(c: Json) -> Claim:
    return Claim(
        int(c["tenant_id"]), ipaddress.ip_network(c["prefix"]), int(c["sequence"]), bool(c["stale"])
    )
