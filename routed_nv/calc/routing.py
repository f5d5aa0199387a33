"""Desired routing state of this host: (config, directory view) -> kernel objects (pure).

Decisions:
- Every tenant in the config is local: it gets its VRF, tunnel and outer address even before a
  workload arrives, so the directory and IKE can come up first and a workload's first packet
  finds everything in place. Remote routes of tenants that are not configured are ignored.
- Workload interfaces get the tenant MTU on both ends; the tunnel gets the underlay MTU minus the
  overhead of the tenant's protection mode (74 for AES-GCM).
- Proxy-style workloads (on-link /24 and /64) need one proxy-NDP entry per other IPv6 address of
  the tenant (local and remote): O(proxy endpoints x tenant addresses) kernel entries, fine for
  hundreds of addresses per tenant, not for 100k. IPv4 proxy_arp needs no entries: the kernel
  answers for every destination its VRF routes via another interface.
- A local address is announced by its publish-table route, whose metric carries its mobility
  sequence (view.claims, calc/mobility.py). A stale one (another host announced it later) has
  only the stale marker there and no VRF route to its workload: the winner's remote route.
- The local table is looked up after the l3mdev rule (pref 1000), not before it (the kernel's
  pref 0): a packet in a tenant VRF then never finds the host's own addresses, only its VRF's
  (docs/isolation.md). The kernel's VRF documentation recommends this order.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Iterator
from typing import Any

from routed_nv.config.model import Config, Endpoint, EndpointStyle
from routed_nv.errors import RoutedNvError
from routed_nv.model import markers
from routed_nv.model.directory import Claim, DirectoryView, IPNetwork, RemoteRoute
from routed_nv.model.endpoint import endpoint_link_name
from routed_nv.model.mobility import metric_for
from routed_nv.model.routing import (
    LOCAL_TABLE,
    MAIN_TABLE,
    RT_SCOPE_LINK,
    Address,
    DesiredRouting,
    IPAddress,
    Link,
    LinkKind,
    NeighProxy,
    PolicyRule,
    Port,
    Route,
    Sysctl,
    Tunnel,
    VethPeer,
)

# No tenant route may fall through to the main table: the last word in every VRF table.
UNREACHABLE_METRIC = 4278198272
# Just before the main table's 32766: after the l3mdev rule (1000) and any operator's rules.
LOCAL_RULE_PRIORITY = 32765
WORKLOAD_IFNAME = "eth0"  # the workload end of a veth pair routed_nv creates


class RoutingConflict(RoutedNvError, ValueError):
    """The config asks for something the routing datapath cannot build."""


def host_ifname(name: str, endpoint: Endpoint) -> str:
    if endpoint.netns is not None:
        if endpoint.interface is not None:
            raise RoutingConflict(
                f"endpoint {name}: set either interface (an existing tap/veth) or netns "
                "(routed_nv makes the veth pair), not both"
            )
        return endpoint_link_name(name)
    if endpoint.interface is None:
        raise RoutingConflict(f"endpoint {name}: needs an interface or a netns")
    return endpoint.interface


def desired_routing(config: Config, view: DirectoryView) -> DesiredRouting:
    host = config.host
    tenant_ids = {name: t.id for name, t in config.tenants.items()}
    ifnames = {name: host_ifname(name, ep) for name, ep in config.endpoints.items()}
    _check_unique_ifnames(ifnames)

    sysctls = {
        Sysctl("net/ipv6/conf/all/forwarding", "1"),
        Sysctl("net/ipv4/ip_forward", "1"),
        Sysctl(f"net/ipv6/conf/{markers.HOST_DEVICE}/accept_dad", "0"),
    }
    links = {Link(markers.HOST_DEVICE, LinkKind.DUMMY)}
    ports: set[Port] = set()
    addresses = {Address(markers.HOST_DEVICE, _host_route(host.address))}
    routes: set[Route] = set()
    proxies: set[NeighProxy] = set()
    claims = {(c.tenant_id, c.prefix): c for c in view.claims}

    for name, tid in tenant_ids.items():
        vrf = markers.vrf_name(tid)
        outer = host.tenant_address(tid)
        addresses.add(Address(markers.HOST_DEVICE, _host_route(outer)))
        links.add(Link(vrf, LinkKind.VRF, vrf_table=markers.vrf_table(tid)))
        links.add(
            Link(
                markers.tunnel_name(tid),
                LinkKind.IP6TNL,
                mtu=config.tunnel_mtu(name),
                master=vrf,
                tunnel=Tunnel(local=outer),
            )
        )
        routes.update(_unreachable_defaults(markers.vrf_table(tid)))

    kinds: dict[type, set[Any]] = {
        Sysctl: sysctls, Link: links, Port: ports, Address: addresses, Route: routes
    }  # fmt: skip
    for name, ep in config.endpoints.items():
        for obj in _endpoint_objects(config, ep, tenant_ids[ep.tenant], ifnames[name], claims):
            kinds[type(obj)].add(obj)

    configured = set(tenant_ids.values())
    routes.update(remote_route(r) for r in view.remote_routes if r.tenant_id in configured)

    for name, ep in config.endpoints.items():
        if ep.style is EndpointStyle.PROXY:
            tid = tenant_ids[ep.tenant]
            others = _tenant_v6_addresses(config, view, ep.tenant, tid) - set(ep.addresses)
            proxies.update(NeighProxy(ifnames[name], a) for a in others)

    return DesiredRouting(
        sysctls=frozenset(sysctls),
        links=frozenset(links),
        ports=frozenset(ports),
        addresses=frozenset(addresses),
        routes=frozenset(routes),
        neigh_proxies=frozenset(proxies),
        rules=frozenset(
            PolicyRule(v, LOCAL_RULE_PRIORITY, LOCAL_TABLE, markers.RTPROT_INFRA) for v in (4, 6)
        ),
    )


def _endpoint_objects(
    config: Config, ep: Endpoint, tid: int, ifname: str, claims: dict[tuple[int, IPNetwork], Claim]
) -> Iterator[Sysctl | Link | Port | Address | Route]:
    """One endpoint's own objects: its interface (and workload namespace), their addresses and
    sysctls, its VRF, publish and workload routes (proxy entries aside)."""
    mtu = config.tenant_mtu(ep.tenant)
    vrf = markers.vrf_name(tid)
    if ep.netns is None:
        # A tap's MTU is the hypervisor's: a guest sending more than the tenant MTU then gets
        # packet-too-big from the tunnel, where a smaller tap would drop it silently.
        yield Port(ifname, None, master=vrf)
    else:
        peer = VethPeer(ep.netns, WORKLOAD_IFNAME)
        yield Link(ifname, LinkKind.VETH, mtu=mtu, master=vrf, veth_peer=peer)
        yield Port(WORKLOAD_IFNAME, mtu, netns=ep.netns)
        yield from _workload_addresses(config, ep)
        yield from _workload_routes(ep)
    yield Address(ifname, ipaddress.ip_interface(f"{markers.GATEWAY_V4}/32"))
    yield Address(ifname, ipaddress.ip_interface(f"{markers.GATEWAY_V6}/64"))
    yield from _endpoint_sysctls(ifname, ep.style)
    for addr in ep.addresses:
        dst = _host_route(addr).network
        scope = RT_SCOPE_LINK if dst.version == 4 else 0
        claim = claims.get((tid, dst), Claim(tid, dst))
        # the publish route's metric carries the mobility sequence to BIRD
        metric = metric_for(claim.sequence, dst.version)
        publish = markers.publish_table(tid)
        on_link = {"dev": ifname, "scope": scope}
        if claim.stale:  # the winner's route (a remote route) takes the VRF table's place
            yield Route(dst, publish, markers.RTPROT_STALE, metric=metric, **on_link)
            continue
        yield Route(dst, markers.vrf_table(tid), markers.RTPROT_ENDPOINT, **on_link)
        yield Route(dst, publish, markers.RTPROT_ENDPOINT, metric=metric, **on_link)


def endpoint_objects(config: Config, view: DirectoryView, names: Iterable[str]) -> set[Any]:
    """What desired_routing holds for these endpoints of `config` (absent ones have none):
    their own objects, the proxy entries on a proxy-style one, and the other proxy-style
    endpoints' entries for their IPv6 addresses."""
    tenant_ids = {name: t.id for name, t in config.tenants.items()}
    claims = {(c.tenant_id, c.prefix): c for c in view.claims}
    found: set[Any] = set()
    for name in names:
        ep = config.endpoints.get(name)
        if ep is None:
            continue
        tid, ifname = tenant_ids[ep.tenant], host_ifname(name, ep)
        found.update(_endpoint_objects(config, ep, tid, ifname, claims))
        if ep.style is EndpointStyle.PROXY:
            others = _tenant_v6_addresses(config, view, ep.tenant, tid) - set(ep.addresses)
            found.update(NeighProxy(ifname, a) for a in others)
        for other_name, other in config.endpoints.items():
            if other.style is EndpointStyle.PROXY and other.tenant == ep.tenant:
                other_if = host_ifname(other_name, other)
                found.update(NeighProxy(other_if, a) for a in ep.addresses
                             if a.version == 6 and a not in other.addresses)  # fmt: skip
    return found


