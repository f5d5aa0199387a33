"""`routed-nv bench events`: agent CPU per directory event, at 1,000 to 100,000 remote routes.

A unit-level microbenchmark, on this host, no kernel needed: the real learn, agent loop,
calculation and routing driver over an in-memory kernel (netfilter, XFRM and IKE are stubs that
change nothing: their work does not grow with remote routes). One event is one mirror route
moving to another peer host, as BIRD writes it; its cost is the process CPU time from the route
event to the end of the agent's apply, in two ways:
- `full`: what every event cost before directory deltas (and what the periodic resync still
  costs): learn over every route, then the agent's full apply of the whole view;
- `delta`: the Learner applies the event, the agent applies its delta.
CPU time, not wall time: the numbers hold on a loaded machine too (no asserts on them: tests
never time anything).

`--memory`: bytes the agent holds per remote route, after the start, `delta` events and one
resync (which reads the in-memory kernel back as fresh objects, as a netlink dump does): traced
by tracemalloc, without the in-memory kernel's own copy; and the process's RSS growth over the
same steps, in a run of its own (tracemalloc's bookkeeping would count), less that copy.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import ipaddress
import json
import statistics
import sys
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

from routed_nv.agent.datapath import Datapath
from routed_nv.agent.events import EventLog
from routed_nv.agent.loop import Agent, Settings
from routed_nv.agent.notify import Notifier
from routed_nv.config.model import Config
from routed_nv.directory.learn import Learner, MirrorRoute, learn
from routed_nv.directory.netlink_watch import route_prefix
from routed_nv.esp.driver import XfrmPlan, XfrmResult
from routed_nv.esp.ike import IkePlan, IkeResult
from routed_nv.model import markers
from routed_nv.model.directory_source import Publish, SourceUpdate
from routed_nv.model.routing import Address, Link, NeighProxy, PolicyRule, Route
from routed_nv.netfilter.driver import NetfilterPlan, NetfilterResult
from routed_nv.routing.driver import RoutingDriver
from routed_nv.routing.kernel import KernelError, LinkState, RouteOp

SIZES = (1_000, 10_000, 100_000)
PEERS = 4
TENANT_ID = 100


class MemoryKernel:
    """One network namespace in memory: enough of routing.kernel.Kernel for the driver."""

    def __init__(self) -> None:
        self._links: dict[str, LinkState] = {}
        self._addresses: set[tuple[str, Any]] = set()
        self._routes: dict[tuple[int, Any, int], Route] = {}
        self._proxies: set[NeighProxy] = set()
        self._rules: set[PolicyRule] = set()
        self._sysctls: dict[str, str] = {}

    def links(self) -> list[LinkState]:
        return list(self._links.values())

    def add_link(self, link: Link) -> None:
        self._links[link.name] = LinkState(link.name, len(self._links) + 1, link.kind.value,
                                           link.mtu or 1500, True, link.master,
                                           link.vrf_table, link.tunnel)  # fmt: skip

    def set_link(self, name: str, mtu: int | None, master: str | None, up: bool) -> None:
        old = self._links[name]
        self._links[name] = dataclasses.replace(old, mtu=mtu or old.mtu, master=master, up=up)

    def delete_link(self, name: str) -> None:
        self._links.pop(name, None)

    def addresses(self) -> list[tuple[str, Any]]:
        return list(self._addresses)

    def add_address(self, address: Address) -> None:
        self._addresses.add((address.ifname, address.address))

    def delete_address(self, address: Address) -> None:
        self._addresses.discard((address.ifname, address.address))

    def routes(self, protos: set[int]) -> list[Route]:
        return [_parsed(r) for r in self._routes.values() if r.proto in protos]

    def write_routes(self, ops: Sequence[RouteOp]) -> list[KernelError | None]:
        for delete, route in ops:
            key = (route.table, route.dst, route.metric)
            if delete:
                self._routes.pop(key, None)
            else:
                self._routes[key] = _parsed(route)  # the kernel's copy, not the agent's object
        return [None] * len(ops)

    def neigh_proxies(self) -> list[NeighProxy]:
        return list(self._proxies)

    def add_neigh_proxy(self, proxy: NeighProxy) -> None:
        self._proxies.add(proxy)

    def delete_neigh_proxy(self, proxy: NeighProxy) -> None:
        self._proxies.discard(proxy)

    def rules(self) -> list[PolicyRule]:
        return list(self._rules)

    def add_rule(self, rule: PolicyRule) -> None:
        self._rules.add(rule)

    def delete_rule(self, rule: PolicyRule) -> None:
        self._rules.discard(rule)

    def read_sysctl(self, path: str) -> str | None:
        return self._sysctls.get(path)

    def write_sysctl(self, path: str, value: str) -> None:
        self._sysctls[path] = value

    def close(self) -> None:
        pass


def _parsed(route: Route) -> Route:
    """`route` made anew from its values, as a netlink dump gives it."""
    dst = type(route.dst)((int(route.dst.network_address), route.dst.prefixlen))
    via = ipaddress.ip_address(route.via.packed) if route.via is not None else None
    return dataclasses.replace(route, dst=dst, via=via)


# Netfilter, XFRM and IKE stand-ins: nothing to change.
class _Netfilter:
    def plan(self, desired: object) -> NetfilterPlan:
        return NetfilterPlan()

    def apply(self, plan: NetfilterPlan) -> NetfilterResult:
        return NetfilterResult()


class _Xfrm:
    def plan(self, desired: object) -> XfrmPlan:
        return XfrmPlan()

    def apply(self, plan: XfrmPlan) -> XfrmResult:
        return XfrmResult()


class _Ike:
    def plan(self, desired: object) -> IkePlan:
        return IkePlan()

    def apply(self, plan: IkePlan) -> IkeResult:
        return IkeResult()


class _Source:
    name = "bench"

    def __init__(self) -> None:
        self.publish: Publish | None = None

    def start(self, config: Config, publish: Publish) -> None:
        self.publish = publish

    def reload(self, config: Config) -> None:
        pass

    def stop(self) -> None:
        pass


def config() -> Config:
    return Config.model_validate(
        {
            "host": {"name": "host1", "id": 1, "underlay_prefix": "2001:db8:0:1::/64",
                     "underlay_aggregate": "2001:db8::/48", "uplink": "eth0"},
            "tenants": {"blue": {"id": TENANT_ID, "ipv4": ["10.0.0.0/8"]}},
            "endpoints": {"web": {"tenant": "blue", "addresses": ["10.0.0.1"],
                                  "interface": "tap0"}},
        }
    )  # fmt: skip


@functools.lru_cache(maxsize=PEERS)  # one object per next hop, as the watch has it
def hop(peer: int) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(f"2001:db8:0:{peer + 2:x}::1")


MIRROR_TABLE = markers.mirror_table(TENANT_ID)  # one int object, as the watch shares it


def mirror(i: int, peer: int) -> MirrorRoute:
    prefix = route_prefix(ipaddress.IPv4Address(0x0A000000 + 16 + i), 32)  # as the watch
    return MirrorRoute(MIRROR_TABLE, prefix, hop(peer), 0)


class Bench:
    """One agent with `routes` remote routes applied, and events to feed it."""

    def __init__(self, routes: int) -> None:
        self.config = config()
        self.routes = {i: mirror(i, i % PEERS) for i in range(routes)}
        self.kernel = MemoryKernel()
        self.kernel._links["tap0"] = LinkState("tap0", 999, "tun", 1500, True, None)
        datapath = Datapath(_Netfilter(), _Xfrm(), RoutingDriver(lambda ns: self.kernel), _Ike())  # type: ignore[arg-type]
        self.source = _Source()
        self.clock = 0.0
        self.agent = Agent(self.config, datapath, self.source, lambda: self.config,  # type: ignore[arg-type]
                           settings=Settings(min_interval_s=0, resync_interval_s=1e9),
                           log=EventLog(stream=_Null()), notifier=Notifier(""),
                           clock=lambda: self.clock)  # fmt: skip
        self.learner = Learner(self.config, self.routes.values())
        self.source.start(self.config, self.agent.publish)
        self._publish(SourceUpdate(self.learner.view, True))
        self._settle()
        self.n = 0

    def _publish(self, update: SourceUpdate) -> None:
        assert self.source.publish is not None
        self.source.publish(update)

    def _settle(self) -> None:
        self.clock += 1.0
        while self.agent.step() == 0:
            pass

    def _event(self) -> tuple[MirrorRoute, MirrorRoute]:
        """One route moves to the next peer host."""
        i = self.n % len(self.routes)
        self.n += 1
        old = self.routes[i]
        new = self.routes[i] = mirror(i, (int(old.next_hop.packed[7]) - 1) % PEERS)  # type: ignore[union-attr]
        return old, new

    def resync(self) -> None:
        """The agent's periodic resync: every route read back from the kernel."""
        self.clock += self.agent.settings.resync_interval_s + 1.0
        self._settle()

    def full(self) -> float:
        start = time.process_time()
        old, new = self._event()
        self.learner.update([(False, old), (True, new)])  # kept current for `delta` runs
        learned = learn(self.config, self.routes.values())
        self._publish(SourceUpdate(learned.view, True, rejected=learned.rejected))
        self._settle()
        return time.process_time() - start

    def delta(self) -> float:
        start = time.process_time()
        old, new = self._event()
        step = self.learner.update([(False, old), (True, new)])
        learned = self.learner.learned()
        self._publish(SourceUpdate(learned.view, True, rejected=learned.rejected, delta=step))
        self._settle()
        return time.process_time() - start


