"""The directory's view of other hosts: what the calculation starts from, with this host's config.

A directory source produces it: the static one from the config's `peers` and `remote_endpoints`
(config/views.py), the BGP one from the mirror tables (directory/learn.py).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Set
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Tenant outer addresses are <prefix>::1:<tenant id in hex> (tenant 100 -> ::1:64). ARCHITECTURE.md
# wrote <prefix>::<T>, but then tenant 1 would be the host address ::1 and high tenant ids would
# collide with infrastructure addresses (uplink, ToR) in ::2..::ffff; one fixed group avoids both.
TENANT_ADDRESS_OFFSET = 0x1_0000


# cached: every remote route via a peer host shares one next-hop object (not ~100 B each)
@functools.lru_cache(maxsize=4096)
def tenant_outer_address(prefix: ipaddress.IPv6Network, tenant_id: int) -> ipaddress.IPv6Address:
    return prefix[TENANT_ADDRESS_OFFSET + tenant_id]


# slots: a host keeps one RemoteRoute per remote address (100,000 and more), and no __dict__ each
@dataclass(frozen=True, order=True, slots=True)
class PeerHost:
    name: str
    id: int  # the peer's SPI sender slot
    underlay_prefix: ipaddress.IPv6Network

    @property
    def address(self) -> ipaddress.IPv6Address:
        return self.underlay_prefix[1]

    def tenant_address(self, tenant_id: int) -> ipaddress.IPv6Address:
        return tenant_outer_address(self.underlay_prefix, tenant_id)


@dataclass(frozen=True, order=True, slots=True)
class RemoteRoute:
    """One remote workload address (a /32 or /128) of a tenant, and the host that holds it."""

    tenant_id: int
    prefix: IPNetwork
    peer: PeerHost
    sequence: int = 0  # the mobility sequence it was announced with (0: never moved)


@dataclass(frozen=True, order=True, slots=True)
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
    mobility.resolve; empty means every local address is active with sequence 0).
    `remote_routes` is any immutable set: the BGP source's is a model.route_set.SharedSet, which
    its next view shares but for the buckets an event changed."""

    remote_routes: Set[RemoteRoute]
    contested: frozenset[RemoteRoute] = frozenset()
    published: frozenset[Claim] = frozenset()
    claims: frozenset[Claim] = frozenset()

    def peers_of(self, tenant_id: int) -> frozenset[PeerHost]:
        """The peers that share a tenant with this host: they need SAs for it."""
        return frozenset(r.peer for r in self.remote_routes if r.tenant_id == tenant_id)
