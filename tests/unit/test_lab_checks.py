"""What the underlay capture counts as ESP, control plane, link-local or a leak (tcpdump -nn -r
lines as the lab's capture on `-i any` prints them)."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from routed_nv.lab.builder import LabError
from routed_nv.lab.checks import (
    PROBES,
    ping_losses,
    probe_rounds,
    read_capture,
    start_capture,
    tenant_matrix,
)
from routed_nv.lab.topology import default_topology, directory_topology

ESP = (
    "16:02:11.123456 to-host1 In  IP6 2001:db8:0:1::1:64 > 2001:db8:0:2::1:64: "
    "ESP(spi=0x00640004,seq=0x1), length 120"
)
IKE = (
    "16:02:11.2 to-host1 In  IP6 2001:db8:0:1::1.500 > 2001:db8:0:2::1.500: "
    "isakmp 2.0 msgid 00000000: parent_sa ikev2_init[I]:"
)
BGP_TO_RR = (
    "16:02:11.3 to-host2 In  IP6 2001:db8:0:2::1.40123 > 2001:db8:0:11::1.179: "
    "Flags [P.], seq 1:20, ack 1, win 502, length 19: BGP"
)
BGP_BETWEEN_HOSTS = (
    "16:02:11.4 to-host2 In  IP6 2001:db8:0:2::1.40123 > 2001:db8:0:3::1.179: "
    "Flags [S], seq 1, win 64800, length 0"
)
ND = "16:02:11.5 to-host3 Out IP6 fe80::1 > ff02::1:ff00:2: ICMP6, neighbor solicitation"
PLAINTEXT = (
    "16:02:11.6 to-host1 In  IP6 2001:db8:0:1::1:64 > 2001:db8:0:2::1:64: "
    "IP 10.0.0.1 > 10.0.0.2: ICMP echo request, id 1, seq 1, length 64"
)
ARP = "16:02:11.7 to-host1 In  ARP, Request who-has 10.0.0.2 tell 10.0.0.1, length 28"


def test_esp_control_plane_and_link_local_are_not_leaks() -> None:
    report = read_capture("\n".join([ESP, IKE, BGP_TO_RR, ND]), directory_topology())
    assert (report.esp_packets, report.esp_spis) == (1, {0x00640004})
    assert dict(report.control) == {"ike": 1, "bgp": 1}
    assert report.link_local == 1
    assert report.leaks == []


def test_plaintext_arp_and_bgp_between_hosts_are_leaks() -> None:
    report = read_capture("\n".join([PLAINTEXT, ARP, BGP_BETWEEN_HOSTS]), directory_topology())
    assert report.leaks == [PLAINTEXT, ARP, BGP_BETWEEN_HOSTS]
    assert (report.esp_packets, sum(report.control.values())) == (0, 0)


def test_esp_to_a_route_reflector_is_a_leak() -> None:
    # only hosts carry tenant traffic: ESP to anything else is not routed_nv's datapath
    to_rr = ESP.replace("2001:db8:0:2::1:64", "2001:db8:0:11::1")
    assert read_capture(to_rr, directory_topology()).leaks == [to_rr]


def _ping_output(replied: list[int], sent: int, ms: float = 0.3) -> str:
    lines = [f"64 bytes from 10.0.0.2: icmp_seq={n} ttl=63 time={ms} ms" for n in replied]
    lines += ["", "--- 10.0.0.2 ping statistics ---"]
    lines += [f"{sent} packets transmitted, {len(replied)} received, 0% packet loss, time 99ms"]
    return "\n".join(lines)


def test_a_request_in_flight_when_ping_stops_is_not_lost() -> None:
    # 120 ms round trips at a 50 ms interval: up to 4 requests can be out when SIGINT comes
    assert ping_losses(_ping_output(list(range(1, 98)), 100, ms=120.0), 0.05) == (100, 0)


def test_gaps_are_lost_and_so_is_a_tail_longer_than_the_slowest_round_trip() -> None:
    gap = [n for n in range(1, 101) if not 40 <= n < 45]
    assert ping_losses(_ping_output(gap, 100), 0.05) == (100, 5)
    # traffic that never came back: 60 requests after the last reply, round trips of 0.3 ms
    assert ping_losses(_ping_output(list(range(1, 41)), 100), 0.05) == (100, 60)
    assert ping_losses(_ping_output([], 20), 0.05) == (20, 20)


def test_duplicates_and_errors_are_not_replies() -> None:
    out = _ping_output([1, 2, 3], 5).replace(
        "icmp_seq=3 ttl=63 time=0.3 ms", "icmp_seq=2 ttl=63 time=0.3 ms (DUP!)"
    )
    out = "From 10.0.0.254 icmp_seq=4 Destination Host Unreachable\n" + out
    assert ping_losses(out, 0.05) == (5, 3)


def test_output_without_a_summary_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a ping summary"):
        ping_losses("ping: connect: Network is unreachable", 0.05)


class FakeNetwork:
    """A Lab whose exec answers the tenant matrix: a ping from a workload reaches its tenant's
    workload with that address (or the one `leaks` names instead), and each workload's echo
    counters count what reached it. Records the counter reads and the most pings at once."""

    def __init__(self, leaks: dict[tuple[str, str], str] | None = None) -> None:
        self.topology = default_topology()
        self.leaks = leaks or {}  # (source, address) -> the workload that receives it instead
        self.echoes = {w.namespace: [0, 0] for w in self.topology.workloads}
        self._namespaces = {w.name: w.namespace for w in self.topology.workloads}
        self.counter_reads = 0
        self.running = self.most_running = 0
        self._lock = threading.Lock()

    def exec(self, namespace: str, argv: list[str], check: bool = False) -> CompletedProcess[str]:
        if argv[0] == "sh":  # echo_counters
            with self._lock:
                self.counter_reads += 1
                v4, v6 = self.echoes[namespace]
            return CompletedProcess(argv, 0, f"{v4} \n{v6}\n", "")
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        time.sleep(0.01)  # long enough to overlap with the others of its round
        source = next(w for w in self.topology.workloads if w.namespace == namespace)
        address = argv[-1]
        family = 1 if ":" in address else 0
        target = next(
            w
            for w in self.topology.workloads
            if w.tenant == source.tenant and address in (str(w.ipv4), str(w.ipv6))
        )
        receiver = self.leaks.get((source.name, address), target.name)
        with self._lock:
            self.echoes[self._namespaces[receiver]][family] += PROBES
            self.running -= 1
        return CompletedProcess(argv, 0 if receiver == target.name else 1, "", "")


def test_each_round_watches_a_counter_for_one_probe_only() -> None:
    rounds = probe_rounds(default_topology())
    # blue's targets with their red twins cannot share a round: two rounds, IPv4 and IPv6 in both
    assert len(rounds) == 2
    for round_ in rounds:
        for family in (0, 1):
            watched = [w for p in round_ if p.family == family for w in p.watched]
            assert len(watched) == len(set(watched)), watched
    probes = [(p.target.name, p.family) for r in rounds for p in r]
    assert sorted(probes) == sorted(
        (w.name, f) for w in default_topology().workloads for f in (0, 1)
    )


def test_the_matrix_runs_each_round_at_once_and_every_pair_passes() -> None:
    lab = FakeNetwork()
    reaches = tenant_matrix(lab)  # type: ignore[arg-type]
    assert len(reaches) == 24 and all(r.ok for r in reaches), reaches
    # in topology order: blue1's IPv4 probes first (from blue2 and blue3)
    assert [(r.source, r.target, r.address) for r in reaches[:3]] == [
        ("blue2", "blue1", "10.0.0.1"),
        ("blue3", "blue1", "10.0.0.1"),
        ("blue2", "blue1", "fd10::1"),
    ]
    workloads = len(lab.topology.workloads)
    assert lab.counter_reads == 2 * 2 * workloads  # before and after each of the two rounds
    assert lab.most_running > 2  # one at a time, serially, it was at most the two sources


def test_a_probe_that_reaches_the_other_tenant_fails_its_targets_pairs_alone() -> None:
    lab = FakeNetwork(leaks={("blue3", "10.0.0.2"): "red2"})
    bad = [r for r in tenant_matrix(lab) if not r.ok]  # type: ignore[arg-type]
    # the leak shows at blue2's IPv4 probes: blue3 got no answer; blue2 saw only blue1's
    # requests, red2 saw blue3's
    assert [(r.source, r.target, r.address, r.answered) for r in bad] == [
        ("blue1", "blue2", "10.0.0.2", True),
        ("blue3", "blue2", "10.0.0.2", False),
    ]
    assert {(r.target_echoes, r.twin_echoes) for r in bad} == {(PROBES // 2, PROBES)}


class LocalLab:
    """Lab.spawn without namespaces: the capture tests run a shell standing in for tcpdump."""

    def __init__(self) -> None:
        self.topology = default_topology()
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, namespace: str, argv: list[str], **popen: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, **popen)
        self.procs.append(proc)
        return proc


def test_a_capture_is_used_once_tcpdump_says_it_listens(tmp_path: Path) -> None:
    lab = LocalLab()
    says = "sleep 0.3; echo 'listening on any' >&2; exec sleep 30"
    started = time.monotonic()
    capture = start_capture(lab, ["sh", "-c", says], tmp_path)  # type: ignore[arg-type]
    try:
        assert time.monotonic() - started >= 0.3 and capture.poll() is None
    finally:
        capture.kill()
        capture.wait()


def test_a_capture_that_ends_without_listening_is_an_error(tmp_path: Path) -> None:
    lab = LocalLab()
    with pytest.raises(LabError, match="did not start: tcpdump: any: No such device"):
        start_capture(lab, ["sh", "-c", "echo 'tcpdump: any: No such device' >&2"], tmp_path)  # type: ignore[arg-type]
    for proc in lab.procs:
        proc.wait()
