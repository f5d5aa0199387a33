"""Benchmark of the BGP directory, end to end: publish N endpoints on host1, time until a real
`routed-nv agent` on host2 (directory.source = bgp) has programmed all N routes in the tenant's
VRF table, and until a withdrawal is gone from it; the agent's CPU and memory, BIRD's memory per
node, and the `ip -batch` floor of writing the same routes into a VRF table on host2, side by
side in one run.

    python -m routed_nv.bench.directory [--quick | --full | --size N[:REPS] ...] [-o json]

Publishing is what host1's routing driver does for a local endpoint: a proto-230 route in the
tenant's publish table (one `ip -batch` for all N). host1 and host3 are programmed in-process and
run no agent (an agent would remove routes it did not write); host2 runs the agent, which is what
is measured. One netlink watch on host2 sees the mirror table (BIRD's part) and the VRF table
(the agent's part), so each time splits into "mirror" and "VRF". Runs in the lab (3 hosts,
2 route reflectors, BIRD everywhere), inside UML when this kernel lacks what the lab needs.
Prints numbers only: UML speeds are not a machine's, compare columns.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from routed_nv.config.model import Config
from routed_nv.directory.birdc import BirdClient
from routed_nv.directory.learn import IPAddress, IPNetwork
from routed_nv.directory.netlink_watch import MirrorWatch, RouteEvent
from routed_nv.lab import uml
from routed_nv.lab.bgp_agents import BgpAgents
from routed_nv.lab.builder import Lab, LabError, ip_batch
from routed_nv.lab.memory_log import MemoryLog, sample
from routed_nv.lab.topology import directory_topology
from routed_nv.model import markers
from routed_nv.model.directory import tenant_outer_address

TENANT = "blue"
TENANT_ID = 100
FLOOR_TABLE = 999  # host2's scratch VRF for the `ip -batch` floor (no routed_nv marker)
FLOOR_VRF, FLOOR_TUNNEL = "bench-vrf", "bench-tnl"  # names outside routed_nv's prefixes
# repetitions per N: p99 is interpolated between the two slowest runs when reps < 100
QUICK = {1: 10, 1000: 3, 10000: 1}
FULL = {1: 30, 1000: 10, 10000: 3, 100000: 1}
TIMEOUT_S = 1200.0  # per wait: 100,000 routes through the agent in a slow guest
SPACE = ipaddress.IPv4Network("10.64.0.0/10")  # outside the lab's workloads, added to blue
BIRD_NODES = ("host1", "host2", "rr1")
SYNC_TIMEOUT_S = 60.0
BATCH_LINES = 10_000
MEMORY_LOG = Path(".rnv-lab/directory-bench-memory.log")


@dataclass
class Row:
    n: int
    publish_mirror: list[float] = field(default_factory=list)  # publish -> host2 mirror table
    publish: list[float] = field(default_factory=list)  # publish -> host2 VRF table
    withdraw: list[float] = field(default_factory=list)  # withdraw -> gone from the VRF table
    floor: list[float] = field(default_factory=list)  # ip -batch of the same routes on host2
    agent_cpu_publish: list[float] = field(default_factory=list)  # CPU seconds (user + system)
    agent_cpu_withdraw: list[float] = field(default_factory=list)
    agent_rss_kb: int = 0  # VmRSS with all N routes programmed (first repetition)
    agent_hwm_kb: int = 0  # VmHWM: the agent's peak so far
    bird_memory: dict[str, int] = field(default_factory=dict)  # node -> bytes, all N present
    vrf_next_hops: list[str] = field(default_factory=list)  # distinct, over all repetitions
    mirror_next_hops: list[str] = field(default_factory=list)


class Tables:
    """Routes of host2's mirror, VRF and floor tables in SPACE, counted from netlink events.

    Each table is a set of the watch's own prefix objects (no second copy of 100,000s of
    routes: in a UML guest a process that maps too many pages is killed), and `next_hops` the
    distinct next hops added to each table since `forget_next_hops`."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.mirror = markers.mirror_table(TENANT_ID)
        self.vrf = markers.vrf_table(TENANT_ID)
        tables = (self.mirror, self.vrf, FLOOR_TABLE)
        self.watch = MirrorWatch(netns, tables=set(tables))
        self.prefixes: dict[int, set[IPNetwork]] = {t: set() for t in tables}
        self.next_hops: dict[int, set[IPAddress | None]] = {t: set() for t in tables}

    def __enter__(self) -> Tables:
        self.watch.open()
        self._apply(RouteEvent(True, r) for r in self.watch.routes)
        return self

    def __exit__(self, *exc: object) -> None:
        self.watch.close()

    def forget_next_hops(self) -> None:
        for hops in self.next_hops.values():
            hops.clear()

    def _apply(self, events: Iterable[RouteEvent]) -> None:
        for event in events:
            route = event.route
            if route.prefix.version == 4 and route.prefix.subnet_of(SPACE):
                if event.added:
                    self.prefixes[route.table].add(route.prefix)
                    self.next_hops[route.table].add(route.next_hop)
                else:
                    self.prefixes[route.table].discard(route.prefix)

    def kernel_count(self, table: int) -> int:
        """Routes in SPACE in one of host2's tables, read anew (checks the watch)."""
        done = subprocess.run(
            ["ip", "-n", self.netns, "-4", "route", "show", "table", str(table),
             "root", str(SPACE)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        return len(done.stdout.splitlines()) if done.returncode == 0 else -1

    def until(self, counts: dict[int, int], since: float) -> dict[int, float]:
        """Seconds from `since` until each table holds its count of routes (event-driven)."""
        deadline = time.monotonic() + TIMEOUT_S
        reached: dict[int, float] = {}
        while True:
            now = time.monotonic()
            for table, count in counts.items():
                if table not in reached and len(self.prefixes[table]) == count:
                    reached[table] = now - since
            if len(reached) == len(counts):
                return reached
            if now > deadline:
                have = {t: len(self.prefixes[t]) for t in counts}
                kernel = {t: self.kernel_count(t) for t in counts}
                raise LabError(
                    f"host2 tables have {have} routes in {SPACE} by the watch's events, "
                    f"{kernel} by a new `ip route` read; expected {counts}"
                )
            self._apply(self.watch.wait(deadline - now))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB, from /proc/<pid>/status."""
    values = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(values["VmRSS"].split()[0]), int(values["VmHWM"].split()[0])


def _lines(n: int, verb: str, what: str) -> list[str]:
    return [f"route {verb} {SPACE[i + 1]}/32 {what}" for i in range(n)]


def _batch(namespace: str, lines: list[str]) -> None:
    """`ip -batch`, one process per BATCH_LINES: a UML guest process that maps more pages than
    the host's vm.max_map_count is killed, and `ip` grew past that at 100,000 routes."""
    for start in range(0, len(lines), BATCH_LINES):
        ip_batch(namespace, lines[start : start + BATCH_LINES])


class Bench:
    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.env = _BenchAgents(lab, workdir)
        self.host1, self.host2 = lab.topology.host("host1"), lab.topology.host("host2")

    def start(self) -> None:
        """RRs, workloads, host1 and host3 programmed in-process, host2's agent, host BIRDs;
        then until host2's agent says its directory is in sync (BIRD out of GR recovery)."""
        env = self.env
        env.start_route_reflectors()
        env.datapath.configure_workloads()
        for host in ("host1", "host3"):
            outcome = env.datapath.apply(host)
            if not outcome.ok:
                raise LabError(f"{host}: {[str(e) for s in outcome.stages for e in s.errors]}")
        env.agents["host2"].start()
        env.birds.start_hosts(env.datapath.configs)
        env.birds.wait_established()
        deadline = time.monotonic() + SYNC_TIMEOUT_S
        while not env.agents["host2"].status()["directory"]["in_sync"]:
            if time.monotonic() > deadline:
                raise LabError(f"host2's agent not in sync:\n{env.agents['host2'].log()}")
            time.sleep(0.1)
        t = self.host2.prefix[markers.TENANT_ID_MAX + 1]  # clear of host and tenant addresses
        ip_batch(
            self.host2.namespace,
            [
                f"link add {FLOOR_VRF} type vrf table {FLOOR_TABLE}",
                f"link set {FLOOR_VRF} up",
                f"link add {FLOOR_TUNNEL} type ip6tnl mode any local {t} remote any "
                "encaplimit none hoplimit 64",
                f"link set {FLOOR_TUNNEL} master {FLOOR_VRF} up",
            ],
        )

    @property
    def agent_pid(self) -> int:
        proc = self.env.agents["host2"].proc
        assert proc is not None  # `ip netns exec` execs the agent: the same pid
        return proc.pid

    def agent_state(self) -> str:
        """Whether host2's agent still runs, what it believes (its status), and the end of its
        log (for a failed wait)."""
        agent = self.env.agents["host2"]
        code = agent.proc.poll() if agent.proc else None
        state = "running" if code is None else f"exited with {code}"
        belief = ""
        if code is None:
            status = agent.status()
            directory = status["directory"]
            reasons = Counter(r["reason"] for r in directory["rejected"])
            belief = (
                f"; its status: in_sync {directory['in_sync']} ({directory['detail']}), "
                f"datapath {status['datapath']}, rejected {dict(reasons)}"
            )
        return f"host2's agent is {state}{belief}; its log ends:\n{agent.log()[-3000:]}"

    def measure(self, tables: Tables, n: int, reps: int) -> Row:
        publish = f"dev {self.lab.topology.workloads_on('host1')[0].host_link} "
        publish += f"table {markers.publish_table(TENANT_ID)} proto {markers.RTPROT_ENDPOINT}"
        via = tenant_outer_address(self.host1.prefix, TENANT_ID)
        floor = f"via inet6 {via} dev {FLOOR_TUNNEL} onlink table {FLOOR_TABLE}"
        row = Row(n)
        tables.forget_next_hops()
        pid = self.agent_pid
        for rep in range(reps):
            cpu = cpu_seconds(pid)
            start = time.monotonic()
            _batch(self.host1.namespace, _lines(n, "add", publish))
            reached = tables.until({tables.mirror: n, tables.vrf: n}, start)
            row.publish_mirror.append(reached[tables.mirror])
            row.publish.append(reached[tables.vrf])
            row.agent_cpu_publish.append(cpu_seconds(pid) - cpu)
            if rep == 0:
                row.agent_rss_kb, row.agent_hwm_kb = memory_kb(pid)
                row.bird_memory = self._bird_memory()
            cpu = cpu_seconds(pid)
            start = time.monotonic()
            _batch(self.host1.namespace, _lines(n, "del", publish))
            reached = tables.until({tables.mirror: 0, tables.vrf: 0}, start)
            row.withdraw.append(reached[tables.vrf])
            row.agent_cpu_withdraw.append(cpu_seconds(pid) - cpu)
            start = time.monotonic()
            _batch(self.host2.namespace, _lines(n, "add", floor))
            row.floor.append(tables.until({FLOOR_TABLE: n}, start)[FLOOR_TABLE])
            ip_batch(self.host2.namespace, [f"route flush table {FLOOR_TABLE}"])
            tables.until({FLOOR_TABLE: 0}, time.monotonic())
        row.agent_hwm_kb = memory_kb(pid)[1]
        row.vrf_next_hops = sorted(str(h) for h in tables.next_hops[tables.vrf])
        row.mirror_next_hops = sorted(str(h) for h in tables.next_hops[tables.mirror])
        return row

    def _bird_memory(self) -> dict[str, int]:
        memory = {}
        for name in BIRD_NODES:
            with BirdClient(self.env.birds.node(name).socket) as bird:
                memory[name] = bird.memory()
        return memory


class _BenchAgents(BgpAgents):
    """The BGP lab with SPACE inside the tenant's subnets on every host (else host2's learn()
    rejects the routes as outside-tenant-subnets and BIRD's publish filter may drop them)."""

    def _bgp_config(self, host: str, config: Config) -> Config:
        return widen(super()._bgp_config(host, config))


def widen(config: Config) -> Config:
    """The config with SPACE added to the benchmark tenant's IPv4 subnets."""
    tenant = config.tenants[TENANT]
    wider = tenant.model_copy(update={"ipv4": [*tenant.ipv4, SPACE]})
    return config.model_copy(update={"tenants": {**config.tenants, TENANT: wider}})


def _ms(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0] * 1000:.1f}"
    return f"{statistics.median(values) * 1000:.1f} / {p99(values) * 1000:.1f}"


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def _ratio(row: Row) -> str:
    return f"{statistics.median(row.publish) / statistics.median(row.floor):.1f}x"


def header() -> None:
    """A Markdown table (docs paste it): times in ms, p50 / p99 over repetitions."""
    print("times in ms, p50 / p99 over repetitions (one value when run once); CPU: host2's agent,")
    print("user + system seconds, median per repetition; memory with all N routes present")
    print()
    print(
        "| N | reps | publish → mirror | publish → VRF (agent) | withdraw → VRF | "
        "`ip -batch` floor | agent / floor | agent CPU s (publish + withdraw) | "
        "agent RSS / HWM | " + " | ".join(f"BIRD {n}" for n in BIRD_NODES) + " |"
    )
    print("|---:" * (9 + len(BIRD_NODES)) + "|", flush=True)


def line(r: Row) -> None:
    cpu = statistics.median(r.agent_cpu_publish), statistics.median(r.agent_cpu_withdraw)
    birds = " | ".join(f"{r.bird_memory[n] / 1024:.0f} kB" for n in BIRD_NODES)
    print(
        f"| {r.n:,} | {len(r.publish)} | {_ms(r.publish_mirror)} | {_ms(r.publish)} | "
        f"{_ms(r.withdraw)} | {_ms(r.floor)} | {_ratio(r)} | {cpu[0]:.2f} + {cpu[1]:.2f} | "
        f"{r.agent_rss_kb / 1024:.0f} / {r.agent_hwm_kb / 1024:.0f} MB | {birds} |",
        flush=True,
    )


def run(
    sizes: dict[int, int],
    each: Callable[[Row], None] = lambda row: None,
    memory_log: Path = MEMORY_LOG,
) -> list[Row]:
    """One lab, every size in order; `each` sees each row as soon as it is measured (a long
    run keeps what it measured), and `memory_log` where the guest's memory went."""
    topology = directory_topology()
    with (
        MemoryLog(memory_log),
        Lab(topology) as lab,
        tempfile.TemporaryDirectory() as work,
    ):
        bench = Bench(lab, Path(work))
        bench.start()
        with Tables(bench.host2.namespace) as tables:
            tables.until({tables.mirror: 0, tables.vrf: 0, FLOOR_TABLE: 0}, time.monotonic())
            rows = []
            for n, reps in sizes.items():
                try:
                    rows.append(bench.measure(tables, n, reps))
                except LabError as exc:
                    state = f"{bench.agent_state()}\nmemory now: {sample()}"
                    raise LabError(f"N={n}: {exc}\n{state}") from exc
                each(rows[-1])
        # a clean stop, checked; after a failure the lab's teardown stops the agent by its pid
        bench.env.agents.stop_all()
        return rows


def size(text: str) -> tuple[int, int]:
    """`N` or `N:REPS` (argparse type of --size)."""
    n, _, reps = text.partition(":")
    try:
        value = int(n), int(reps or 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not N or N:REPS") from None
    if min(value) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: N and REPS must be at least 1")
    return value


PROG = "routed-nv bench directory"


def main(argv: list[str] | None = None) -> int:
    """`argv`: the options (default: this process's); `routed-nv bench directory` passes its own."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sizes_given = parser.add_mutually_exclusive_group()
    sizes_given.add_argument("--quick", action="store_true", help="N up to 10,000, fewer reps")
    sizes_given.add_argument("--full", action="store_true", help="N up to 100,000 (the default)")
    sizes_given.add_argument(
        "--size", type=size, action="append", metavar="N[:REPS]", help="only these (repeatable)"
    )
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument(
        "--memory-log",
        type=Path,
        default=MEMORY_LOG,
        help="where available memory and the largest processes are written every 10 s",
    )
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    sizes = dict(args.size) if args.size else QUICK if args.quick else FULL
    if uml.needs_uml():
        command = [sys.executable, "-m", "routed_nv.bench.directory", *argv]
        # 100,000 routes: BIRD holds them on five nodes, the agent and the bench's watch in
        # Python objects; in 3 GB the bench was killed reading host2's tables at the end
        mem = "6G" if max(sizes) > max(QUICK) else uml.DEFAULT_MEM
        advice = uml.map_count_advice(mem) if mem != uml.DEFAULT_MEM else None
        if advice:  # host2's agent held ~375 MB at 100,000 routes
            print(f"routed-nv: warning: {advice}", file=sys.stderr)
        return uml.run_in_uml(command, cwd=Path.cwd(), timeout=3600, mem=mem)
    if args.output == "json":
        print(json.dumps([asdict(r) for r in run(sizes, memory_log=args.memory_log)], indent=2))
    else:
        header()
        run(sizes, line, args.memory_log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
