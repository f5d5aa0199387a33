"""Measurements between two workloads on different hosts of a set-up variant."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from routed_nv.bench import overhead, parse, tools
from routed_nv.bench.results import Convergence, HostState, Latency, Mtu, Throughput
from routed_nv.bench.variants import Setup
from routed_nv.lab.builder import Lab, LabError, ip_batch
from routed_nv.lab.topology import Workload

IPERF_PORT = 5201
RR_PORT = 7000
RR_SIZE = 64  # bytes per request and response: a small RPC
IPV6_HEADER, ICMP_HEADER = 40, 8
READY_TIMEOUT_S = 10.0
PROBE_INTERVAL = "0.01"  # convergence probes: 100 per second


T = TypeVar("T")


def _wait_listening(lab: Lab, workload: Workload, port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if lab.exec(workload.namespace, ["ss", "-Hltn", f"sport = :{port}"]).stdout.strip():
            return
        time.sleep(0.05)
    raise LabError(f"{workload.name}: nothing listens on port {port}")


def start_servers(lab: Lab, server: Workload) -> None:
    """iperf3 and the request/response echo server in the server workload (stopped by the Lab)."""
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    lab.spawn(server.namespace, ["iperf3", "-s", "-p", str(IPERF_PORT)], **quiet)
    lab.spawn(
        server.namespace,
        tools.command("rr-serve", "--port", str(RR_PORT), "--size", str(RR_SIZE)),
        **quiet,
    )
    _wait_listening(lab, server, IPERF_PORT)
    _wait_listening(lab, server, RR_PORT)


def _cpu() -> parse.CpuTimes:
    return parse.proc_stat(Path("/proc/stat").read_text())


def iperf(lab: Lab, client: Workload, address: str, streams: int, seconds: float) -> parse.Iperf:
    """One iperf3 TCP run from the client to the server at address."""
    argv = ["iperf3", "-c", address, "-p", str(IPERF_PORT), "-t", str(seconds)]
    done = lab.exec(client.namespace, [*argv, "-P", str(streams), "-J"], timeout=seconds + 30)
    return parse.iperf3(done.stdout)


def throughput(
    lab: Lab, client: Workload, address: str, streams: int, seconds: float, repeats: int
) -> Throughput:
    """iperf3 TCP, client to server; the median of `repeats` runs by throughput."""
    runs = []
    for _ in range(repeats):
        before = _cpu()
        result = iperf(lab, client, address, streams, seconds)
        after = _cpu()
        busy = (after.busy - before.busy) / os.sysconf("SC_CLK_TCK")
        gbit = result.bytes * 8 / 1e9
        runs.append(
            Throughput(
                streams=streams,
                gbps=result.bits_per_second / 1e9,
                retransmits=result.retransmits,
                cpu_busy=(after.busy - before.busy) / max(after.total - before.total, 1),
                cpu_s_per_gbit=busy / gbit if gbit else 0.0,
            )
        )
    runs.sort(key=lambda r: r.gbps)
    return runs[len(runs) // 2]


def latency(lab: Lab, client: Workload, address: str, transactions: int) -> Latency:
    done = lab.exec(
        client.namespace,
        tools.command(
            "rr-client",
            address,
            "--port",
            str(RR_PORT),
            "--size",
            str(RR_SIZE),
            "--count",
            str(transactions),
        ),
        check=True,
        timeout=120,
    )
    rtts = json.loads(done.stdout)
    return Latency(
        transactions=len(rtts),
        size=RR_SIZE,
        p50_us=round(parse.percentile(rtts, 50), 1),
        p99_us=round(parse.percentile(rtts, 99), 1),
    )


def _df_ping(lab: Lab, client: Workload, address: str, size: int) -> bool:
    payload = size - IPV6_HEADER - ICMP_HEADER
    argv = ["ping", "-6", "-n", "-M", "do", "-c", "1", "-W", "1", "-s", str(payload), address]
    return lab.exec(client.namespace, argv).returncode == 0


def _fragments(lab: Lab, namespaces: list[str]) -> int:
    """IPv6 fragments the hosts created (the underlay is IPv6: outer packets are IPv6)."""
    total = 0
    for ns in namespaces:
        for line in lab.exec(ns, ["cat", "/proc/net/snmp6"], check=True).stdout.splitlines():
            key, _, value = line.partition(" ")
            total += int(value) if key == "Ip6FragCreates" else 0
    return total


def _set_mtu(devices: list[tuple[str, str]], mtu: int) -> None:
    for ns, dev in devices:
        ip_batch(ns, [f"link set {dev} mtu {mtu}"])


def mtu(setup: Setup, client: Workload, server: Workload) -> Mtu:
    """A DF ping of exactly the computed MTU arrives unfragmented; with every device on the
    path raised by one byte, a DF ping one byte larger does not (or only in fragments)."""
    lab, address = setup.lab, setup.addresses(server)[0]
    hosts = [setup.topology.host(w.host).namespace for w in (client, server)]
    computed = setup.mtu

    def arrives_whole(size: int) -> bool:
        before = _fragments(lab, hosts)
        return _df_ping(lab, client, address, size) and _fragments(lab, hosts) == before

    fits = arrives_whole(computed)
    devices = setup.path_devices(client, server)
    _set_mtu(devices, computed + 1)
    try:
        next_fails = not arrives_whole(computed + 1)
    finally:
        _set_mtu(devices, computed)
    return Mtu(
        computed=computed,
        overhead=overhead.overhead(setup.variant),
        fits=fits,
        next_fails=next_fails,
    )


def _xfrm_no_states(lab: Lab, namespace: str) -> int:
    """ESP packets the host received for an SA it does not have."""
    for line in lab.exec(namespace, ["cat", "/proc/net/xfrm_stat"], check=True).stdout.splitlines():
        key, _, value = line.partition("\t")
        if key.strip() == "XfrmInNoStates":
            return int(value)
    return 0


def convergence(
    setup: Setup, client: Workload, mover: Workload, host: str, timeout: float
) -> Convergence:
    """Ping the moving workload 100 times a second while it moves; converged at the first
    answer to a probe sent after its port left the old host."""
    lab, address = setup.lab, setup.addresses(mover)[0]
    target = setup.topology.host(host).namespace
    log = setup.workdir / "convergence.log"

    def first_after(t: float) -> float | None:
        return parse.first_reply_sent_after(parse.ping_replies(log.read_text()), t)

    with log.open("w") as out:
        probe = lab.spawn(
            client.namespace,
            ["ping", "-6", "-D", "-n", "-i", PROBE_INTERVAL, address],
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
        try:
            if _wait_for(lambda: first_after(0), READY_TIMEOUT_S) is None:
                raise LabError(f"{mover.name} did not answer before the move")
            no_states = _xfrm_no_states(lab, target)
            start = time.time()
            steps = setup.move(mover, host)
            first = _wait_for(lambda: first_after(steps.broken), timeout)
        finally:
            probe.send_signal(signal.SIGINT)
            probe.wait(timeout=5)
    note = ""
    if first is None:
        note = f"no answer within {timeout:g} s"
        dropped = _xfrm_no_states(lab, target) - no_states
        if dropped:
            note += (
                f"; the new host dropped {dropped} ESP packets for SAs it has not (XfrmInNoStates)"
            )
    path = [t for h, t in steps.steps.items() if h in (host, client.host)]
    ready = max(path, default=steps.broken)
    return Convergence(
        seconds=None if first is None else round(first - start, 4),
        path_seconds=round(ready - start, 4),
        datapath_seconds=None if first is None else round(first - ready, 4),
        move_seconds=round(max(steps.steps.values(), default=steps.broken) - start, 4),
        method=setup.move_method,
        note=note,
    )


def _wait_for(check: Callable[[], T | None], timeout: float) -> T | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value is not None:
            return value
        time.sleep(0.02)
    return None


def reach(setup: Setup, source: Workload) -> list[str]:
    """Ping every address of every same-tenant workload on another host; the failures."""
    targets = [
        address
        for w in setup.topology.workloads
        if w.tenant == source.tenant and w.host != source.host
        for address in setup.addresses(w)
    ]
    argv = ["ping", "-n", "-c", "1", "-W", "2"]
    with ThreadPoolExecutor(max_workers=len(targets) or 1) as pool:
        codes = pool.map(lambda a: setup.lab.exec(source.namespace, [*argv, a]).returncode, targets)
    return [f"{source.name} -> {a}" for a, rc in zip(targets, codes, strict=True) if rc != 0]


def host_state(setup: Setup, namespace: str) -> HostState:
    lab = setup.lab
    routes = sum(
        len(
            lab.exec(
                namespace, ["ip", family, "route", "show", "table", "all", "proto", p], check=True
            ).stdout.splitlines()
        )
        for p in setup.route_protos
        for family in ("-4", "-6")
    )
    sas, policies = parse.xfrm_counts(
        lab.exec(namespace, ["ip", "xfrm", "state", "count"], check=True).stdout,
        lab.exec(namespace, ["ip", "xfrm", "policy", "count"], check=True).stdout,
    )
    fdb = parse.vxlan_fdb_entries(lab.exec(namespace, ["bridge", "fdb", "show"], check=True).stdout)
    return HostState(routes=routes, sas=sas, policies=policies, fdb=fdb)
