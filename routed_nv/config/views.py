"""What the config says in the model's terms: the directory view it writes down (the static
directory source) and the addresses this host's endpoints hold."""

from __future__ import annotations

import ipaddress

from routed_nv.config.model import Config
from routed_nv.model.directory import DirectoryView, IPNetwork, PeerHost, RemoteRoute


def static_view(config: Config) -> DirectoryView:
    """The directory view written in the config (peers + remote_endpoints)."""
    peers = {name: PeerHost(name, p.id, p.underlay_prefix) for name, p in config.peers.items()}
    routes = frozenset(
        RemoteRoute(
            tenant_id=config.tenants[ep.tenant].id,
            prefix=ipaddress.ip_network(addr),
            peer=peers[ep.host],
        )
        for ep in config.remote_endpoints.values()
        for addr in ep.addresses
    )
    return DirectoryView(routes)


def local_addresses(config: Config) -> set[tuple[int, IPNetwork]]:
    """(tenant id, /32 or /128) of every address an endpoint of this host holds."""
    ids = {name: t.id for name, t in config.tenants.items()}
    return {
        (ids[ep.tenant], ipaddress.ip_network(a))
        for ep in config.endpoints.values()
        if ep.tenant in ids
        for a in ep.addresses
    }