class _Null:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def measure(routes: int, trials: int, full_trials: int) -> dict[str, Any]:
    bench = Bench(routes)
    row: dict[str, Any] = {"routes": routes}
    for mode, run, n in (("full", bench.full, full_trials), ("delta", bench.delta, trials)):
        ms = sorted(run() * 1000 for _ in range(n))
        row[mode] = {"p50": statistics.median(ms), "p99": ms[min(n - 1, int(n * 0.99))], "n": n}
    kernel_routes = {(r.table, r.dst) for r in bench.kernel._routes.values()}
    wanted = {(markers.vrf_table(TENANT_ID), r.prefix) for r in bench.routes.values()}
    row["kernel_matches"] = wanted <= kernel_routes  # the applies did program every move
    return row


EVENTS = 200  # delta events before memory is counted


def memory(routes: int) -> dict[str, Any]:
    """Bytes per remote route: traced (tracemalloc) and RSS growth, each less the in-memory
    kernel's copy of the routes (what the traced run frees when that copy is dropped)."""
    gc.collect()
    before = _rss_bytes()
    bench = _settled(routes)
    rss = _rss_bytes() - before
    del bench
    gc.collect()
    tracemalloc.start()
    bench = _settled(routes)
    gc.collect()
    traced = tracemalloc.get_traced_memory()[0]
    bench.kernel._routes.clear()
    gc.collect()
    copy = traced - tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return {
        "routes": routes,
        "traced_bytes_per_route": round((traced - copy) / routes),
        "rss_bytes_per_route": round((rss - copy) / routes),
    }


