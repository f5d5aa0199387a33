"""What a benchmark run produces: typed, JSON round-trippable (the UML guest writes it, the
calling process renders it)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from routed_nv.model.protection import Protection


class Variant(StrEnum):
    UNDERLAY = "underlay"  # (d) the floor: workloads routed directly, no overlay
    ROUTED = "routed_nv"  # (a) routed, per-tenant VRF, ESP transport with AES-GCM
    VXLAN = "vxlan"  # (b) Linux bridge + VXLAN per tenant, head-end replication, unencrypted
    VXLAN_IPSEC = "vxlan+ipsec"  # (c) (b) with host-to-host ESP transport on the VXLAN port
    # The protection modes (issue 19), measured for throughput, latency and MTU only: the flood,
    # state and move figures do not depend on the cipher.
    ROUTED_CHACHA = "routed_nv chacha20-poly1305"
    ROUTED_INTEGRITY = "routed_nv integrity"
    ROUTED_NONE = "routed_nv none"
    VXLAN_IPSEC_CHACHA = "vxlan+ipsec chacha20-poly1305"


# The protection mode (docs/configuration.md) whose ESP each variant runs; None: no ESP.
PROTECTION = {
    Variant.UNDERLAY: None,
    Variant.ROUTED: Protection.AES_GCM,
    Variant.VXLAN: None,
    Variant.VXLAN_IPSEC: Protection.AES_GCM,
    Variant.ROUTED_CHACHA: Protection.CHACHA20_POLY1305,
    Variant.ROUTED_INTEGRITY: Protection.INTEGRITY,
    Variant.ROUTED_NONE: Protection.NONE,
    Variant.VXLAN_IPSEC_CHACHA: Protection.CHACHA20_POLY1305,
}


DESCRIPTIONS = {
    Variant.UNDERLAY: "plain IPv6 underlay, workloads routed by their host (no overlay)",
    Variant.ROUTED: "routed_nv: VRF per tenant, ip6tnl, ESP transport rfc4106(gcm(aes))",
    Variant.VXLAN: "Linux bridge + VXLAN (IPv6) per tenant, static all-zero FDB flood list",
    Variant.VXLAN_IPSEC: "as vxlan, plus host-to-host ESP transport on UDP 4789 (AES-GCM)",
    Variant.ROUTED_CHACHA: "routed_nv, ESP rfc7539esp(chacha20,poly1305)",
    Variant.ROUTED_INTEGRITY: "routed_nv, ESP rfc4543(gcm(aes)): AES-GMAC, authenticated, clear",
    Variant.ROUTED_NONE: "routed_nv, ESP ecb(cipher_null) without ICV: SPI + sequence only",
    Variant.VXLAN_IPSEC_CHACHA: "as vxlan+ipsec, ESP rfc7539esp(chacha20,poly1305)",
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
    # From starting the move until the last control-plane step the measured path needs had
    # returned (routed_nv: the applies on the new host and on the client's host).
    path_seconds: float
    # The datapath's own part: first answer minus path_seconds. Negative when the kernel
    # forwarded before the step's call returned (an apply installs routes, then reads back).
    datapath_seconds: float | None
    move_seconds: float  # from starting the move until every host's control plane was done
    method: str
    note: str = ""  # why there is no figure, with the counters that tell


class FrameCount(_Model):
    """Frames of one kind that crossed hosts, and how many hosts each reached."""

    kind: str  # what the inner frame is (wire.classify): "ARP request", "NS", "MLD report", ...
    frames: int
    copies: int  # crossings per frame: hosts - 1 when flooded, 1 when sent to a known MAC

    @property
    def crossings(self) -> int:
        return self.frames * self.copies


class EventFlood(_Model):
    """What crossed hosts during one event, frame by frame (router ingress, each copy once)."""

    frames: list[FrameCount]  # caused by the event: sent by its workload, or replies to it
    background: list[FrameCount]  # in the window too, not caused by it (see flood.py)

    @property
    def crossings(self) -> int:
        return sum(f.crossings for f in self.frames)


class Flood(_Model):
    resolve: EventFlood  # a workload resolves the next hop towards a peer (IPv4 and IPv6)
    unknown: EventFlood  # one ping to an address nobody has, one solicitation per request
    boot: EventFlood  # link up: DAD, MLD, RS, one gratuitous ARP, global-address DAD


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
    esp: list[str] = []  # the ESP algorithms of host1's SAs, as the kernel reports them


class Projection(_Model):
    """State per host by formula for a deployment size."""

    variant: Variant
    hosts: int
    tenants: int  # per host
    endpoints: int  # per tenant per host
    span: int  # hosts each tenant spans
    state: HostState


class AeadSpeed(_Model):
    """`openssl speed -evp`: user-space AEAD on the machine's CPU (AES-NI, SIMD), not ESP."""

    algorithm: str  # openssl's name, e.g. aes-128-gcm
    size: int  # bytes per operation
    bytes_per_second: float


class TenantsRun(_Model):
    """routed_nv (AES-GCM) between the same two hosts: one TCP stream per tenant at once, or
    the same number of streams inside one tenant (one SA per direction)."""

    tenants: int
    streams: int  # in all
    gbps: float  # summed over the streams
    per_stream_gbps: list[float]  # per tenant (several tenants) or the one tenant's total
    cpu_busy: list[float]  # per CPU of the kernel that ran it: fraction not idle
    cpu_s_per_gbit: float


class Environment(_Model):
    kernel: str  # release of the kernel that ran the datapath
    uml: bool  # that kernel was a user-mode-linux guest
    cpus: int  # CPUs that kernel has (UML: 1)
    cpu_model: str  # the physical CPU, from the machine's /proc/cpuinfo
    crypto: dict[str, list[str]]  # /proc/crypto: algorithm name -> driver names, as loaded
    iperf3: str
    mode: str
    # user-space AEAD speeds where the report was rendered (the machine, not the guest)
    openssl: list[AeadSpeed] = []
    openssl_version: str = ""
    host_load: str = ""  # the machine's /proc/loadavg when the run started
    uml_processes: int = 0  # `linux.uml` processes on the machine then (a guest runs several)


class Report(_Model):
    environment: Environment
    variants: list[VariantResult]
    projections: list[Projection]
    tenants: list[TenantsRun] = []