def endpoint_changes(
    before: tuple[Config, DirectoryView], after: tuple[Config, DirectoryView], names: set[str]
) -> tuple[set[Any], set[Any]]:
    """What desired_routing changes when only these endpoints (or their claims) change, the
    rest of the config and the remote routes staying: (objects to add or replace, objects to
    delete). A proxy entry for an address some other endpoint or remote host still has stays."""
    old, new = endpoint_objects(*before, names), endpoint_objects(*after, names)
    gone = old - new
    proxies = [o for o in gone if isinstance(o, NeighProxy)]
    return new - old, gone - _still_wanted(*after, proxies)


def _still_wanted(config: Config, view: DirectoryView, proxies: list[NeighProxy]) -> set[Any]:
    """The proxy entries desired_routing has: on a proxy-style endpoint, for another IPv6
    address of its tenant (local or remote)."""
    tenant_ids = {name: t.id for name, t in config.tenants.items()}
    owners = {host_ifname(n, ep): ep for n, ep in config.endpoints.items()}
    addresses: dict[str, set[IPAddress]] = {}
    found: set[Any] = set()
    for p in proxies:
        ep = owners.get(p.ifname)
        if ep is None or ep.style is not EndpointStyle.PROXY:
            continue
        if ep.tenant not in addresses:
            tid = tenant_ids[ep.tenant]
            addresses[ep.tenant] = _tenant_v6_addresses(config, view, ep.tenant, tid)
        if p.address in addresses[ep.tenant] and p.address not in ep.addresses:
            found.add(p)
    return found


