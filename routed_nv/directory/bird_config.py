"""Renders BIRD 2 configurations: one per host, one per route reflector (docs/directory.md).

The host recipe is ARCHITECTURE.md §6 with the mobility sequence of mobility.py added: per
tenant T and family, a publish kernel protocol learns the routing driver's local-endpoint routes
(proto markers.RTPROT_ENDPOINT) into t4_T/t6_T, a pipe carries them into BGP's own table with
(ASN, 1, T), the same pipe brings back only other hosts' routes of tenant T, and a mirror pipe +
kernel protocol write those into markers.mirror_table(T) as `via <owning host> onlink`.

Rendering is pure. The BGP password is read from its file by the caller and passed in; the
rendered text therefore holds a secret: write it with write_private() and never log it.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from routed_nv.config.model import Config, Tenant, Upstream
from routed_nv.errors import RoutedNvError
from routed_nv.model import markers
from routed_nv.model.mobility import (
    MIRROR_SEQUENCE,
    MIRROR_TENANTS,
    SEQUENCE_COMMUNITY,
    TENANT_COMMUNITY,
)
from routed_nv.model.routing import DEFAULT_METRIC

BIRD = "bird"
LOCAL_PREFERENCE = 100  # BGP's default; a moved endpoint's route gets this + its sequence
# Local endpoints must beat any BGP route for the same prefix in the tenant table (BGP's
# preference is 100): during a move the new host must publish, not mirror the old location.
PUBLISH_PREFERENCE = 200
GR_TIME_S = 30
MIRROR_METRIC = 32  # the metric BIRD's kernel protocols write (their default; ours set none)
LLGR_STALE_TIME_S = 86400  # a day of forwarding on last-known routes with no route reflector
# Without a large buffer the kernel drops netlink messages under bursts and BIRD rescans: 1,000
# routes took 15 s instead of 0.05 s (ARCHITECTURE.md §6).
NETLINK_RX_BUFFER = 33554432
SCAN_TIME_S = 60  # netlink events do the work; the scan only catches what was missed
# A route reflector is unreachable until the underlay routes arrive from the upstream (eBGP, in
# the same BIRD): retry soon rather than after BIRD's default 120 s.
RR_CONNECT_RETRY_S = 5
# BIRD's first connect waits `connect delay time` (5 s by default) after it starts. The eBGP
# session to the upstream (link-local, the ToR is passive) goes first and soon: the route
# reflector sessions need the underlay routes it brings, and a first attempt made before they
# arrive waits out a connect retry (lab: in sync 8.6-11.8 s after the agent's start, varying
# with that race).
UPSTREAM_CONNECT_DELAY_S = 1
RR_CONNECT_DELAY_S = 2
# A restarted route reflector's graceful-restart recovery, instead of BIRD's 240 s: it never ends
# it on its own (docs/incidents.md, "A route reflector restarted with -R").
RR_RECOVERY_WAIT_S = 15


class BirdConfigError(RoutedNvError, RuntimeError):
    pass


@dataclass(frozen=True, order=True)
class BirdVersion:
    """The version of the BIRD that will read a rendered config: the syntax differs by version."""

    major: int
    minor: int
    patch: int = 0

    # BIRD 2.16 added TCP-AO and with it the session option `authentication none|md5|ao`; from
    # then on a bare `password` logs "Missing authentication option, assuming MD5" for every
    # session, while BIRD before 2.16 rejects the option.
    AUTHENTICATION_SINCE = (2, 16)

    @property
    def names_authentication(self) -> bool:
        return (self.major, self.minor) >= self.AUTHENTICATION_SINCE

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @classmethod
    def parse(cls, text: str) -> BirdVersion:
        """From `bird --version` ("BIRD version 2.0.12")."""
        match = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", text)
        if match is None:
            raise BirdConfigError(f"cannot read BIRD's version from {text.strip()[:80]!r}")
        major, minor, patch = match.groups()
        return cls(int(major), int(minor), int(patch or 0))


@functools.cache
def installed_version() -> BirdVersion:
    """The version of the `bird` on PATH (it prints it on stderr)."""
    try:
        done = subprocess.run(
            [BIRD, "--version"], capture_output=True, text=True, check=False, timeout=30
        )
    except FileNotFoundError:
        raise BirdConfigError(f"`{BIRD}` is not installed (apt-get install bird2)") from None
    return BirdVersion.parse(done.stderr + done.stdout)


@dataclass(frozen=True)
class Family:
    version: int
    table: str  # BIRD's table kind: ipv4 / ipv6
    letter: str  # in table and protocol names: t4_T, k6_T

    @property
    def bgp_table(self) -> str:
        return f"bgp{self.version}"


FAMILIES = (Family(4, "ipv4", "4"), Family(6, "ipv6", "6"))


def router_id(node_id: int) -> str:
    """BGP router id from the deployment-wide unique host (or route reflector) id."""
    return str(ipaddress.IPv4Address(node_id))


def _quote(text: str) -> str:
    # BIRD strings have no escapes: a double quote cannot appear inside one.
    return f'"{text}"'


def read_password(path: Path | None) -> str | None:
    """The BGP (TCP-MD5) password from its file: first line, without surrounding whitespace."""
    if path is None:
        return None
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise BirdConfigError(f"cannot read BGP password file {path}: {exc.strerror}") from None
    password = lines[0].strip() if lines else ""
    if not password:
        raise BirdConfigError(f"BGP password file {path} is empty")
    if '"' in password:
        raise BirdConfigError(f"BGP password in {path} contains '\"', which BIRD cannot quote")
    return password


def _header(rid: str, log: Path | None) -> list[str]:
    return [
        "# Generated by routed-nv; changes here are overwritten.",
        f"log {_quote(str(log)) if log else 'syslog'} all;",
        f"router id {rid};",
        "protocol device {}",
    ]


def _underlay(export_to_kernel: str) -> list[str]:
    # BGP next hops are host addresses resolved recursively through the underlay, so BIRD has to
    # know the kernel's underlay routes (learned from the main table).
    return [
        "protocol kernel underlay6 {",
        f"  ipv6 {{ import all; export {export_to_kernel}; }};",
        "  learn; persist; graceful restart on;",
        f"  scan time {SCAN_TIME_S}; netlink rx buffer {NETLINK_RX_BUFFER};",
        "}",
    ]


def _session_options(password: str | None, version: BirdVersion) -> list[str]:
    lines = [
        f"  graceful restart on; graceful restart time {GR_TIME_S};",
        "  long lived graceful restart on;",
        f"  long lived stale time {LLGR_STALE_TIME_S};",
    ]
    if password:
        lines.append(f"  password {_quote(password)};")
        if version.names_authentication:
            lines.append("  authentication md5;")
    return lines


def _channels(export: str, next_hop_self: bool) -> list[str]:
    """Both families of an iBGP session, in BGP's own tables (kept apart from the underlay's
    master tables); IPv4 travels with IPv6 next hops (RFC 5549)."""
    lines = []
    for fam in FAMILIES:
        nhs = "next hop self; " if next_hop_self else ""
        extended = "extended next hop on; " if fam.version == 4 else ""
        lines.append(
            f"  {fam.table} {{ table {fam.bgp_table}; {nhs}gateway recursive; igp table master6; "
            f"{extended}add paths on; import all; export {export}; }};"
        )
    return lines


def _bgp_tables() -> list[str]:
    return [f"{fam.table} table {fam.bgp_table};" for fam in FAMILIES]


def _sequence(asn: int) -> str:
    return f"filter(bgp_large_community, [({asn}, {SEQUENCE_COMMUNITY}, *)]).max.data2"


def _tenant_tags(asn: int) -> str:
    """How many tenant communities a route carries (a valid one: exactly one)."""
    return f"filter(bgp_large_community, [({asn}, {TENANT_COMMUNITY}, *)]).len"


def _minus(expr: str, base: int) -> str:
    return f"{expr} - {base}" if base else expr


def _tenant(asn: int, tenant: Tenant, fam: Family) -> list[str]:
    t = tenant.id
    tag = f"({asn}, {TENANT_COMMUNITY}, {t})"
    moved = f"[({asn}, {SEQUENCE_COMMUNITY}, *)]"
    base = DEFAULT_METRIC[fam.version]
    seq_from_metric = f"({asn}, {SEQUENCE_COMMUNITY}, {_minus('krt_metric', base)})"
    n = f"{fam.letter}_{t}"
    mirror, writer = mirror_names(t, fam)
    return [
        f"{fam.table} table t{n};",
        f"{fam.table} table {mirror};",
        f"protocol kernel k{n} {{",
        f"  {fam.table} {{ table t{n}; preference {PUBLISH_PREFERENCE};",
        f"    import where krt_source = {markers.RTPROT_ENDPOINT}; export none; }};",
        f"  kernel table {markers.publish_table(t)}; learn; persist; graceful restart on;",
        f"  scan time {SCAN_TIME_S}; netlink rx buffer {NETLINK_RX_BUFFER};",
        "}",
        f"protocol pipe p{n} {{",
        f"  table t{n}; peer table {fam.bgp_table};",
        "  export filter {",
        "    if source = RTS_BGP then reject;",
        f"    bgp_large_community.add({tag});",
        f"    if krt_metric > {base} then",
        f"      bgp_large_community.add({seq_from_metric});",
        "    accept;",
        "  };",
        "  import filter {",
        f"    if source != RTS_BGP || !({tag} ~ bgp_large_community) then reject;",
        f"    if bgp_large_community ~ {moved} then",
        f"      bgp_local_pref = {LOCAL_PREFERENCE} + {_sequence(asn)};",
        # A route for two tenants is refused by learn (it reaches the mirror table marked, so
        # that the refusal is reported); ranked last, it never hides a valid route's location.
        f"    if {_tenant_tags(asn)} > 1 then bgp_local_pref = 0;",
        "    accept;",
        "  };",
        "}",
        f"protocol pipe pm{n} {{",
        f"  table t{n}; peer table {mirror}; export where source = RTS_BGP; import none;",
        "}",
        f"protocol kernel {writer} {{",
        f"  {fam.table} {{ table {mirror}; import none; export filter {{",
        "    if source != RTS_BGP then reject;",
        # The agent reads the sequence from the route's window metric (inert here: nothing
        # forwards through a mirror table); krt_metric must stay fixed, see below.
        f"    if bgp_large_community ~ {moved} then {MIRROR_SEQUENCE} = {_sequence(asn)};",
        f"    if {_tenant_tags(asn)} > 1 then {MIRROR_TENANTS} = {_tenant_tags(asn)};",
        "    onlink = true; gw = bgp_next_hop; accept;",
        "  }; };",
        # One metric for every mirror route: BIRD 2.0.12 replaces a kernel route in place, so a
        # per-route metric would leave the old location behind when the best path changes.
        f"  kernel table {markers.mirror_table(t)}; persist; graceful restart on;",
        f"  netlink rx buffer {NETLINK_RX_BUFFER};",
        "}",
    ]


@dataclass(frozen=True)
class UpstreamSessions:
    """eBGP to the top-of-rack routers of a node (host or route reflector)."""

    prefix: ipaddress.IPv6Network  # the node's /64, announced
    aggregate: ipaddress.IPv6Network  # underlay routes accepted: inside it, other than our /64
    uplink: str  # the interface of link-local neighbours
    upstreams: tuple[Upstream, ...]

    @classmethod
    def of(cls, config: Config) -> UpstreamSessions:
        host = config.host
        ups = tuple(config.directory.upstreams)
        return cls(host.underlay_prefix, host.underlay_aggregate, host.uplink, ups)


def _upstreams(asn: int, sessions: UpstreamSessions) -> list[str]:
    """eBGP to the top-of-rack routers: announce this node's /64, accept underlay routes."""
    if not sessions.upstreams:
        return []
    own = sessions.prefix
    lines = [f"protocol static host_prefix {{ ipv6; route {own} unreachable; }}"]
    for i, up in enumerate(sessions.upstreams, 1):
        where = f' interface "{sessions.uplink}";' if up.address.is_link_local else ""
        lines += [
            f"protocol bgp {upstream_protocol(i)} {{",
            f"  local as {asn}; neighbor {up.address} as {up.asn};{where}",
            f"  graceful restart on; connect delay time {UPSTREAM_CONNECT_DELAY_S};",
            "  ipv6 {",
            f"    import where net ~ [{sessions.aggregate}+] && !(net ~ [{own}+]);",
            '    export where proto = "host_prefix";',
            "  };",
            "}",
        ]
    return lines


