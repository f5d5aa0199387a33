"""The typed configuration of one routed_nv host.

Field checks live in the types (types.py); checks that relate fields to each other live in
crosscheck.py so that each problem is reported against the field that is wrong.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from routed_nv.config.types import (
    AbsolutePath,
    Asn,
    DpdSeconds,
    GenerationNumber,
    HostId,
    IfName,
    IPAddress,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ListenAddress,
    Mtu,
    Name,
    RekeySeconds,
    TenantId,
    int_range,
)
from routed_nv.model.directory import tenant_outer_address
from routed_nv.model.endpoint import EndpointStyle
from routed_nv.model.protection import DEFAULT, Protection, suite


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Host(_Strict):
    name: Name
    id: HostId = Field(description="deployment-wide unique host number; the SPI's sender slot")
    underlay_prefix: IPv6Network = Field(description="the /64 this host owns on the underlay")
    underlay_aggregate: IPv6Network = Field(description="the prefix all hosts' /64s come from")
    uplink: IfName = Field(description="the underlay interface")
    underlay_mtu: Mtu = 1500

    @property
    def address(self) -> ipaddress.IPv6Address:
        """The host address (IKE and BGP endpoint): <prefix>::1."""
        return self.underlay_prefix[1]

    def tenant_address(self, tenant_id: int) -> ipaddress.IPv6Address:
        """The tenant outer address: <prefix>::1:<tenant id>."""
        return tenant_outer_address(self.underlay_prefix, tenant_id)


class Upstream(_Strict):
    """An eBGP neighbour (top-of-rack router) that learns this host's /64."""

    address: IPv6Address
    asn: Asn


class DirectorySourceKind(StrEnum):
    STATIC = "static"  # peers and remote_endpoints from this file
    BGP = "bgp"  # remote endpoints from BIRD's mirror tables (docs/agent.md)


class Directory(_Strict):
    source: DirectorySourceKind = DirectorySourceKind.STATIC
    asn: Asn = 65000
    route_reflectors: list[IPv6Address] = Field(default_factory=list, max_length=8)
    password_file: Path | None = None
    upstreams: list[Upstream] = Field(default_factory=list)
    bird_socket: Path = Path("/run/bird/bird.ctl")
    # routed_nv renders this file from the config and owns it; BIRD's own bird.conf includes it
    # or BIRD runs with `-c` on it
    bird_config: Path = Path("/run/routed-nv/bird.conf")
    # Mobility (docs/directory.md, calc/duplicates.py): a lost address still attached here is
    # announced again after reassert_after_s; one that changes location more than
    # duplicate_moves times within duplicate_window_s is frozen and reported as a duplicate.
    duplicate_moves: Annotated[int, int_range(1, 1000)] = 5
    duplicate_window_s: Annotated[int, int_range(1, 86400)] = 180
    reassert_after_s: Annotated[int, int_range(0, 3600)] = 30


class KeyingMode(StrEnum):
    IKE = "ike"
    STATIC = "static"


class Keying(_Strict):
    mode: KeyingMode = KeyingMode.IKE
    # static mode: one secret per tenant, <secrets_dir>/<tenant name>.key, from which every SA key
    # is derived (HKDF); never logged.
    secrets_dir: Path = Path("/etc/routed-nv/keys")
    rotation_grace_s: Annotated[int, int_range(1, 3600)] = 5
    # ike mode
    vici_socket: Path = Path("/var/run/charon.vici")
    psk_file: Path | None = None
    ca_cert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    ike_proposals: list[str] = Field(default_factory=lambda: ["aes128gcm16-prfsha256-x25519"])
    esp_proposals: list[str] = Field(default_factory=lambda: ["aes128gcm16-x25519"])
    # strongSwan's own defaults for the rekeys (charon adds up to 10 % jitter); DPD every 30 s,
    # so that a dead peer's SAs are replaced within about a minute, not at the next rekey.
    ike_rekey_s: RekeySeconds = 4 * 3600
    child_rekey_s: RekeySeconds = 3600
    dpd_delay_s: DpdSeconds = 30


class Tenant(_Strict):
    id: TenantId
    ipv4: list[IPv4Network] = Field(default_factory=list)
    ipv6: list[IPv6Network] = Field(default_factory=list)
    mtu: Mtu | None = Field(
        default=None, description="workload MTU; default underlay MTU - the mode's overhead"
    )
    protection: Protection = Field(default=DEFAULT, description="the ESP transform of its SAs")
    # static keying: key generations that keep another mode than `protection`, so that a mode
    # change is make-before-break like a rotation (docs/keys.md)
    generation_protection: dict[GenerationNumber, Protection] = Field(default_factory=dict)

    def protection_of(self, generation: int) -> Protection:
        return self.generation_protection.get(generation, self.protection)

    @property
    def protections(self) -> frozenset[Protection]:
        """Every mode the tenant's SAs may use now."""
        return frozenset({self.protection, *self.generation_protection.values()})


class Endpoint(_Strict):
    """A workload on this host."""

    tenant: Name
    addresses: list[IPAddress] = Field(min_length=1)
    interface: IfName | None = Field(default=None, description="the host side (veth or tap)")
    netns: Name | None = Field(
        default=None, description="the workload's netns; routed_nv makes the veth pair into it"
    )
    style: EndpointStyle = EndpointStyle.HOST


class Peer(_Strict):
    """Another host, for static directory entries and static keying."""

    id: HostId
    underlay_prefix: IPv6Network


class RemoteEndpoint(_Strict):
    """A workload on another host, configured statically (the BGP directory supersedes it)."""

    tenant: Name
    addresses: list[IPAddress] = Field(min_length=1)
    host: Name


DEFAULT_METRICS_ADDRESS = "127.0.0.1:9573"  # the agent's Prometheus endpoint


class LogFormat(StrEnum):
    TEXT = "text"  # `event key=value ...`
    JSON = "json"  # one object per line


class Agent(_Strict):
    """`routed-nv agent`; its command-line options, when given, win over these."""

    metrics_address: ListenAddress = DEFAULT_METRICS_ADDRESS  # or "off"
    resync_interval_s: Annotated[float, Field(ge=1, le=3600)] = 30.0
    min_interval_s: Annotated[float, Field(ge=0, le=60)] = 0.2
    log_format: LogFormat = LogFormat.TEXT
    # What must survive a reboot: the static-key SAs' outbound sequence reservations
    # (docs/agent.md). Created (0700) when first needed.
    state_dir: AbsolutePath = Path("/var/lib/routed-nv")
    # The control socket agent.sock lives here; the commands that ask the agent (status,
    # lookup, ...) find it from the same configuration. The unit's RuntimeDirectory= makes the
    # default.
    run_dir: AbsolutePath = Path("/run/routed-nv")


class Config(_Strict):
    host: Host
    agent: Agent = Field(default_factory=Agent)
    directory: Directory = Field(default_factory=Directory)
    keying: Keying = Field(default_factory=Keying)
    tenants: dict[Name, Tenant] = Field(default_factory=dict)
    endpoints: dict[Name, Endpoint] = Field(default_factory=dict)
    peers: dict[Name, Peer] = Field(default_factory=dict)
    remote_endpoints: dict[Name, RemoteEndpoint] = Field(default_factory=dict)

    def tenant_mtu(self, name: str) -> int:
        return self.tenants[name].mtu or self.tunnel_mtu(name)

    def tunnel_mtu(self, name: str) -> int:
        """What fits every mode the tenant uses (during a mode change: the smaller)."""
        modes = self.tenants[name].protections
        return min(suite(p).workload_mtu(self.host.underlay_mtu) for p in modes)
