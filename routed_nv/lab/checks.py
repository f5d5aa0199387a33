"""Reachability checks run against a built lab (shared by `lab demo` and the kernel tests)."""

from __future__ import annotations

import math
import re
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from ipaddress import IPv6Address
from pathlib import Path

from routed_nv.lab.builder import Lab, LabError
from routed_nv.lab.topology import Topology, Workload


@dataclass(frozen=True)
class Ping:
    source: str
    target: str
    address: IPv6Address
    ok: bool
    detail: str


def _ping(lab: Lab, source: str, target: str) -> Ping:
    topology = lab.topology
    address = topology.host(target).uplink_address
    done = lab.exec(
        topology.host(source).namespace, ["ping", "-6", "-c1", "-W2", "-n", str(address)]
    )
    output = (done.stdout + done.stderr).strip()
    rtt = re.search(r"time=\S+ ms", output)
    detail = rtt[0] if rtt and done.returncode == 0 else (output.splitlines() or [""])[-1]
    return Ping(source, target, address, done.returncode == 0, detail)


def underlay_pings(lab: Lab) -> list[Ping]:
    """ping -6 from every host namespace to every other host's uplink address, in parallel."""
    pairs = [(a.name, b.name) for a in lab.topology.hosts for b in lab.topology.hosts if a != b]
    with ThreadPoolExecutor(max_workers=len(pairs) or 1) as pool:
        return list(pool.map(lambda pair: _ping(lab, *pair), pairs))


