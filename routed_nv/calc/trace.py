"""`routed-nv trace`: the path a packet from a workload would take, decided from gathered facts.

Pure: the gatherer (routed_nv/trace_facts.py) reads the kernel's route choice, the XFRM policies
and SAs and the directory view; this module walks the packet through them in the order the
kernel does (source endpoint and anti-spoofing, VRF route, tunnel, XFRM policy, SA, the peer's
decapsulation rule) and stops at the FIRST step that would drop it, as `ovs-appctl ofproto/trace`
does. Each step says what it found, so a delivered packet documents its path too.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from routed_nv.calc.netfilter import SRC_PREFIX, TO_HOST
from routed_nv.calc.routing import RoutingConflict, host_ifname
from routed_nv.config.model import Config, KeyingMode
from routed_nv.errors import RoutedNvError
from routed_nv.model import markers
from routed_nv.model import spi as spi_plan
from routed_nv.model.directory import DirectoryView, PeerHost, RemoteRoute
from routed_nv.model.netfilter import Rule
from routed_nv.model.xfrm import Direction, XfrmPolicy, XfrmState

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
PROTOCOLS = ("icmp", "tcp", "udp")


class TraceError(RoutedNvError, ValueError):
    """The question cannot be asked: unknown tenant, not an address, mixed families."""


class Verdict(StrEnum):
    DELIVERED = "delivered"  # to a workload on this host
    SENT = "sent"  # encrypted to the peer host that holds the destination
    DROPPED = "dropped"


@dataclass(frozen=True)
class KernelRoute:
    """The kernel's answer to `ip route get vrf <tenant VRF> DST from SRC`: the device and next
    hop it chose, or its error ("No route to host" for the VRF's unreachable default)."""

    dev: str | None = None
    via: IPAddress | None = None
    error: str | None = None
    local: bool = False  # DST is an address of this host (type local): the host's own stack


@dataclass(frozen=True)
class Facts:
    config: Config
    view: DirectoryView
    view_source: str  # "from the running agent", "from the configuration (no agent)"
    route: KernelRoute
    policies: tuple[XfrmPolicy, ...]
    states: tuple[XfrmState, ...]


@dataclass(frozen=True)
class Step:
    what: str  # source, anti-spoofing, directory, route, to-host, tunnel, xfrm-policy, sa,
    # receiver
    detail: str
    ok: bool = True


@dataclass(frozen=True)
class Trace:
    tenant: str
    tenant_id: int
    src: IPAddress
    dst: IPAddress
    proto: str
    port: int | None
    steps: tuple[Step, ...]
    verdict: Verdict
    reason: str  # one line: where it goes, or the first reason it would be dropped
    host: str | None = None  # the peer it is sent to
    spi: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "tenant_id": self.tenant_id,
            "src": str(self.src),
            "dst": str(self.dst),
            "proto": self.proto,
            "port": self.port,
            "steps": [{"step": s.what, "ok": s.ok, "detail": s.detail} for s in self.steps],
            "verdict": str(self.verdict),
            "reason": self.reason,
            "host": self.host,
            "spi": None if self.spi is None else f"0x{self.spi:08x}",
        }


@dataclass
class _Walk:
    """The steps so far; `drop` ends the walk with the first reason."""

    steps: list[Step] = field(default_factory=list)

    def ok(self, what: str, detail: str) -> None:
        self.steps.append(Step(what, detail))


class _Dropped(Exception):
    def __init__(self, what: str, reason: str) -> None:
        super().__init__(reason)
        self.step = Step(what, reason, ok=False)


def resolve_tenant(config: Config, tenant: str) -> tuple[str, int]:
    """A tenant given by name or by id."""
    for name, t in config.tenants.items():
        if tenant in (name, str(t.id)):
            return name, t.id
    raise TraceError(f"no tenant {tenant!r} in this host's configuration")


def parse_packet(src: str, dst: str, proto: str, port: int | None) -> tuple[IPAddress, IPAddress]:
    try:
        source, dest = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    except ValueError as exc:
        raise TraceError(str(exc)) from None
    if source.version != dest.version:
        raise TraceError(f"SRC {source} and DST {dest} are not of the same IP version")
    if proto not in PROTOCOLS:
        raise TraceError(f"--proto {proto!r}: one of {', '.join(PROTOCOLS)}")
    if port is not None and proto == "icmp":
        raise TraceError("--port needs --proto tcp or udp")
    return source, dest


def source_interface(config: Config, tenant: str, src: str) -> str | None:
    """The host interface a packet from SRC of TENANT arrives on, if an endpoint holds it."""
    name, _ = resolve_tenant(config, tenant)
    try:
        endpoint = _endpoint_of(config, name, ipaddress.ip_address(src))
    except ValueError:
        return None
    return None if endpoint is None else _ifnames(config).get(endpoint)