def remote_route(r: RemoteRoute) -> Route:
    """The VRF route to another host's workload address: into the tenant's tunnel, via the
    peer's outer address for that tenant."""
    table, tunnel = _vrf_and_tunnel(r.tenant_id)
    return Route(
        r.prefix,
        table,
        markers.RTPROT_REMOTE,
        dev=tunnel,
        via=r.peer.tenant_address(r.tenant_id),
        onlink=True,
    )


@functools.lru_cache(maxsize=4096)
def _vrf_and_tunnel(tenant_id: int) -> tuple[int, str]:
    """One table number and tunnel name object per tenant, shared by its 100,000s of remote
    routes (~90 B a route otherwise, for as long as the routing driver caches them)."""
    return markers.vrf_table(tenant_id), markers.tunnel_name(tenant_id)


def remote_changes(
    config: Config, added: Iterable[RemoteRoute], removed: Iterable[RemoteRoute]
) -> tuple[set[Route | NeighProxy], set[Route | NeighProxy]]:
    """What desired_routing changes when remote routes come (`added`) and go (`removed`) and
    nothing else does: (objects to add or replace, objects to delete), in O(changed routes x
    proxy endpoints of their tenants). Proxy entries follow the remote IPv6 addresses as in
    desired_routing, except where a local endpoint holds the address too."""
    tenant_ids = {name: t.id for name, t in config.tenants.items()}
    proxy_eps: dict[int, list[tuple[str, set[IPAddress]]]] = {}
    local_v6: dict[int, set[IPAddress]] = {}
    for name, ep in config.endpoints.items():
        tid = tenant_ids[ep.tenant]
        local_v6.setdefault(tid, set()).update(a for a in ep.addresses if a.version == 6)
        if ep.style is EndpointStyle.PROXY:
            proxy_eps.setdefault(tid, []).append((host_ifname(name, ep), set(ep.addresses)))

    def objects(r: RemoteRoute, gone: bool) -> Iterator[Route | NeighProxy]:
        yield remote_route(r)
        addr = r.prefix.network_address
        if r.prefix.version == 6 and not (gone and addr in local_v6.get(r.tenant_id, ())):
            for ifname, own in proxy_eps.get(r.tenant_id, ()):
                if addr not in own:
                    yield NeighProxy(ifname, addr)

    configured = set(tenant_ids.values())
    upserts = {o for r in added if r.tenant_id in configured for o in objects(r, False)}
    deletes = {o for r in removed if r.tenant_id in configured for o in objects(r, True)}
    return upserts, deletes - upserts