class ContinuousPing:
    """`ping -i INTERVAL` from a namespace until stop(), for "lost nothing while X happened".

    ping counts a request as lost when it is stopped before the reply came back, which under a
    loaded guest (round trips above the interval) would blame the stop for a loss. stop()
    therefore leaves out, as in flight, the requests after the last reply, but only as many as
    could have been sent within the slowest round trip seen: a real outage at the end loses more.
    """

    def __init__(self, lab: Lab, namespace: str, target: str, interval: float) -> None:
        self.interval = interval
        argv = ["ping", "-n", "-i", f"{interval:g}", "-W", "1", target]
        self.proc = lab.spawn(namespace, argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(0.3)  # the first replies are in before whatever the caller does next

    def stop(self) -> tuple[int, int]:
        """(sent, lost)."""
        self.proc.send_signal(signal.SIGINT)
        out, _ = self.proc.communicate(timeout=10)
        return ping_losses(out.decode(errors="replace"), self.interval)


def ping_losses(output: str, interval: float) -> tuple[int, int]:
    """(sent, lost) from the output of an interrupted `ping -n -i INTERVAL` (see ContinuousPing)."""
    summary = re.search(r"(\d+) packets transmitted", output)
    if summary is None:
        raise ValueError(f"not a ping summary: {output[-300:]!r}")
    sent = int(summary[1])
    replies = {int(seq) for seq in re.findall(r"icmp_seq=(\d+) ttl=", output)}
    slowest_ms = max((float(t) for t in re.findall(r"time=([\d.]+) ms", output)), default=0.0)
    tail = sent - max(replies, default=0)
    in_flight = tail if tail <= math.ceil(slowest_ms / 1000 / interval) + 1 else 0
    return sent, sent - len(replies) - in_flight


# Tenant traffic checks. A workload's ICMP echo-request counters (/proc/net/snmp, per netns) say
# who really answered: with overlapping tenants, 10.0.0.2 exists once per tenant, and only the
# counters tell that blue's packet reached blue2 and never red2.

_ECHO_COUNTERS = (
    'awk \'/^Icmp:/ {if (!h) {for (i=1;i<=NF;i++) c[$i]=i; h=1} else v4=$c["InEchos"]} '
    'END {printf "%s ", v4}\' /proc/net/snmp; '
    "awk '$1 == \"Icmp6InEchos\" {print $2}' /proc/net/snmp6"
)


@dataclass(frozen=True)
class Reach:
    """One same-tenant (source, destination, address family) probe and who received it."""

    source: str
    target: str
    address: str
    answered: bool  # the source got its replies
    target_echoes: int  # echo requests the intended workload received
    twin_echoes: int  # echo requests the other tenant's workload with this address received

    @property
    def ok(self) -> bool:
        return self.answered and self.target_echoes >= PROBES and self.twin_echoes == 0


PROBES = 2


def echo_counters(lab: Lab) -> dict[str, tuple[int, int]]:
    """(IPv4, IPv6) echo requests received so far, per workload."""
    workloads = lab.topology.workloads
    with ThreadPoolExecutor(max_workers=len(workloads)) as pool:
        outputs = pool.map(
            lambda w: lab.exec(w.namespace, ["sh", "-c", _ECHO_COUNTERS], check=True).stdout,
            workloads,
        )
    return {
        w.name: tuple(int(v) for v in out.split())  # type: ignore[misc]
        for w, out in zip(workloads, outputs, strict=True)
    }


@dataclass(frozen=True)
class Probe:
    """Every source of one tenant pings `target` at one address family (0: IPv4, 1: IPv6);
    `twins` are the other tenants' workloads with the same address."""

    target: Workload
    family: int
    sources: tuple[Workload, ...]
    twins: tuple[Workload, ...]

    @property
    def address(self) -> str:
        return str(self.target.ipv6 if self.family else self.target.ipv4)

    @property
    def watched(self) -> frozenset[str]:
        return frozenset(w.name for w in (self.target, *self.twins))


def probe_rounds(topology: Topology) -> list[list[Probe]]:
    """The tenant matrix's probes, grouped into rounds that run at once. Within a round, no
    workload's counter of one family belongs to two probes (as target or twin): each counter's
    change is then one probe's alone, as when the probes ran one after another."""
    rounds: list[list[Probe]] = []
    for target in topology.workloads:
        twins = tuple(
            w
            for w in topology.workloads
            if w.tenant != target.tenant and (w.ipv4 == target.ipv4 or w.ipv6 == target.ipv6)
        )
        sources = tuple(
            w for w in topology.workloads if w.tenant == target.tenant and w.host != target.host
        )
        for family in (0, 1):
            probe = Probe(target, family, sources, twins)
            free = (
                r
                for r in rounds
                if not any(p.family == family and p.watched & probe.watched for p in r)
            )
            round_ = next(free, None)
            if round_ is None:
                round_ = []
                rounds.append(round_)
            round_.append(probe)
    return rounds


def _answered(lab: Lab, source: Workload, address: str) -> bool:
    argv = ["ping", "-c", str(PROBES), "-i", "0.2", "-W", "2", address]
    return lab.exec(source.namespace, argv).returncode == 0


def tenant_matrix(lab: Lab) -> list[Reach]:
    """Every same-tenant pair on different hosts, IPv4 and IPv6, with receive-side proof. The
    pings of a round (probe_rounds) run concurrently; results come in topology order."""
    found: dict[tuple[str, int], list[Reach]] = {}
    for round_ in probe_rounds(lab.topology):
        pairs = [(p, s) for p in round_ for s in p.sources]
        before = echo_counters(lab)
        with ThreadPoolExecutor(max_workers=len(pairs) or 1) as pool:
            answered = list(pool.map(lambda pair: _answered(lab, pair[1], pair[0].address), pairs))
        after = echo_counters(lab)
        for probe in round_:
            family, name = probe.family, probe.target.name
            got = after[name][family] - before[name][family]
            twin = sum(after[t.name][family] - before[t.name][family] for t in probe.twins)
            # every source sent PROBES: the target must have seen all of them
            found[name, family] = [
                Reach(s.name, name, probe.address, ok, got // max(len(probe.sources), 1), twin)
                for (p, s), ok in zip(pairs, answered, strict=True)
                if p is probe
            ]
    return [r for w in lab.topology.workloads for f in (0, 1) for r in found[w.name, f]]


def plaintext_tunnel_pings(
    lab: Lab, namespace: str, local: IPv6Address, remote: IPv6Address, target: str = "10.0.0.1"
) -> None:
    """3 pings to `target` as IPv4-in-IPv6 from `namespace` (a host, address `local`) straight
    to `remote`, a tenant outer address, outside any SA: what anyone on the underlay can send."""
    setup = (
        f"ip link add inject type ip6tnl mode any local {local} remote {remote} && "
        f"ip link set inject up && ip addr add 10.99.0.2/32 dev inject && "
        f"ip route add {target}/32 dev inject"
    )
    lab.exec(namespace, ["sh", "-c", setup], check=True)
    try:
        lab.exec(namespace, ["ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", "10.99.0.2", target])
    finally:
        lab.exec(namespace, ["ip", "link", "del", "inject"])


def decap_drops(lab: Lab, namespace: str) -> int:
    """Packets a host's decap rule dropped: IP-in-IPv6 that no SA of the tenant decrypted."""
    argv = ["ip6tables-legacy", "-t", "raw", "-L", "RNV-DECAP", "-v", "-x", "-n"]
    out = lab.exec(namespace, argv, check=True).stdout
    line = next(x for x in out.splitlines() if "pol none" in x and "DROP" in x)
    return int(line.split()[0])


# What crosses the underlay, from a capture on the underlay router.

_ESP = re.compile(r"ESP\(spi=0x([0-9a-f]+),")
_IP6 = re.compile(r"\bIP6 ([0-9a-f:]+?)(?:\.(\d+))? > ([0-9a-f:]+?)(?:\.(\d+))?: (.*)$")
IKE_PORTS = frozenset({500, 4500})
BGP_PORT = 179


@dataclass
class WireReport:
    esp_spis: set[int]
    esp_packets: int
    link_local: int  # ND/MLD between the router and one host: never leaves that link
    leaks: list[str]  # anything between hosts that is not ESP, and any IPv4 or ARP at all
    # the control plane, by protocol: IKE between hosts, BGP with a route reflector or the ToR
    control: Counter[str] = field(default_factory=Counter)


def _control(src_port: int | None, dst_port: int | None, between_hosts: bool, rest: str) -> str:
    """'ike' or 'bgp' when the packet is routed_nv's control plane, else ''. Hosts never speak
    BGP to each other (only to route reflectors and their ToR): BGP between hosts is a leak."""
    ports = {src_port, dst_port}
    if ports <= IKE_PORTS and rest.startswith(("isakmp", "NONESP-encap")) and between_hosts:
        return "ike"
    if BGP_PORT in ports and rest.startswith("Flags") and not between_hosts:
        return "bgp"
    return ""


def read_capture(text: str, topology: Topology) -> WireReport:
    report = WireReport(set(), 0, 0, [])
    hosts = [h.prefix for h in topology.hosts]
    for line in text.splitlines():
        m = _IP6.search(line)
        if m is None:
            if line.strip():
                report.leaks.append(line)  # ARP, IPv4 or anything else that is not IPv6
            continue
        src, dst, rest = IPv6Address(m[1]), IPv6Address(m[3]), m[5]
        if src.is_link_local or dst.is_link_local or dst.is_multicast:
            report.link_local += 1
            continue
        if not (src in topology.aggregate and dst in topology.aggregate):
            report.leaks.append(line)
            continue
        esp = _ESP.search(rest)
        between_hosts = any(src in p for p in hosts) and any(dst in p for p in hosts)
        ports = (int(m[2]) if m[2] else None, int(m[4]) if m[4] else None)
        if esp and between_hosts:
            report.esp_packets += 1
            report.esp_spis.add(int(esp[1], 16))
        elif kind := _control(*ports, between_hosts, rest):
            report.control[kind] += 1
        else:
            report.leaks.append(line)
    return report


def reported_spi_problems(wire_spis: set[int], rows: list[dict[str, object]]) -> list[str]:
    """What differs between the ESP SPIs seen on the wire and the SA pairs that `routed-nv sa
    list -o json` reports on every host ("0x%08x" strings): each SPI one end sends with must be
    one the other end receives on, and the wire must carry exactly the reported ones (the tenant
    matrix uses every SA)."""
    spi_in = {int(str(r["spi_in"]), 16) for r in rows if r["spi_in"] is not None}
    spi_out = {int(str(r["spi_out"]), 16) for r in rows if r["spi_out"] is not None}
    checks = [
        (
            "rows without both SPIs",
            {str(r["child"]) for r in rows if None in (r["spi_in"], r["spi_out"])},
        ),
        ("sent with, received on by no host", spi_out - spi_in),
        ("received on, sent with by no host", spi_in - spi_out),
        ("on the wire, not reported", wire_spis - spi_in - spi_out),
        ("reported, not on the wire", (spi_in | spi_out) - wire_spis),
    ]
    return [
        f"{what}: {', '.join(v if isinstance(v, str) else f'0x{v:08x}' for v in sorted(values))}"
        for what, values in checks
        if values
    ]


CAPTURE_START_TIMEOUT_S = 10.0


def start_capture(lab: Lab, argv: list[str], workdir: Path) -> subprocess.Popen[bytes]:
    """tcpdump (argv) on the underlay router, once it captures: it opens its socket after it
    started, and says so ("listening on") on stderr."""
    stderr = workdir / "tcpdump.err"
    with stderr.open("w") as err:
        capture = lab.spawn(lab.topology.router_namespace, argv, stderr=err)
    deadline = time.monotonic() + CAPTURE_START_TIMEOUT_S
    while "listening on" not in stderr.read_text():
        if capture.poll() is not None or time.monotonic() > deadline:
            raise LabError(f"tcpdump on the underlay router did not start: {stderr.read_text()}")
        time.sleep(0.05)
    return capture


@contextmanager
def underlay_capture(lab: Lab) -> Iterator[list[WireReport]]:
    """Capture everything the underlay router forwards while the block runs; the report is
    appended to the yielded list when the block ends."""
    with tempfile.TemporaryDirectory() as workdir:
        pcap = Path(workdir) / "underlay.pcap"
        # immediate mode: without it the packets still buffered when tcpdump stops are lost;
        # it gives each packet a 256 KiB ring slot unless the snap length is small, so the
        # default ring would hold 8 packets and drop most copies of a burst
        argv = ["tcpdump", "-i", "any", "-nn", "--immediate-mode", "-s", "1600", "-B", "16384"]
        capture = start_capture(lab, [*argv, "-U", "-w", str(pcap)], Path(workdir))
        reports: list[WireReport] = []
        try:
            yield reports
        finally:
            time.sleep(0.5)
            capture.send_signal(signal.SIGINT)
            capture.wait(timeout=10)
        text = subprocess.run(
            ["tcpdump", "-nn", "-r", str(pcap)], capture_output=True, text=True, check=True
        ).stdout
        reports.append(read_capture(text, lab.topology))
