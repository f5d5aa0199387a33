"""What a benchmark run produces: typed, JSON round-trippable (the UML guest writes it, the
calling process renders it)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class Variant(StrEnum):
    UNDERLAY = "underlay"  # (d) the floor: workloads routed directly, no overlay
    ROUTED = "routed_nv"  # (a) routed, per-tenant VRF, ESP transport with AES-GCM
    VXLAN = "vxlan"  # (b) Linux bridge + VXLAN per tenant, head-end replication, unencrypted
    VXLAN_IPSEC = "vxlan+ipsec"  # (c) (b) with host-to-host ESP transport on the VXLAN port


DESCRIPTIONS = {
    Variant.UNDERLAY: "plain IPv6 underlay, workloads routed by their host (no overlay)",
    Variant.ROUTED: "routed_nv: VRF per tenant, ip6tnl, ESP transport rfc4106(gcm(aes))",
    Variant.VXLAN: "Linux bridge + VXLAN (IPv6) per tenant, static all-zero FDB flood list",
    Variant.VXLAN_IPSEC: "as vxlan, plus host-to-host ESP transport on UDP 4789 (AES-GCM)",
}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Throughput(_Model):
    streams: int
    gbps: float  # received by the server, as iperf3 reports it
    retransmits: int
    cpu_busy: float  # fraction of the guest's CPU time that was not idle during the run
    cpu_s_per_gbit: float  # busy CPU-seconds (all CPUs) per gigabit received


class Latency(_Model):
    transactions: int
    size: int  # bytes per request and per response
    p50_us: float
    p99_us: float


class Mtu(_Model):
    computed: int  # largest workload IP packet that fits the underlay MTU, by arithmetic
    overhead: int  # bytes the variant adds to a packet of that size
    fits: bool  # a DF ping of `computed` bytes arrived, with no fragmentation on the underlay
    next_fails: bool  # with the path raised by one byte, a DF ping of computed+1 did not arrive

    @property
    def verified(self) -> bool:
        return self.fits and self.next_fails


class Convergence(_Model):
    seconds: float | None  # from starting the move to the first answered probe sent after it
    move_seconds: float  # of which: doing the move itself (port moved, control plane updated)
    method: str
    note: str = ""  # why there is no figure, with the counters that tell


class Flood(_Model):
    """Packets that crossed hosts on the underlay during each event (router ingress, once)."""

    resolve: int  # a workload resolves the next hop towards a peer (IPv4 and IPv6)
    boot: int  # a workload's link comes up: DAD, MLD, RS, one gratuitous ARP, global-address DAD
    unknown: int  # a workload pings an address nobody has (IPv4 and IPv6)


class HostState(_Model):
    routes: int
    sas: int
    policies: int
    fdb: int


class Scale(_Model):
    hosts: int
    flood: Flood
    state: HostState  # measured on host1
    formula: HostState  # what state.per_host predicts for that lab


class VariantResult(_Model):
    variant: Variant
    throughput: list[Throughput] = []
    latency: Latency | None = None
    mtu: Mtu | None = None
    convergence: Convergence | None = None
    convergence_note: str = ""
    scale: list[Scale] = []


class Projection(_Model):
    """State per host by formula for a deployment size."""

    variant: Variant
    hosts: int
    tenants: int  # per host
    endpoints: int  # per tenant per host
    span: int  # hosts each tenant spans
    state: HostState


class Environment(_Model):
    kernel: str  # release of the kernel that ran the datapath
    uml: bool  # that kernel was a user-mode-linux guest
    cpus: int  # CPUs that kernel has (UML: 1)
    cpu_model: str  # the physical CPU, from the machine's /proc/cpuinfo
    crypto: dict[str, list[str]]  # /proc/crypto: algorithm name -> driver names, as loaded
    iperf3: str
    mode: str


class Report(_Model):
    environment: Environment
    variants: list[VariantResult]
    projections: list[Projection]