def _host_route(addr: IPAddress) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    return ipaddress.ip_interface(f"{addr}/{addr.max_prefixlen}")


def _check_unique_ifnames(ifnames: dict[str, str]) -> None:
    seen: dict[str, str] = {}
    for name, ifname in sorted(ifnames.items()):
        if ifname in seen:
            raise RoutingConflict(
                f"endpoints {seen[ifname]} and {name} both use interface {ifname}"
            )
        seen[ifname] = name


def _unreachable_defaults(table: int) -> Iterator[Route]:
    for default in ("0.0.0.0/0", "::/0"):
        yield Route(
            ipaddress.ip_network(default),
            table,
            markers.RTPROT_INFRA,
            unreachable=True,
            metric=UNREACHABLE_METRIC,
        )


def _endpoint_sysctls(ifname: str, style: EndpointStyle) -> Iterator[Sysctl]:
    # strict reverse-path check: a workload may only send from addresses routed back to it
    # (the kernel applies max(all, this), so a loose "all" weakens it; netfilter is the guard)
    yield Sysctl(f"net/ipv4/conf/{ifname}/rp_filter", "1")
    yield Sysctl(f"net/ipv6/conf/{ifname}/accept_dad", "0")
    if style is EndpointStyle.PROXY:
        yield Sysctl(f"net/ipv4/conf/{ifname}/proxy_arp", "1")
        yield Sysctl(f"net/ipv6/conf/{ifname}/proxy_ndp", "1")
        # the default random delay of up to 0.8 s would stall every first packet
        yield Sysctl(f"net/ipv4/neigh/{ifname}/proxy_delay", "0")
        yield Sysctl(f"net/ipv6/neigh/{ifname}/proxy_delay", "0")


def _workload_prefixlen(config: Config, ep: Endpoint, addr: IPAddress) -> int:
    """A proxy-style workload holds its address with the tenant subnet's length (on-link)."""
    if ep.style is EndpointStyle.PROXY:
        tenant = config.tenants[ep.tenant]
        for net in (*tenant.ipv4, *tenant.ipv6):
            if addr in net:
                return net.prefixlen
    return addr.max_prefixlen


def _workload_addresses(config: Config, ep: Endpoint) -> Iterator[Address]:
    for addr in ep.addresses:
        iface = ipaddress.ip_interface(f"{addr}/{_workload_prefixlen(config, ep, addr)}")
        yield Address(WORKLOAD_IFNAME, iface, netns=ep.netns)


def _workload_routes(ep: Endpoint) -> Iterator[Route]:
    """Inside the workload: everything goes to the host's gateway addresses."""
    versions = {a.version for a in ep.addresses}
    on_eth0 = {"dev": WORKLOAD_IFNAME, "netns": ep.netns}
    if 4 in versions:
        gateway = ipaddress.ip_network(f"{markers.GATEWAY_V4}/32")
        yield Route(gateway, MAIN_TABLE, markers.RTPROT_INFRA, scope=RT_SCOPE_LINK, **on_eth0)
        yield Route(
            ipaddress.ip_network("0.0.0.0/0"),
            MAIN_TABLE,
            markers.RTPROT_INFRA,
            via=gateway.network_address,
            **on_eth0,
        )
    if 6 in versions:
        yield Route(
            ipaddress.ip_network("::/0"),
            MAIN_TABLE,
            markers.RTPROT_INFRA,
            via=ipaddress.ip_address(markers.GATEWAY_V6),
            **on_eth0,
        )


def _tenant_v6_addresses(
    config: Config, view: DirectoryView, tenant: str, tid: int
) -> set[IPAddress]:
    local: Iterable[IPAddress] = (
        a for ep in config.endpoints.values() if ep.tenant == tenant for a in ep.addresses
    )
    remote = (
        r.prefix.network_address
        for r in view.remote_routes
        if r.tenant_id == tid and r.prefix.version == 6
    )
    return {a for a in (*local, *remote) if a.version == 6}