def rr_protocol(index: int) -> str:
    """BIRD's name for a host's session to the index-th (from 1) route reflector."""
    return f"rr{index}"


def upstream_protocol(index: int) -> str:
    """BIRD's name for the eBGP session to the index-th (from 1) upstream."""
    return f"upstream{index}"


def render_host(
    config: Config, password: str | None, log: Path | None = None, *, version: BirdVersion
) -> str:
    """bird.conf for a host: its tenants' publish/mirror plumbing and iBGP to every RR, in the
    syntax of BIRD `version`."""
    asn = config.directory.asn
    lines = _header(router_id(config.host.id), log)
    lines += _bgp_tables()
    lines += _underlay("where source = RTS_BGP")
    for tenant in sorted(config.tenants.values(), key=lambda t: t.id):
        for fam in families_of(tenant):
            lines += _tenant(asn, tenant, fam)
    for i, rr in enumerate(config.directory.route_reflectors, 1):
        lines += [
            f"protocol bgp {rr_protocol(i)} {{",
            f"  local {config.host.address} as {asn}; neighbor {rr} as {asn}; multihop;",
            f"  connect delay time {RR_CONNECT_DELAY_S}; connect retry time {RR_CONNECT_RETRY_S};",
            *_session_options(password, version),
            *_channels("where source != RTS_BGP", next_hop_self=True),
            "}",
        ]
    lines += _upstreams(asn, UpstreamSessions.of(config))
    return "\n".join(lines) + "\n"


