"""One benchmark run: every variant on the same lab topology, one after the other, in this
kernel (the caller has already moved into UML if this kernel lacks the datapath).

Variants never share a kernel state: each gets a freshly built Lab, torn down before the next,
so they run side by side on the same (guest) CPU with nothing else running.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from routed_nv.bench import aead, flood, measure, parse, state, tenants
from routed_nv.bench.bridged import Vxlan, VxlanIpsec, VxlanIpsecChacha
from routed_nv.bench.results import (
    Environment,
    Projection,
    Report,
    Scale,
    Variant,
    VariantResult,
)
from routed_nv.bench.variants import (
    Routed,
    RoutedChacha,
    RoutedIntegrity,
    RoutedNone,
    Setup,
    Underlay,
    bench_topology,
)
from routed_nv.lab import uml
from routed_nv.lab.builder import Lab, LabError

SETUPS: dict[Variant, type[Setup]] = {
    Variant.UNDERLAY: Underlay,
    Variant.ROUTED: Routed,
    Variant.VXLAN: Vxlan,
    Variant.VXLAN_IPSEC: VxlanIpsec,
}
# The other protection modes: throughput, latency and MTU at the smallest lab size only.
MODES: dict[Variant, type[Setup]] = {
    Variant.ROUTED_CHACHA: RoutedChacha,
    Variant.ROUTED_INTEGRITY: RoutedIntegrity,
    Variant.ROUTED_NONE: RoutedNone,
    Variant.VXLAN_IPSEC_CHACHA: VxlanIpsecChacha,
}
CLIENT, SERVER, MOVER = "blue1", "blue2", "blue2"  # blue1 on host1, blue2 on host2
MOVE_TO = "host3"
STATE_HOST = "host1"
STREAMS = (1, 4)
CRYPTO = (
    "rfc4106(gcm(aes))",
    "gcm(aes)",
    "ghash",
    "ctr(aes)",
    "aes",
    "rfc7539esp(chacha20,poly1305)",
    "chacha20",
    "poly1305",
    "rfc4543(gcm(aes))",
    "ecb(cipher_null)",
)
# State projections: tenants per host and workloads per tenant per host, every tenant on all
# hosts (dense) or on SPARSE_SPAN of them.
PROJECTION_HOSTS = (10, 100, 1000)
PROJECTION_TENANTS, PROJECTION_ENDPOINTS, SPARSE_SPAN = 10, 4, 20
LAB_TENANTS, LAB_WORKLOAD_HOSTS = 2, 3


@dataclass(frozen=True)
class Plan:
    name: str
    hosts: tuple[int, ...]  # lab sizes for the flood and state measurements
    seconds: int  # per iperf3 run
    repeats: int  # iperf3 runs per figure (the median is kept)
    transactions: int  # request/response round trips
    convergence_timeout: float  # seconds to wait for traffic after a move
    mode_streams: tuple[int, ...]  # TCP streams for the MODES variants
    openssl_seconds: int  # per `openssl speed` run


QUICK = Plan(
    "quick",
    (3, 10),
    seconds=2,
    repeats=1,
    transactions=300,
    convergence_timeout=10,
    mode_streams=(1,),
    openssl_seconds=1,
)
FULL = Plan(
    "full",
    (3, 10, 30),
    seconds=10,
    repeats=3,
    transactions=5000,
    convergence_timeout=30,
    mode_streams=STREAMS,
    openssl_seconds=3,
)


def lab_load(variant: Variant, hosts: int) -> state.HostLoad:
    """host1 of the bench lab: one workload per tenant, one per tenant on each of two other
    hosts. Every host is in every tenant's VXLAN flood list and has host-pair SAs; routed_nv
    keys a tenant only with the peers that have its workloads."""
    return state.HostLoad(
        tenants=LAB_TENANTS,
        endpoints=1,
        remote=LAB_WORKLOAD_HOSTS - 1,
        peers=LAB_WORKLOAD_HOSTS - 1 if variant is Variant.ROUTED else hosts - 1,
        peer_hosts=hosts - 1,
        addresses=1 if variant is Variant.UNDERLAY else 2,
    )


def projections() -> list[Projection]:
    rows = []
    for span in (None, SPARSE_SPAN):
        for hosts in PROJECTION_HOSTS:
            if span is not None and span >= hosts:
                continue  # the same as dense
            load = state.dense(hosts, PROJECTION_TENANTS, PROJECTION_ENDPOINTS, span)
            rows += [
                Projection(
                    variant=v,
                    hosts=hosts,
                    tenants=PROJECTION_TENANTS,
                    endpoints=PROJECTION_ENDPOINTS,
                    span=load.peers + 1,
                    state=state.per_host(v, load),
                )
                for v in SETUPS
            ]
    return rows


def _performance(
    setup: Setup,
    plan: Plan,
    result: VariantResult,
    log: Callable[[str], None],
    streams_tried: tuple[int, ...] = STREAMS,
) -> None:
    topology = setup.topology
    client, server = (next(w for w in topology.workloads if w.name == n) for n in (CLIENT, SERVER))
    address = setup.addresses(server)[0]
    measure.start_servers(setup.lab, server)
    for streams in streams_tried:
        tp = measure.throughput(setup.lab, client, address, streams, plan.seconds, plan.repeats)
        result.throughput.append(tp)
        log(f"  TCP {streams} stream(s): {tp.gbps:.3f} Gbit/s, {tp.cpu_s_per_gbit:.2f} CPU-s/Gbit")
    rr = result.latency = measure.latency(setup.lab, client, address, plan.transactions)
    log(f"  TCP RR {rr.size} B: p50 {rr.p50_us} us, p99 {rr.p99_us} us")
    result.mtu = measure.mtu(setup, client, server)
    log(
        f"  MTU {result.mtu.computed} (overhead {result.mtu.overhead} B): "
        f"fits={result.mtu.fits} next_fails={result.mtu.next_fails}"
    )
    if setup.move_method and setup.variant in SETUPS:  # a cipher does not change a move
        mover = next(w for w in topology.workloads if w.name == MOVER)
        moved = measure.convergence(setup, client, mover, MOVE_TO, plan.convergence_timeout)
        result.convergence = moved
        log(f"  moved {MOVER} to {MOVE_TO}: traffic after {moved.seconds} s {moved.note}")
    elif setup.variant is Variant.UNDERLAY:
        result.convergence_note = "n/a: a workload's address belongs to its host's prefix"
    else:
        result.convergence_note = "not measured: the cipher does not change a move"


def _variant_at(
    variant: Variant, hosts: int, plan: Plan, result: VariantResult, log: Callable[[str], None]
) -> None:
    with Lab(bench_topology(hosts)) as lab, tempfile.TemporaryDirectory() as workdir:
        setup = SETUPS[variant](lab, Path(workdir))
        setup.build()
        topology = lab.topology
        client, peer = (
            next(w for w in topology.workloads if w.name == n) for n in (CLIENT, SERVER)
        )
        failures = [f for w in topology.workloads_on(STATE_HOST) for f in measure.reach(setup, w)]
        if failures:
            raise LabError(f"{variant} with {hosts} hosts does not work: {'; '.join(failures)}")
        log(f"{variant}, {hosts} hosts: built and reachable")
        flooded = flood.flood_events(setup, client, peer)
        measured = measure.host_state(setup, topology.host(STATE_HOST).namespace)
        result.scale.append(
            Scale(
                hosts=hosts,
                flood=flooded,
                state=measured,
                formula=state.per_host(variant, lab_load(variant, hosts)),
            )
        )
        crossings = {e: getattr(flooded, e).crossings for e in ("resolve", "unknown", "boot")}
        log(f"  crossing hosts: {crossings}; {STATE_HOST} state: {measured}")
        if hosts == plan.hosts[0]:
            result.esp = parse.esp_algorithms(
                lab.exec(topology.host(STATE_HOST).namespace, ["ip", "xfrm", "state"]).stdout
            )
            _performance(setup, plan, result, log)


def _mode(variant: Variant, plan: Plan, result: VariantResult, log: Callable[[str], None]) -> None:
    with Lab(bench_topology(plan.hosts[0])) as lab, tempfile.TemporaryDirectory() as workdir:
        setup = MODES[variant](lab, Path(workdir))
        setup.build()
        client = next(w for w in lab.topology.workloads if w.name == CLIENT)
        failures = measure.reach(setup, client)
        if failures:
            raise LabError(f"{variant} does not work: {'; '.join(failures)}")
        result.esp = parse.esp_algorithms(
            lab.exec(lab.topology.host(STATE_HOST).namespace, ["ip", "xfrm", "state"]).stdout
        )
        log(f"{variant}: built and reachable, ESP {result.esp}")
        _performance(setup, plan, result, log, plan.mode_streams)


def environment(plan: Plan) -> Environment:
    iperf = subprocess.run(["iperf3", "--version"], capture_output=True, text=True, check=False)
    return Environment(
        kernel=platform.release(),
        uml=uml.in_guest(),
        cpus=os.cpu_count() or 1,
        cpu_model=parse.cpu_model(Path("/proc/cpuinfo").read_text()),
        crypto=parse.crypto_drivers(Path("/proc/crypto").read_text(), CRYPTO),
        iperf3=(iperf.stdout.splitlines() or ["unknown"])[0],
        mode=plan.name,
    )


@dataclass(frozen=True)
class Load:
    loadavg: str  # /proc/loadavg
    uml_processes: int  # `linux.uml` processes: other engineers' guests share the CPUs


def machine_load() -> Load:
    """Read on the machine itself (not in a guest), before the run starts."""
    count = 0
    for comm in Path("/proc").glob("[0-9]*/comm"):
        with contextlib.suppress(OSError):  # the process exited meanwhile
            count += comm.read_text().strip() == "linux.uml"
    return Load(Path("/proc/loadavg").read_text().strip(), count)


def machine(env: Environment, plan: Plan, load: Load) -> None:
    """What only the machine itself can say: its load when the run started, and its user-space
    AEAD speeds (measured after the run, so they compete with nothing of ours)."""
    env.host_load, env.uml_processes = load.loadavg, load.uml_processes
    env.openssl_version = aead.version()
    env.openssl = aead.speeds(plan.openssl_seconds)


def run(plan: Plan, log: Callable[[str], None]) -> Report:
    results = {v: VariantResult(variant=v) for v in Variant}
    for hosts in plan.hosts:
        for variant in SETUPS:
            _variant_at(variant, hosts, plan, results[variant], log)
    for variant in MODES:
        _mode(variant, plan, results[variant], log)
    log("routed_nv, 1 vs 4 tenants between two hosts")
    by_tenants = tenants.run(plan.seconds, plan.repeats, log)
    # /proc/crypto lists rfc4106(gcm(aes)) once an SA has instantiated it: read it last.
    return Report(
        environment=environment(plan),
        variants=list(results.values()),
        projections=projections(),
        tenants=by_tenants,
    )
