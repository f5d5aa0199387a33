"""One benchmark run: every variant on the same lab topology, one after the other, in this
kernel (the caller has already moved into UML if this kernel lacks the datapath).

Variants never share a kernel state: each gets a freshly built Lab, torn down before the next,
so they run side by side on the same (guest) CPU with nothing else running.
"""

from __future__ import annotations

import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from routed_nv.bench import flood, measure, parse, state
from routed_nv.bench.bridged import Vxlan, VxlanIpsec
from routed_nv.bench.results import (
    Environment,
    Projection,
    Report,
    Scale,
    Variant,
    VariantResult,
)
from routed_nv.bench.variants import Routed, Setup, Underlay, bench_topology
from routed_nv.lab import uml
from routed_nv.lab.builder import Lab, LabError

SETUPS: dict[Variant, type[Setup]] = {
    Variant.UNDERLAY: Underlay,
    Variant.ROUTED: Routed,
    Variant.VXLAN: Vxlan,
    Variant.VXLAN_IPSEC: VxlanIpsec,
}
CLIENT, SERVER, MOVER = "blue1", "blue2", "blue2"  # blue1 on host1, blue2 on host2
MOVE_TO = "host3"
STATE_HOST = "host1"
STREAMS = (1, 4)
CRYPTO = ("rfc4106(gcm(aes))", "gcm(aes)", "ghash", "ctr(aes)", "aes")
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


QUICK = Plan("quick", (3, 10), seconds=2, repeats=1, transactions=300, convergence_timeout=10)
FULL = Plan("full", (3, 10, 30), seconds=10, repeats=3, transactions=5000, convergence_timeout=30)


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
    setup: Setup, plan: Plan, result: VariantResult, log: Callable[[str], None]
) -> None:
    topology = setup.topology
    client, server = (next(w for w in topology.workloads if w.name == n) for n in (CLIENT, SERVER))
    address = setup.addresses(server)[0]
    measure.start_servers(setup.lab, server)
    for streams in STREAMS:
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
    if setup.move_method:
        mover = next(w for w in topology.workloads if w.name == MOVER)
        moved = measure.convergence(setup, client, mover, MOVE_TO, plan.convergence_timeout)
        result.convergence = moved
        log(f"  moved {MOVER} to {MOVE_TO}: traffic after {moved.seconds} s {moved.note}")
    else:
        result.convergence_note = "n/a: a workload's address belongs to its host's prefix"


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
            _performance(setup, plan, result, log)


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


def run(plan: Plan, log: Callable[[str], None]) -> Report:
    results = {v: VariantResult(variant=v) for v in SETUPS}
    for hosts in plan.hosts:
        for variant in SETUPS:
            _variant_at(variant, hosts, plan, results[variant], log)
    # /proc/crypto lists rfc4106(gcm(aes)) once an SA has instantiated it: read it last.
    return Report(
        environment=environment(plan), variants=list(results.values()), projections=projections()
    )