def _endpoint_of(config: Config, tenant: str, address: IPAddress) -> str | None:
    return next(
        (
            n
            for n, ep in sorted(config.endpoints.items())
            if ep.tenant == tenant and address in ep.addresses
        ),
        None,
    )


def trace(facts: Facts, tenant: str, src: str, dst: str, proto: str, port: int | None) -> Trace:
    """Walk a packet from SRC (a workload of TENANT on this host) to DST."""
    name, tid = resolve_tenant(facts.config, tenant)
    source, dest = parse_packet(src, dst, proto, port)
    walk = _Walk()
    result: tuple[Verdict, str, str | None, int | None]
    try:
        result = _walk(facts, walk, name, tid, source, dest, proto)
    except _Dropped as dropped:
        walk.steps.append(dropped.step)
        result = (Verdict.DROPPED, dropped.step.detail, None, None)
    verdict, reason, host, spi = result
    steps = tuple(walk.steps)
    return Trace(name, tid, source, dest, proto, port, steps, verdict, reason, host, spi)


def _walk(
    facts: Facts, walk: _Walk, tenant: str, tid: int, src: IPAddress, dst: IPAddress, proto: str
) -> tuple[Verdict, str, str | None, int | None]:
    config = facts.config
    ifnames = _ifnames(config)
    endpoint = _source_endpoint(config, walk, tenant, src, ifnames)
    vrf = markers.vrf_name(tid)
    walk.ok(
        "anti-spoofing",
        f"{SRC_PREFIX}{ifnames[endpoint]} accepts source {src} "
        f"({Rule(target='RETURN', src=str(ipaddress.ip_network(src))).render()}); "
        f"enters VRF {vrf} (table {markers.vrf_table(tid)})",
    )
    local = _endpoint_of(config, tenant, dst)
    remote = _remote_route(facts.view, tid, dst)
    _directory_step(facts, walk, tenant, dst, local, remote)

    route = facts.route
    if route.local:
        return _to_host(walk, src, dst, proto)
    if route.error is not None or route.dev is None:
        raise _Dropped("route", _no_route(facts, tenant, tid, dst, local, remote, route))
    owner = _tenant_of_dev(config, route.dev, ifnames)
    if owner is not None and owner != tid:
        raise _Dropped(
            "route",
            f"the kernel routes {dst} in VRF {vrf} out of {route.dev}, a device of tenant "
            f"{owner}: a route to another tenant is impossible by design (tenant boundary); "
            "remove it, `routed-nv apply` does",
        )
    holder = next((n for n, i in ifnames.items() if i == route.dev), None)
    if holder is not None:
        walk.ok("route", f"kernel: {dst} dev {route.dev} in VRF {vrf}")
        reason = f"delivered locally to endpoint {holder} ({route.dev})"
        return Verdict.DELIVERED, reason, None, None
    if route.dev != markers.tunnel_name(tid) or route.via is None:
        raise _Dropped(
            "route",
            f"the kernel routes {dst} in VRF {vrf} out of {route.dev}"
            + (f" via {route.via}" if route.via else "")
            + f", which is neither an endpoint of tenant {tenant} nor its tunnel",
        )
    walk.ok("route", f"kernel: {dst} via {route.via} dev {route.dev} in VRF {vrf}")
    peer = _peer_of(facts.view, config, tid, route.via)
    return _encrypted(facts, walk, tenant, tid, dst, route.via, peer)


def _to_host(
    walk: _Walk, src: IPAddress, dst: IPAddress, proto: str
) -> tuple[Verdict, str, str | None, int | None]:
    """The kernel would deliver DST to the host itself: RNV-HOST lets a workload reach its
    host with echo requests to the gateway (and neighbour discovery) only (docs/isolation.md)."""
    walk.ok("route", f"kernel: {dst} is an address of this host (a local route)")
    gateway = markers.GATEWAY_V4 if dst.version == 4 else markers.GATEWAY_V6
    if proto == "icmp" and dst == ipaddress.ip_address(gateway):
        walk.ok("to-host", f"{TO_HOST} lets an echo request to the gateway {dst} through")
        return Verdict.DELIVERED, f"delivered to this host: its gateway {dst} answers", None, None
    raise _Dropped(
        "to-host",
        f"{dst} is an address of this host: {TO_HOST} drops what a workload sends to its host "
        "except neighbour discovery and echo requests to the gateway (tenant/host isolation)",
    )


