"""Benchmark of the routing driver: N remote routes of one tenant in one host namespace, applied
by RoutingDriver over the real kernel, next to the `ip -batch` floor for the same routes.

    python -m routed_nv.bench.routing [--routes N ...] [--full]

For each N (half IPv4 /32, half IPv6 /128, via the tenant tunnel like the directory's routes):
first apply (the kernel has the tenant's links but none of the N routes), re-apply with nothing
to change (from the cache, then with resync = reading the kernel again), apply of a one-route
delta, removal of all N, and `ip -batch` adding the same N routes to an empty table (the
floor). The calculation of the desired state is timed apart: it is not the driver's. Runs inside
UML when this kernel lacks VRF/ip6tnl. Prints numbers only: UML speeds are not a machine's,
compare the columns.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from routed_nv.calc.routing import desired_routing
from routed_nv.config.model import Config
from routed_nv.lab import uml
from routed_nv.lab.builder import LabError, ip_batch
from routed_nv.model import markers
from routed_nv.model.directory import DirectoryView, PeerHost, RemoteRoute
from routed_nv.model.routing import DesiredRouting
from routed_nv.routing.driver import RoutingDriver, RoutingResult
from routed_nv.routing.netlink import NetlinkKernel

NETNS = "rnv-bench-routing"
TENANT = 100
FLOOR_TABLE = 999  # scratch table for the `ip -batch` floor
DEFAULT_SIZES = [1_000, 10_000]
FULL_SIZES = [1_000, 10_000, 100_000]
V4_SPACE = ipaddress.IPv4Network("10.64.0.0/10")
V6_SPACE = ipaddress.IPv6Network("fd11::/64")
PEER = PeerHost("host2", 2, ipaddress.IPv6Network("2001:db8:0:2::/64"))


@dataclass
class Row:
    n: int
    calc: float
    first: float
    again: float
    resync: float
    delta: float
    remove: float
    floor: float


def _config() -> Config:
    return Config.model_validate(
        {
            "host": {
                "name": "host1",
                "id": 1,
                "underlay_prefix": "2001:db8:0:1::/64",
                "underlay_aggregate": "2001:db8::/48",
                "uplink": "eth0",
            },
            "tenants": {"blue": {"id": TENANT}},
            "endpoints": {},
            "peers": {"host2": {"id": PEER.id, "underlay_prefix": str(PEER.underlay_prefix)}},
        }
    )


def _view(n: int) -> DirectoryView:
    """n remote routes: the first half IPv4 /32s, the rest IPv6 /128s."""
    half = n // 2
    v4 = (ipaddress.ip_network(f"{V4_SPACE[i + 1]}/32") for i in range(half))
    v6 = (ipaddress.ip_network(f"{V6_SPACE[i + 1]}/128") for i in range(n - half))
    return DirectoryView(frozenset(RemoteRoute(TENANT, p, PEER) for gen in (v4, v6) for p in gen))


def _floor_lines(desired: DesiredRouting) -> list[str]:
    """The same remote routes, written by `ip` into an empty table."""
    lines = []
    for r in desired.routes:
        if r.proto == markers.RTPROT_REMOTE:
            via = f"via inet6 {r.via}" if r.dst.version == 4 else f"via {r.via}"
            lines.append(
                f"route add {r.dst} {via} dev {r.dev} onlink table {FLOOR_TABLE} "
                f"proto {r.proto} metric {r.metric}"
            )
    return lines


def _timed(action: Callable[[], RoutingResult]) -> float:
    start = time.monotonic()
    result = action()
    seconds = time.monotonic() - start
    if not result.ok:
        raise RuntimeError(f"apply failed: {result.errors[-3:]}")
    return seconds


def measure(n: int) -> Row:
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    try:
        config = _config()
        driver = RoutingDriver(NetlinkKernel, host_netns=NETNS)
        # the tenant's links, addresses and sysctls first: the rows are about routes
        if not driver.reconcile(desired_routing(config, DirectoryView(frozenset()))).ok:
            raise RuntimeError("cannot build the tenant")
        start = time.monotonic()
        desired = desired_routing(config, _view(n))
        calc = time.monotonic() - start
        first = _timed(partial(driver.reconcile, desired))
        again = _timed(partial(driver.reconcile, desired))
        resync = _timed(partial(driver.reconcile, desired, resync=True))
        lines = _floor_lines(desired)
        del desired  # one desired state at a time
        one_more = desired_routing(config, _view(n + 1))
        delta = _timed(partial(driver.reconcile, one_more))
        del one_more
        remove = _timed(partial(driver.reconcile, desired_routing(config, _view(0))))
        return Row(n, calc, first, again, resync, delta, remove, _floor(lines))
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], check=False)


def _floor(lines: list[str]) -> float:
    """Seconds for `ip -batch` to add the routes; NaN when it cannot (in UML, 100,000 routes can
    exhaust the host's vm.max_map_count: "UML ran out of memory on the host side")."""
    start = time.monotonic()
    try:
        ip_batch(NETNS, lines)
    except LabError as exc:
        print(f"ip -batch floor for {len(lines)} routes failed: {exc}", file=sys.stderr)
        return math.nan
    return time.monotonic() - start


def report(sizes: list[int]) -> None:
    """One row per size, printed as soon as it is measured."""
    print("seconds; apply = RoutingDriver.apply alone, calc = desired_routing for the N routes")
    header = ("N", "calc", "apply", "re-apply", "+resync", "1-route delta", "remove N", "ip -batch")
    print("".join(f"{h:>14}" for h in header), flush=True)
    for n in sizes:
        r = measure(n)
        values = (r.calc, r.first, r.again, r.resync, r.delta, r.remove, r.floor)
        print(f"{r.n:>14}" + "".join(f"{v:>14.3f}" for v in values), flush=True)


PROG = "routed-nv bench routing"


def main(argv: list[str] | None = None) -> int:
    """`argv`: the options (default: this process's); `routed-nv bench routing` passes its own."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, nargs="+", metavar="N", help="route counts")
    parser.add_argument("--full", action="store_true", help="1,000, 10,000 and 100,000 routes")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if uml.needs_uml():
        command = [sys.executable, "-m", "routed_nv.bench.routing", *argv]
        return uml.run_in_uml(command, cwd=Path.cwd(), mem="2G", timeout=1800)
    sizes = args.routes or (FULL_SIZES if args.full else DEFAULT_SIZES)
    report(sizes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
