"""What the calculation starts from: this host's config plus the directory's view of other hosts.

Until the BGP directory exists, the view comes from the config's `peers` and `remote_endpoints`
(static entries); later the directory client produces the same types.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from routed_nv.config.model import Config, tenant_outer_address

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, order=True)
class PeerHost:
    name: str
    id: int  # the peer's SPI sender slot
    underlay_prefix: ipaddress.IPv6Network

    @property
    def address(self) -> ipaddress.IPv6Address:
        return self.underlay_prefix[1]

    def tenant_address(self, tenant_id: int) -> ipaddress.IPv6Address:
        return tenant_outer_address(self.underlay_prefix, tenant_id)


@dataclass(frozen=True, order=True)
class RemoteRoute:
    """One remote workload address (a /32 or /128) of a tenant, and the host that holds it."""

    tenant_id: int
    prefix: IPNetwork
    peer: PeerHost
    sequence: int = 0  # the mobility sequence it was announced with (0: never moved)


@dataclass(frozen=True, order=True)
class Claim:
    """This host announcing one of its local addresses (calc/mobility.py): active with a
    mobility sequence, or stale (another host announced it with a newer sequence, `sequence`)."""

    tenant_id: int
    prefix: IPNetwork
    sequence: int = 0
    stale: bool = False


@dataclass(frozen=True)
class DirectoryView:
    """Other hosts' addresses (`remote_routes`), and for mobility (calc/mobility.py): other
    hosts' announcements of addresses this host holds (`contested`), this host's announcements
    as the kernel has them (`published`), and what this host should announce (`claims`, set by
    mobility.resolve; empty means every local address is active with sequence 0)."""

    remote_routes: frozenset[RemoteRoute]
    contested: frozenset[RemoteRoute] = frozenset()
    published: frozenset[Claim] = frozenset()
    claims: frozenset[Claim] = frozenset()

    def peers_of(self, tenant_id: int) -> frozenset[PeerHost]:
        """The peers that share a tenant with this host: they need SAs for it."""
        return frozenset(r.peer for r in self.remote_routes if r.tenant_id == tenant_id)


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