def _source_endpoint(
    config: Config, walk: _Walk, tenant: str, src: IPAddress, ifnames: dict[str, str]
) -> str:
    name = _endpoint_of(config, tenant, src)
    if name is not None and name in ifnames:
        ep = config.endpoints[name]
        where = f"veth into netns {ep.netns}" if ep.netns else "an existing interface"
        walk.ok("source", f"endpoint {name} of tenant {tenant} on {ifnames[name]} ({where})")
        return name
    others = [(n, ep.tenant) for n, ep in sorted(config.endpoints.items()) if src in ep.addresses]
    if others:
        holders = ", ".join(f"endpoint {n} of tenant {t}" for n, t in others)
        raise _Dropped(
            "source",
            f"SRC {src} is not tenant {tenant}'s on host {config.host.name}: it is {holders}; "
            f"anti-spoofing accepts it only from that endpoint's interface, into that tenant's VRF",
        )
    raise _Dropped(
        "source",
        f"no endpoint for SRC {src} on host {config.host.name}: no workload of tenant {tenant} "
        "here holds that address (anti-spoofing drops a packet from any other source)",
    )


def _directory_step(
    facts: Facts,
    walk: _Walk,
    tenant: str,
    dst: IPAddress,
    local: str | None,
    remote: RemoteRoute | None,
) -> None:
    if local is not None:
        walk.ok("directory", f"{dst} is local endpoint {local} of tenant {tenant}")
    elif remote is not None:
        walk.ok(
            "directory",
            f"{dst} in tenant {tenant} announced by host {remote.peer.name} "
            f"({remote.peer.address}), mobility sequence {remote.sequence} "
            f"({facts.view_source})",
        )
    else:
        walk.ok("directory", f"no entry for {dst} in tenant {tenant} ({facts.view_source})")


def _no_route(
    facts: Facts,
    tenant: str,
    tid: int,
    dst: IPAddress,
    local: str | None,
    remote: RemoteRoute | None,
    route: KernelRoute,
) -> str:
    vrf = markers.vrf_name(tid)
    kernel = f"kernel: {route.error or 'no device'}"
    where = f"local endpoint {local}" if local is not None else None
    if remote is not None:
        where = f"host {remote.peer.name}"
    if where is not None:
        return (
            f"no route to {dst} in VRF {vrf} although the directory has it ({where}): the "
            f"kernel disagrees with the desired state; the agent's next resync or `routed-nv "
            f"apply` repairs it ({kernel})"
        )
    elsewhere = _other_tenants_holding(facts, tid, dst)
    if elsewhere:
        return (
            f"{dst} is tenant {' and '.join(elsewhere)}'s, not {tenant}'s: VRF {vrf} has no "
            f"route across the tenant boundary ({kernel})"
        )
    return (
        f"no route to {dst} in tenant {tenant}: no endpoint holds it, here or in the "
        f"directory ({kernel})"
    )


def _encrypted(
    facts: Facts,
    walk: _Walk,
    tenant: str,
    tid: int,
    dst: IPAddress,
    via: IPAddress,
    peer: PeerHost | None,
) -> tuple[Verdict, str, str | None, int | None]:
    config = facts.config
    mine = config.host.tenant_address(tid)
    inner = 4 if dst.version == 4 else 41
    peer_name = peer.name if peer else f"the host of {via} (not in the directory)"
    walk.ok(
        "tunnel",
        f"{markers.tunnel_name(tid)}: IPv6 {mine} -> {via} next header {inner} (to {peer_name})",
    )
    policy = _out_policy(facts.policies, mine, via, inner)
    if policy is None:
        raise _Dropped(
            "xfrm-policy",
            f"no XFRM out policy for {mine} -> {via} proto {inner}: the packet would leave in "
            f"plaintext and the receiver's decapsulation rule drops it (ipsec policy none)",
        )
    if policy.is_block:
        raise _Dropped(
            "xfrm-policy",
            f"XFRM {policy.describe()}: {via} is outside the ESP policy's aggregate "
            f"{config.host.underlay_aggregate} (XfrmOutPolBlock)",
        )
    walk.ok("xfrm-policy", policy.describe())
    sas = sorted(
        (
            s
            for s in facts.states
            if (s.src, s.dst, s.reqid) == (mine, via, policy.reqid) and s.mode == "transport"
        ),
        key=lambda s: s.spi,
    )
    if not sas:
        raise _Dropped(
            "sa",
            f"no SA for the policy: src {mine} dst {via} reqid {policy.reqid}; the kernel drops "
            f"the packet (XfrmOutNoStates){_expected(config, tid, peer)}",
        )
    sa = sas[-1]  # static keying: the newest generation; IKE: charon's SAs differ only in SPI
    walk.ok("sa", f"SPI 0x{sa.spi:08x} {_spi_owner(config, sa)}" + _others(sas))
    walk.ok("receiver", _receiver(config, tid, via, peer, sa))
    host = peer.name if peer else str(via)
    return Verdict.SENT, f"sent to host {host} over SPI 0x{sa.spi:08x}", host, sa.spi