def _settled(routes: int) -> Bench:
    bench = Bench(routes)
    for _ in range(EVENTS):
        bench.delta()
    bench.resync()
    return bench


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="routed-nv bench events", description=__doc__)
    parser.add_argument("--routes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--trials", type=int, default=200, help="delta events per size")
    parser.add_argument("--full-trials", type=int, default=5, help="full events per size")
    parser.add_argument("--memory", action="store_true", help="bytes per route, not CPU")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    if args.memory:
        return _report_memory([memory(n) for n in args.routes], args.output)
    rows = [measure(n, args.trials, args.full_trials) for n in args.routes]
    if args.output == "json":
        print(json.dumps({"event_cpu_ms": rows}, indent=2))
        return 0
    print(f"{'routes':>8}  {'full p50 ms':>11}  {'full p99 ms':>11}  {'delta p50 ms':>12}  "
          f"{'delta p99 ms':>12}  kernel ok")  # fmt: skip
    for r in rows:
        f, d = r["full"], r["delta"]
        print(f"{r['routes']:>8}  {f['p50']:>11.2f}  {f['p99']:>11.2f}  {d['p50']:>12.3f}  "
              f"{d['p99']:>12.3f}  {r['kernel_matches']}")  # fmt: skip
    return 0


def _report_memory(rows: list[dict[str, Any]], output: str) -> int:
    if output == "json":
        print(json.dumps({"agent_bytes_per_route": rows}, indent=2))
        return 0
    print(f"{'routes':>8}  {'traced B/route':>14}  {'RSS B/route':>11}")
    for r in rows:
        traced, rss = r["traced_bytes_per_route"], r["rss_bytes_per_route"]
        print(f"{r['routes']:>8}  {traced:>14}  {rss:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