def render_route_reflector(
    node_id: int,
    address: ipaddress.IPv6Address,
    clients: ipaddress.IPv6Network,
    asn: int,
    password: str | None,
    log: Path | None = None,
    upstreams: UpstreamSessions | None = None,
    *,
    version: BirdVersion,
) -> str:
    """bird.conf for a route reflector: any host in `clients` (the underlay aggregate) may peer
    (dynamic BGP: no per-host lines), every path is kept and reflected (ADD-PATH). With
    `upstreams` it announces its own /64 to the top-of-rack routers like a host does."""
    return (
        "\n".join(
            [
                *_header(router_id(node_id), log),
                f"graceful restart wait {RR_RECOVERY_WAIT_S};",
                *_bgp_tables(),
                *_underlay("where source = RTS_BGP"),
                "protocol bgp hosts {",
                f"  local {address} as {asn}; neighbor range {clients} as {asn}; multihop;",
                '  rr client; dynamic name "host";',
                *_session_options(password, version),
                *_channels("all", next_hop_self=False),
                "}",
                *(_upstreams(asn, upstreams) if upstreams else []),
            ]
        )
        + "\n"
    )


def tor_protocol(port: str) -> str:
    """BIRD's name for a top-of-rack port's session template (BIRD names cannot hold '-')."""
    return "port_" + port.replace("-", "_")