def _out_policy(
    policies: tuple[XfrmPolicy, ...], src: IPAddress, dst: IPAddress, inner: int
) -> XfrmPolicy | None:
    """The policy the kernel applies: the matching one with the lowest priority number."""
    matching = [
        p
        for p in policies
        if p.direction is Direction.OUT and p.proto == inner and src in p.src and dst in p.dst
    ]
    return min(matching, key=lambda p: p.priority, default=None)


def _spi_owner(config: Config, sa: XfrmState) -> str:
    tenant = markers.tenant_of_reqid(sa.reqid)
    if config.keying.mode is not KeyingMode.STATIC:
        return f"(reqid {sa.reqid}: tenant {tenant}; SPI chosen by charon)"
    try:
        fields = spi_plan.decode(sa.spi)
    except spi_plan.SpiExhausted as exc:
        return f"(reqid {sa.reqid}: tenant {tenant}; {exc})"
    return (
        f"(SPI plan: tenant {fields.tenant_id}, sender host id {fields.sender_id}, "
        f"generation {fields.generation})"
    )


def _others(sas: list[XfrmState]) -> str:
    if len(sas) == 1:
        return ""
    return "; also " + ", ".join(f"0x{s.spi:08x}" for s in sas[:-1]) + " (older generations)"


def _expected(config: Config, tid: int, peer: PeerHost | None) -> str:
    if config.keying.mode is not KeyingMode.STATIC:
        return "; IKE keying: charon has no CHILD_SA for this peer and tenant (`routed-nv sa list`)"
    return (
        f"; static keying expects SPI 0x{spi_plan.encode(tid, config.host.id, 0):08x}.."
        f"0x{spi_plan.encode(tid, config.host.id, spi_plan.GENERATION_MAX):08x}"
        + (f" towards host {peer.name}" if peer else "")
    )


def _receiver(
    config: Config, tid: int, via: IPAddress, peer: PeerHost | None, sa: XfrmState
) -> str:
    """What the receiving host does with it: the SA found by (destination, SPI), then the
    decapsulation rule that only lets the tenant's own decrypted traffic into its tunnel."""
    rule = Rule(
        target="RETURN",
        dst=str(ipaddress.ip_network(via)),
        ipsec_reqid=markers.reqid(tid),
    )
    host = f"host {peer.name}" if peer else str(via)
    return (
        f"{host} finds its inbound SA by ({via}, SPI 0x{sa.spi:08x}); RNV-DECAP accepts "
        f"only what tenant {tid}'s SAs decrypted ({rule.render()}) into "
        f"{markers.tunnel_name(tid)}, VRF {markers.vrf_name(tid)}"
    )


def _ifnames(config: Config) -> dict[str, str]:
    names = {}
    for name, ep in config.endpoints.items():
        try:
            names[name] = host_ifname(name, ep)
        except RoutingConflict:
            continue  # config check reports it; such an endpoint has no interface of ours
    return names


def _remote_route(view: DirectoryView, tid: int, dst: IPAddress) -> RemoteRoute | None:
    prefix = ipaddress.ip_network(dst)
    return next((r for r in view.remote_routes if r.tenant_id == tid and r.prefix == prefix), None)


def _other_tenants_holding(facts: Facts, tid: int, dst: IPAddress) -> list[str]:
    config = facts.config
    names = {t.id: n for n, t in config.tenants.items()}
    found = {ep.tenant for ep in config.endpoints.values() if dst in ep.addresses}
    prefix = ipaddress.ip_network(dst)
    found |= {
        names.get(r.tenant_id, str(r.tenant_id))
        for r in facts.view.remote_routes
        if r.prefix == prefix and r.tenant_id != tid
    }
    found.discard(next(n for n, t in config.tenants.items() if t.id == tid))
    return sorted(found)


def _tenant_of_dev(config: Config, dev: str, ifnames: dict[str, str]) -> int | None:
    for name, ifname in ifnames.items():
        if ifname == dev:
            return config.tenants[config.endpoints[name].tenant].id
    return markers.tenant_of_link(dev)


def _peer_of(view: DirectoryView, config: Config, tid: int, via: IPAddress) -> PeerHost | None:
    """The host whose tenant outer address the route's next hop is."""
    peers = {r.peer for r in view.remote_routes}
    peers |= {PeerHost(n, p.id, p.underlay_prefix) for n, p in config.peers.items()}
    return next((p for p in sorted(peers) if p.tenant_address(tid) == via), None)
