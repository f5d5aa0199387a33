"""Benchmark of the BGP directory: publish N endpoints on host1, time until host2's mirror table
has them all (and until a withdrawal is gone), BIRD's memory, and the `ip -batch` floor of
writing the same routes straight into a kernel table, side by side in one run.

    python -m routed_nv.directory.bench [--quick]

Runs in the lab (3 hosts, 2 route reflectors, BIRD everywhere), inside UML when this kernel
lacks what the lab needs. Prints numbers only: UML speeds are not a machine's, compare columns.
"""

from __future__ import annotations

import argparse
import ipaddress
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from routed_nv import markers
from routed_nv.directory.birdc import BirdClient
from routed_nv.directory.netlink_watch import MirrorWatch
from routed_nv.lab import uml
from routed_nv.lab.bird import LabBird, bgp_address, with_directory
from routed_nv.lab.builder import Lab, ip_batch
from routed_nv.lab.datapath import host_config
from routed_nv.lab.topology import UPLINK, directory_topology

TENANT = 100
FLOOR_TABLE = 999  # scratch table on host2 for the `ip -batch` floor
QUICK = {1: 10, 1000: 3, 10000: 1}
FULL = {1: 30, 1000: 10, 10000: 3, 100000: 1}
TIMEOUT_S = 300.0
SPACE = ipaddress.IPv4Network("10.64.0.0/10")  # outside the lab's workloads


@dataclass
class Row:
    n: int
    publish: list[float]
    withdraw: list[float]
    floor: list[float]
    host_memory: int
    rr_memory: int


def _until(watch: MirrorWatch, count: int) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while len(watch) != count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"mirror table has {len(watch)} routes, expected {count}")
        watch.wait(deadline - time.monotonic())


def _lines(n: int, verb: str, what: str) -> list[str]:
    return [f"route {verb} {SPACE[i + 1]}/32 {what}" for i in range(n)]


def measure(lab: Lab, birds: LabBird, watch: MirrorWatch, n: int, reps: int) -> Row:
    host1, host2 = lab.topology.hosts[0], lab.topology.hosts[1]
    publish = f"dev wl-blue1 table {markers.publish_table(TENANT)} proto 230"
    row = Row(n, [], [], [], 0, 0)
    for rep in range(reps):
        start = time.monotonic()
        ip_batch(host1.namespace, _lines(n, "add", publish))
        _until(watch, n)
        row.publish.append(time.monotonic() - start)
        if rep == 0:
            with BirdClient(birds.node(host2.name).socket) as bird:
                row.host_memory = bird.memory()
            with BirdClient(birds.node("rr1").socket) as bird:
                row.rr_memory = bird.memory()
        start = time.monotonic()
        ip_batch(host1.namespace, _lines(n, "del", publish))
        _until(watch, 0)
        row.withdraw.append(time.monotonic() - start)
        direct = f"via inet6 {bgp_address(host1)} dev {UPLINK} onlink table {FLOOR_TABLE}"
        start = time.monotonic()
        ip_batch(host2.namespace, _lines(n, "add", direct))
        row.floor.append(time.monotonic() - start)
        ip_batch(host2.namespace, [f"route flush table {FLOOR_TABLE}"])
    return row


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0] * 1000:9.1f}"
    p99 = statistics.quantiles(values, n=100, method="inclusive")[98]
    return f"{statistics.median(values) * 1000:9.1f} /{p99 * 1000:9.1f}"


def report(rows: list[Row]) -> None:
    print("times in ms: p50 / p99 over repetitions (one value when run once)")
    print(
        f"{'N':>7} {'reps':>4}  {'publish->peer mirror':>20}  {'withdraw':>20}  "
        f"{'ip -batch floor':>20}  {'BIRD host2':>10}  {'BIRD rr1':>10}"
    )
    for r in rows:
        print(
            f"{r.n:>7} {len(r.publish):>4}  {_ms(r.publish):>20}  {_ms(r.withdraw):>20}  "
            f"{_ms(r.floor):>20}  {r.host_memory / 1024:>8.0f}kB  {r.rr_memory / 1024:>8.0f}kB"
        )


def run(sizes: dict[int, int]) -> None:
    topology = directory_topology()
    with Lab(topology) as lab, tempfile.TemporaryDirectory() as work:
        birds = LabBird(lab, Path(work))
        birds.add_host_addresses()
        birds.start_route_reflectors()
        birds.start_hosts(
            {
                h.name: with_directory(host_config(topology, h, Path(work) / "keys"), topology)
                for h in topology.hosts
            }
        )
        birds.wait_established()
        with MirrorWatch(topology.hosts[1].namespace) as watch:
            _until(watch, 0)
            report([measure(lab, birds, watch, n, reps) for n, reps in sizes.items()])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N up to 10,000, fewer repetitions")
    args = parser.parse_args()
    if uml.needs_uml():
        argv = [sys.executable, "-m", "routed_nv.directory.bench", *sys.argv[1:]]
        return uml.run_in_uml(argv, cwd=Path.cwd(), timeout=1800)
    run(QUICK if args.quick else FULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
