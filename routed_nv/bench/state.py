"""Kernel state per host, by formula, for each variant (checked against the lab in the bench).

Counted objects: routes the variant installs for tenant traffic, ESP SAs, XFRM policies, and
entries in the VXLAN devices' forwarding databases (flood list + remote MACs; the bridge's own
FDB adds one entry per MAC of the segment on top). Every tenant has `endpoints` workloads on the
host and `remote` on other hosts; `peers` hosts share it (flood list, routed_nv peers).
"""

from __future__ import annotations

from dataclasses import dataclass

from routed_nv.bench.results import HostState, Variant

# routed_nv per tenant: IPv4 + IPv6 (proto 4, 41) x (out, in) x (ESP required, block backstop).
ROUTED_POLICIES_PER_TENANT = 8
# routed_nv per tenant: the unreachable defaults (IPv4, IPv6) that stop fall-through.
ROUTED_INFRA_ROUTES_PER_TENANT = 2
# A local endpoint's /32 or /128 is in the VRF table and in the table BIRD publishes from.
ROUTED_TABLES_PER_LOCAL_ADDRESS = 2
# Host-to-host ESP on the VXLAN port: one out and one in policy, whatever the peers.
VXLAN_IPSEC_POLICIES = 2


@dataclass(frozen=True)
class HostLoad:
    tenants: int  # tenants with workloads on this host
    endpoints: int  # local workloads per tenant
    remote: int  # workloads per tenant on other hosts
    peers: int  # other hosts per tenant (they share the tenant)
    peer_hosts: int  # distinct other hosts sharing at least one tenant
    addresses: int = 2  # addresses per workload (IPv4 + IPv6)


def dense(hosts: int, tenants: int, endpoints: int, span: int | None = None) -> HostLoad:
    """Every tenant on `span` hosts (default: all), `endpoints` workloads per tenant per host."""
    span = hosts if span is None else min(span, hosts)
    peers = span - 1
    # A host meets at most every other host; with narrow tenants, at most tenants x peers of them.
    peer_hosts = min(hosts - 1, tenants * peers)
    return HostLoad(tenants, endpoints, peers * endpoints, peers, peer_hosts)


def per_host(variant: Variant, load: HostLoad) -> HostState:
    t, e, a = load.tenants, load.endpoints, load.addresses
    fdb = t * (load.peers + load.remote)  # all-zero flood entries + learned remote MACs
    match variant:
        case Variant.UNDERLAY:
            # One /128 per local workload address, and an unreachable route for the host's own
            # prefix (without it, a packet to an unused address loops between host and router).
            return HostState(routes=t * e * a + 1, sas=0, policies=0, fdb=0)
        case Variant.ROUTED:
            routes = t * (
                ROUTED_INFRA_ROUTES_PER_TENANT
                + ROUTED_TABLES_PER_LOCAL_ADDRESS * e * a
                + load.remote * a
            )
            return HostState(
                routes=routes,
                sas=2 * t * load.peers,  # one out, one in per (tenant, peer)
                policies=ROUTED_POLICIES_PER_TENANT * t,
                fdb=0,
            )
        case Variant.VXLAN:
            return HostState(routes=0, sas=0, policies=0, fdb=fdb)
        case Variant.VXLAN_IPSEC:
            return HostState(
                routes=0, sas=2 * load.peer_hosts, policies=VXLAN_IPSEC_POLICIES, fdb=fdb
            )
    raise ValueError(variant)
