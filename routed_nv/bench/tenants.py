"""1 tenant vs 4 tenants between the same two hosts (routed_nv, AES-GCM): the same number of
TCP streams, either all inside one tenant (one SA per direction carries them all) or one per
tenant at once (one SA per direction and tenant). The kernel can spread separate SAs' crypto
over CPUs (with pcrypt, or as each flow's softirq runs where its packets arrive); whether it
does shows in the per-CPU busy fractions. A UML guest has one CPU: there the two runs can only
show that several SAs cost nothing extra."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from routed_nv.bench import measure, parse
from routed_nv.bench.results import TenantsRun
from routed_nv.bench.variants import Routed
from routed_nv.lab.builder import Lab, LabError
from routed_nv.lab.topology import Tenant, Topology, Workload, default_topology, one_each

TENANT_NAMES = ("blue", "red", "green", "gold")
CLIENT_HOST, SERVER_HOST = "host1", "host2"


def topology() -> Topology:
    """Two hosts, four tenants with the same (overlapping) subnets, one workload per tenant on
    each host."""
    base = default_topology()
    hosts = tuple(h for h in base.hosts if h.name in (CLIENT_HOST, SERVER_HOST))
    subnet4, subnet6 = base.tenants[0].ipv4, base.tenants[0].ipv6
    tenants = tuple(
        Tenant(100 * (i + 1), name, subnet4, subnet6) for i, name in enumerate(TENANT_NAMES)
    )
    return Topology(base.aggregate, hosts, tenants, one_each(tenants, hosts))


def _stat() -> str:
    return Path("/proc/stat").read_text()


def _concurrent(
    setup: Routed, pairs: list[tuple[Workload, Workload]], streams: int, seconds: float
) -> TenantsRun:
    """One iperf3 client per pair, all at once, each with `streams` streams."""
    lab = setup.lab
    before = _stat()
    with ThreadPoolExecutor(max_workers=len(pairs)) as pool:
        results = list(
            pool.map(
                lambda p: measure.iperf(lab, p[0], setup.addresses(p[1])[0], streams, seconds),
                pairs,
            )
        )
    after = _stat()
    busy_jiffies = parse.proc_stat(after).busy - parse.proc_stat(before).busy
    gbit = sum(r.bytes for r in results) * 8 / 1e9
    return TenantsRun(
        tenants=len(pairs),
        streams=len(pairs) * streams,
        gbps=sum(r.bits_per_second for r in results) / 1e9,
        per_stream_gbps=[round(r.bits_per_second / 1e9, 4) for r in results],
        cpu_busy=parse.cpu_busy(before, after),
        cpu_s_per_gbit=busy_jiffies / os.sysconf("SC_CLK_TCK") / gbit if gbit else 0.0,
    )


def run(seconds: float, repeats: int, log: Callable[[str], None]) -> list[TenantsRun]:
    """[1 tenant x 4 streams, 4 tenants x 1 stream]: each the median of `repeats` runs."""
    with Lab(topology()) as lab, tempfile.TemporaryDirectory() as workdir:
        setup = Routed(lab, Path(workdir))
        setup.build()
        on = {(w.tenant, w.host): w for w in lab.topology.workloads}
        pairs = [(on[t.name, CLIENT_HOST], on[t.name, SERVER_HOST]) for t in lab.topology.tenants]
        failures = [f for client, _ in pairs for f in measure.reach(setup, client)]
        if failures:
            raise LabError(f"routed_nv with 4 tenants does not work: {'; '.join(failures)}")
        for _, server in pairs:
            measure.start_servers(lab, server)
        rows = []
        for chosen, streams in ((pairs[:1], len(pairs)), (pairs, 1)):
            runs = sorted(
                (_concurrent(setup, chosen, streams, seconds) for _ in range(repeats)),
                key=lambda r: r.gbps,
            )
            row = runs[len(runs) // 2]
            log(
                f"  {row.tenants} tenant(s) x {streams} stream(s): {row.gbps:.3f} Gbit/s "
                f"{row.per_stream_gbps}, CPU busy {row.cpu_busy}"
            )
            rows.append(row)
        return rows