def render_top_of_rack(
    node_id: int,
    asn: int,
    aggregate: ipaddress.IPv6Network,
    ports: list[str],
    log: Path | None = None,
) -> str:
    """bird.conf for a top-of-rack router: eBGP with whatever host answers on each host-facing
    port, over link-local addresses (`neighbor range fe80::/64 external`, dynamic: the ToR's
    config names ports, not host addresses or ASNs). It accepts only /64s inside the underlay
    aggregate, installs them in its kernel, and announces the aggregate alone back: hosts share
    one ASN, so another host's /64 would fail their AS-path loop check anyway."""
    lines = [
        *_header(router_id(node_id), log),
        *_underlay("where source = RTS_BGP"),
        f"protocol static aggregate {{ ipv6; route {aggregate} unreachable; }}",
        "template bgp host_port {",
        f"  local as {asn}; neighbor range fe80::/64 external;",
        # a host's BIRD restart (kill -9, `-R`) must not withdraw its /64 (ARCHITECTURE.md §6)
        f"  graceful restart on; graceful restart time {GR_TIME_S};",
        "  ipv6 {",
        f"    import where net ~ [{aggregate}{{64,64}}];",
        '    export where proto = "aggregate";',
        "  };",
        "}",
    ]
    for port in ports:
        name = tor_protocol(port)
        lines.append(
            f'protocol bgp {name} from host_port {{ interface "{port}"; dynamic name "{name}_"; }}'
        )
    return "\n".join(lines) + "\n"


def write_private(path: Path, text: str) -> None:
    """Write a config atomically, readable by its owner only (it may hold the BGP password)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


def check(path: Path) -> None:
    """Parse a config with `bird -p` (no daemon needed); raise with BIRD's own message."""
    try:
        done = subprocess.run(
            [BIRD, "-p", "-c", str(path)], capture_output=True, text=True, check=False, timeout=30
        )
    except FileNotFoundError:
        raise BirdConfigError(f"cannot check {path}: `{BIRD}` is not installed") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().removeprefix("bird: ")
        raise BirdConfigError(f"BIRD rejects {path}: {message}")


def mirror_names(tenant_id: int, fam: Family) -> tuple[str, str]:
    """BIRD's names for a tenant's mirror table of one family and for the kernel protocol that
    writes it into markers.mirror_table (the agent asks BIRD what that export refused)."""
    return f"mt{fam.letter}_{tenant_id}", f"m{fam.letter}_{tenant_id}"


def families_of(tenant: Tenant) -> Iterator[Family]:
    """The families a tenant has subnets in (only those get tables and protocols)."""
    for fam, subnets in zip(FAMILIES, (tenant.ipv4, tenant.ipv6), strict=True):
        if subnets:
            yield fam
