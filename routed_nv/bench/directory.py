"""Benchmark of the BGP directory, end to end, in the UML lab: what issue 16's goals are
measured by, with each figure beside its floor. JSON keys (stable, for machines; schema in
docs/directory.md "Measurements"):

    header, ready_s, in_sync_s, publish_to_vrf, event_cpu_ms, agent_rss_bytes_per_route,
    add_to_reachable_s, move_to_traffic_s

    python -m routed_nv.bench.directory [--quick | --full | --size N[:REPS] ...]
        [--hosts 2|3] [-o json]

Two phases, so that every agent involved is real and none deletes what the bench wrote:
1. host2's agent alone (host1, host3 programmed in-process, no agent): agent start -> READY ->
   directory in sync; N routes written into host1's publish table by `ip -batch` (what host1's
   routing driver writes for a local endpoint) -> in host2's VRF, against the floor (the same N
   routes written by `ip -batch` into a VRF table on host2); one route change at N routes (the
   agent's CPU); the agent's RSS. An agent on host1 would delete those routes it did not write.
2. every host runs its agent: `routed-nv endpoint add --netns` on host1 (the real CLI and
   endpoint API) -> first ping reply from a workload on host2; a make-before-break move under a
   10 ms ping.
Every arrival is timed by route_count.c (a C netlink reader, rtnetlink events) or by ping's
own timestamps (`ping -D`), never by a Python reader competing for the guest's CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import itertools
import json
import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from routed_nv.config.model import Config
from routed_nv.lab import uml
from routed_nv.lab.agents import ROUTED_NV, LabAgent
from routed_nv.lab.bgp_agents import BgpAgents
from routed_nv.lab.builder import Lab, LabError, ip_batch
from routed_nv.lab.checks import ping_losses
from routed_nv.lab.memory_log import MemoryLog
from routed_nv.lab.topology import NS_PREFIX, directory_topology
from routed_nv.model import markers
from routed_nv.model.directory import tenant_outer_address

TENANT = "blue"
TENANT_ID = 100
FLOOR_TABLE = 999  # host2's scratch VRF for the `ip -batch` floor (no routed_nv marker)
FLOOR_VRF, FLOOR_TUNNEL = "bench-vrf", "bench-tnl"  # names outside routed_nv's prefixes
SPACE = ipaddress.IPv4Network("10.64.0.0/10")  # outside the lab's workloads, added to blue
TIMEOUT_S = 1200.0  # per wait: 100,000 routes through the agent in a slow guest
SYNC_TIMEOUT_S = 120.0
REACH_TIMEOUT_S = 60.0
BATCH_LINES = 10_000
SETTLE_S = 0.3  # after an event's route is in the VRF: the agent finishes its bookkeeping
IDLE_S = 3.0  # window of the agent's idle CPU rate, beside the per-event figure
QUIET_TIMEOUT_S = 60.0
PING_INTERVAL = "0.01"
MOVED_TTL = 200  # the new location answers with this TTL: ping's output tells who answered
MOVED_SEEN = 128  # ... and arrives with at least this one (the old location's starts at 64)
MEMORY_LOG = Path(".rnv-lab/directory-bench-memory.log")
READER = Path(__file__).with_name("route_count.c")
KEYS = (
    "header",
    "ready_s",
    "in_sync_s",
    "publish_to_vrf",
    "event_cpu_ms",
    "agent_rss_bytes_per_route",
    "add_to_reachable_s",
    "move_to_traffic_s",
)


@dataclass(frozen=True)
class Plan:
    sizes: dict[int, int]  # routes -> repetitions of publish_to_vrf
    add_trials: int  # per address family
    move_trials: int
    event_trials: int  # route changes (an add and a delete each) per size in the lab
    unit_events: int  # events per size of `bench events`' delta measurement


QUICK = Plan({1000: 1}, add_trials=2, move_trials=1, event_trials=3, unit_events=20)
FULL = Plan({10_000: 3, 100_000: 1}, add_trials=20, move_trials=10, event_trials=20,
            unit_events=200)  # fmt: skip


def log(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


def summary(values: list[float]) -> dict[str, Any]:
    """{p50, p99, n}: the median, and the inclusive 99th percentile (with fewer than 100 values,
    interpolated between the two largest: close to the maximum)."""
    if len(values) == 1:
        return {"p50": values[0], "p99": values[0], "n": 1}
    p99 = statistics.quantiles(values, n=100, method="inclusive")[98]
    return {"p50": statistics.median(values), "p99": p99, "n": len(values)}


def cpu_ns(pid: int) -> int:
    """CPU time of a process, all threads, in ns: schedstat's run time where the kernel keeps it
    (in a UML guest it advances by 10 ms ticks too), else utime + stime from /proc/<pid>/stat."""
    tasks = Path(f"/proc/{pid}/task")
    try:
        return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks.iterdir())
    except (FileNotFoundError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) * 10**9 // os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    """VmRSS from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise LabError(f"no VmRSS for pid {pid}")


class RouteCount:
    """route_count.c in host2's namespace: counts our /32s per table, times arrivals."""

    def __init__(self, lab: Lab, namespace: str, binary: Path, tables: list[int]) -> None:
        argv = [str(binary), str(SPACE), *map(str, tables)]
        self.proc = lab.spawn(
            namespace, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        self._expect("ready", 120)

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if line.startswith("error") or (ready and not line):
            raise LabError(f"route_count: {line.strip() or 'exited'}")
        return line.strip()

    def _expect(self, word: str, timeout: float) -> list[str]:
        line = self._line(timeout)
        if not line.startswith(word):
            raise LabError(f"route_count: no {word!r} in {timeout:g} s (got {line!r})")
        return line.split()[1:]

    def _send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def count(self, table: int) -> int:
        self._send(f"count {table}")
        return int(self._expect("count", 30)[1])

    @contextlib.contextmanager
    def until(self, counts: dict[int, int], result: dict[int, float]) -> Iterator[None]:
        """Arms the wait, runs the body (the action), then fills `result` with each table's
        time.monotonic() of reaching its count."""
        self._send("wait " + " ".join(f"{t} {c}" for t, c in counts.items()))
        self._expect("ok", 30)
        yield
        try:
            words = self._expect("reached", TIMEOUT_S)
        except LabError as exc:
            have = {t: self.count(t) for t in counts}
            raise LabError(f"{exc}; tables have {have}, expected {counts}") from None
        result.update({int(t): float(s) for t, s in zip(words[::2], words[1::2], strict=True)})

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def build_reader(workdir: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise LabError("no C compiler (cc) for the bench's route_count.c: apt-get install gcc")
    out = workdir / "route_count"
    done = subprocess.run([cc, "-O2", "-o", str(out), str(READER)], capture_output=True,
                          text=True, check=False, timeout=120)  # fmt: skip
    if done.returncode != 0:
        raise LabError(f"cannot build {READER.name}: {done.stderr.strip()[:500]}")
    return out


def _lines(routes: range, verb: str, what: str) -> list[str]:
    return [f"route {verb} {SPACE[i + 1]}/32 {what}" for i in routes]


def _batch(namespace: str, lines: list[str]) -> None:
    """`ip -batch`, one process per BATCH_LINES: a UML guest process that maps more pages than
    the host's vm.max_map_count is killed, and `ip` grew past that at 100,000 routes."""
    for start in range(0, len(lines), BATCH_LINES):
        ip_batch(namespace, lines[start : start + BATCH_LINES])


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


def wait_in_sync(agent: LabAgent, since: float) -> float:
    """Seconds from `since` until the agent's directory says in sync (polled every 50 ms)."""
    while not agent.status()["directory"]["in_sync"]:
        if time.monotonic() - since > SYNC_TIMEOUT_S:
            raise LabError(f"{agent.host}'s agent not in sync:\n{agent.log()[-3000:]}")
        time.sleep(0.05)
    return time.monotonic() - since


class Bench:
    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.env = _BenchAgents(lab, workdir)
        self.host1, self.host2 = lab.topology.host("host1"), lab.topology.host("host2")
        self.mirror, self.vrf = markers.mirror_table(TENANT_ID), markers.vrf_table(TENANT_ID)
        self.result: dict[str, Any] = {}

    # phase 1: host2's agent alone

    def start(self) -> None:
        """RRs, workloads, the other hosts programmed in-process, host2's agent (start ->
        READY), the hosts' BIRDs, until host2's agent says its directory is in sync."""
        env = self.env
        env.start_route_reflectors()
        env.datapath.configure_workloads()
        for host in env.datapath.configs:
            if host != "host2":
                outcome = env.datapath.apply(host)
                if not outcome.ok:
                    errors = [str(e) for s in outcome.stages for e in s.errors]
                    raise LabError(f"{host}: {errors}")
        agent = env.agents["host2"]
        spawned = agent.spawn()
        self.result["ready_s"] = agent.wait_ready()
        env.birds.start_hosts(env.datapath.configs)
        env.birds.wait_established(timeout=SYNC_TIMEOUT_S)
        self.result["in_sync_s"] = wait_in_sync(agent, spawned)
        log(f"host2 agent: READY {self.result['ready_s']:.2f} s, "
            f"in sync {self.result['in_sync_s']:.2f} s")  # fmt: skip
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

    def publish_lines(self, routes: range, verb: str) -> list[str]:
        publish = f"dev {self.lab.topology.workloads_on('host1')[0].host_link} "
        publish += f"table {markers.publish_table(TENANT_ID)} proto {markers.RTPROT_ENDPOINT}"
        return _lines(routes, verb, publish)

    def publish(self, reader: RouteCount, plan: Plan) -> None:
        via = tenant_outer_address(self.host1.prefix, TENANT_ID)
        floor = f"via inet6 {via} dev {FLOOR_TUNNEL} onlink table {FLOOR_TABLE}"
        pid = self.agent_pid
        idle_rss = rss_bytes(pid)
        rows, events = [], []
        for n, reps in plan.sizes.items():
            for rep in range(reps):
                row: dict[str, Any] = {"routes": n}
                at: dict[int, float] = {}
                cpu = cpu_ns(pid)
                with reader.until({self.mirror: n, self.vrf: n}, at):
                    start = time.monotonic()
                    _batch(self.host1.namespace, self.publish_lines(range(n), "add"))
                row["seconds"] = at[self.vrf] - start
                row["mirror_seconds"] = at[self.mirror] - start
                row["agent_cpu_s"] = (cpu_ns(pid) - cpu) / 1e9
                row["agent_rss_bytes"] = rss_bytes(pid)
                if rep == 0:
                    events.append(self.events(reader, n, plan.event_trials))
                with reader.until({self.mirror: 0, self.vrf: 0}, at):
                    start = time.monotonic()
                    _batch(self.host1.namespace, self.publish_lines(range(n), "del"))
                row["withdraw_seconds"] = at[self.vrf] - start
                with reader.until({FLOOR_TABLE: n}, at):
                    start = time.monotonic()
                    _batch(self.host2.namespace, _lines(range(n), "add", floor))
                row["floor_seconds"] = at[FLOOR_TABLE] - start
                row["ratio"] = row["seconds"] / row["floor_seconds"]
                with reader.until({FLOOR_TABLE: 0}, at):
                    ip_batch(self.host2.namespace, [f"route flush table {FLOOR_TABLE}"])
                rows.append(row)
                log(f"publish {n:,}: {row['seconds']:.2f} s, floor {row['floor_seconds']:.2f} s, "
                    f"ratio {row['ratio']:.2f}")  # fmt: skip
        self.result["publish_to_vrf"] = rows
        self.result["event_cpu_ms"] = [{"routes": e.pop("routes"), "lab": e} for e in events]
        largest = max(rows, key=lambda r: r["routes"])
        self.result["agent_rss_bytes_per_route"] = (
            largest["agent_rss_bytes"] - idle_rss
        ) / largest["routes"]

    def events(self, reader: RouteCount, n: int, trials: int) -> dict[str, Any]:
        """host2's agent CPU per single route change with `n` remote routes: one route more
        published on host1, until it is in host2's VRF (+ SETTLE_S), then deleted again. The
        guest's CPU clock ticks at 10 ms, so only the mean over all changes, less the agent's
        idle rate over the same windows, says something (unit_events gives p50 / p99)."""
        pid = self.agent_pid
        idle = idle_rate(pid)
        total_ms = window = 0.0
        for i in range(trials):
            for verb, count in (("add", n + 1), ("del", n)):
                at: dict[int, float] = {}
                cpu = cpu_ns(pid)
                with reader.until({self.vrf: count}, at):
                    start = time.monotonic()
                    one = self.publish_lines(range(n + i, n + i + 1), verb)
                    ip_batch(self.host1.namespace, one)
                time.sleep(SETTLE_S)
                total_ms += (cpu_ns(pid) - cpu) / 1e6
                window += time.monotonic() - start
        changes = 2 * trials
        row = {"routes": n, "mean_ms": (total_ms - idle * window) / changes, "n": changes}
        row |= {"idle_ms_per_s": idle, "window_s": window / changes}
        log(f"event at {n:,} in the lab: mean {row['mean_ms']:.1f} ms, idle {idle:.1f} ms/s")
        return row

    # phase 2: every host's agent

    def start_agents(self) -> None:
        """The agents of the hosts programmed in-process so far (host2's runs already)."""
        agents = [a for h, a in self.env.agents.agents.items() if h != "host2"]
        started = time.monotonic()
        for agent in agents:
            agent.spawn()
        for agent in agents:
            agent.wait_ready()
            wait_in_sync(agent, started)
        log(f"other agents ready and in sync after {time.monotonic() - started:.2f} s")

    def endpoint(self, host: str, *args: str) -> float:
        """`routed-nv endpoint ...` as an operator runs it; returns its seconds."""
        agent = self.env.agents[host]
        argv = [*ROUTED_NV, "endpoint", *args, "-c", str(agent.config_path)]
        start = time.monotonic()
        done = subprocess.run([*argv, "--run-dir", str(agent.run_dir)], capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip
        if done.returncode != 0:
            raise LabError(f"{host}: routed-nv endpoint {' '.join(args)}: {done.stderr.strip()}")
        return time.monotonic() - start

    def add(
        self, host: str, name: str, netns: str, addresses: tuple[str, str], *more: str
    ) -> float:
        given = [a for address in addresses for a in ("--address", address)]
        return self.endpoint(host, "add", name, "--tenant", TENANT, *given, "--netns", netns,
                             *more)  # fmt: skip

    def add_to_reachable(self, trials: int) -> None:
        """`endpoint add` on host1 -> first echo reply at blue2 (host2), IPv4 and IPv6, timed by
        `ping -D` (its own gettimeofday) against time.time() just before the CLI starts."""
        v4: list[float] = []
        v6: list[float] = []
        cli: list[float] = []
        for i in range(trials):
            addresses = (f"10.0.0.{100 + i}", f"fd10::{100 + i:x}")
            with workload_netns(f"{NS_PREFIX}db{i}") as netns, self.pings(addresses) as pings:
                start = time.time()
                cli.append(self.add("host1", f"db{i}", netns, addresses))
                for ping, values in zip(pings, (v4, v6), strict=True):
                    values.append(ping.first_reply() - start)
                self.endpoint("host1", "del", f"db{i}")
            log(f"add -> reachable #{i}: IPv4 {v4[-1]:.2f} s, IPv6 {v6[-1]:.2f} s, "
                f"CLI {cli[-1]:.2f} s")  # fmt: skip
        self.result["add_to_reachable_s"] = {
            **summary(v4 + v6), "v4": summary(v4), "v6": summary(v6), "cli": summary(cli),
        }  # fmt: skip

    def move_to_traffic(self, trials: int) -> None:
        """Make-before-break as docs/directory.md documents it: an endpoint on host1 pinged from
        blue2 every 10 ms; `endpoint add --wait` on the new host (it returns once host1 has
        withdrawn, i.e. routes the address there), then `endpoint del` on host1; the time from
        the add's start to the first reply from the new location (its TTL), and the pings lost
        (ping's own count)."""
        target = "host3" if "host3" in self.env.datapath.configs else "host2"
        seconds: list[float] = []
        lost = 0
        for i in range(trials):
            addresses = (f"10.0.0.{150 + i}", f"fd10::{150 + i:x}")
            name = f"mv{i}"
            with (
                workload_netns(f"{NS_PREFIX}mvold") as old,
                workload_netns(f"{NS_PREFIX}mvnew", ttl=MOVED_TTL) as new,
            ):
                self.add("host1", name, old, addresses)
                with self.pings(addresses) as pings:
                    for ping in pings:
                        ping.first_reply()
                    start = time.time()
                    self.add(target, name, new, addresses, "--wait")
                    added = time.time() - start
                    self.endpoint("host1", "del", name)
                    deleted = time.time() - start
                    moved = [p.first_reply(ttl=MOVED_SEEN) - start for p in pings]
                    time.sleep(1.0)  # traffic stays at the new location
                    lost_now = [p.stop() for p in pings]
                self.endpoint(target, "del", name)
            seconds += moved
            lost += sum(lost_now)
            # when the lost requests were sent, against the add's and the del's return
            when = [[round(t - start, 2) for t in p.lost_at()] for p in pings]
            log(f"move #{i} host1 -> {target}: {moved} s, lost {lost_now} sent at {when} s "
                f"(add --wait returned {added:.2f} s, del {deleted:.2f} s)")  # fmt: skip
        self.result["move_to_traffic_s"] = {**summary(seconds), "lost_pings": lost}

    @contextlib.contextmanager
    def pings(self, addresses: tuple[str, str]) -> Iterator[list[Ping]]:
        started = [Ping(self.lab, self.workdir, a) for a in addresses]
        try:
            yield started
        finally:
            for ping in started:
                ping.stop()


def idle_rate(pid: int) -> float:
    """The agent's CPU ms per second once it is quiet: after a publish it keeps working for
    seconds (its last applies, the source's quiet period), which an idle window must not see.
    Quiet: two 1 s windows in a row within one 10 ms tick, or QUIET_TIMEOUT_S."""
    deadline = time.monotonic() + QUIET_TIMEOUT_S
    last = None
    while time.monotonic() < deadline:
        cpu = cpu_ns(pid)
        time.sleep(1.0)
        rate = (cpu_ns(pid) - cpu) / 1e6
        if last is not None and abs(rate - last) <= 10:
            break
        last = rate
    cpu = cpu_ns(pid)
    time.sleep(IDLE_S)
    return (cpu_ns(pid) - cpu) / 1e6 / IDLE_S


class Ping:
    """`ping -D -n -i 0.01` from blue2 (host2) into a file: its own timestamps say when."""

    def __init__(self, lab: Lab, workdir: Path, address: str) -> None:
        self.path = workdir / f"ping-{address.replace(':', '_')}.out"
        self.address = address
        self._out = self.path.open("w")
        argv = ["ping", "-D", "-n", "-i", PING_INTERVAL, "-W", "1", address]
        self.proc = lab.spawn(f"{NS_PREFIX}blue2", argv, stdout=self._out,
                              stderr=subprocess.STDOUT)  # fmt: skip
        self._lost: int | None = None

    def first_reply(self, ttl: int = 0) -> float:
        """ping's timestamp of its first reply (with at least this TTL)."""
        deadline = time.monotonic() + REACH_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in self.path.read_text().splitlines():
                found = re.match(r"\[([\d.]+)\] .* ttl=(\d+)", line)
                if found and int(found[2]) >= ttl:
                    return float(found[1])
            time.sleep(0.05)
        raise LabError(f"no reply from {self.address} (ttl >= {ttl}) in {REACH_TIMEOUT_S:g} s")

    def lost_at(self) -> list[float]:
        """When each request without a reply was sent (ping's clock), between the first reply
        and the last: its sequence number counted on from the reply before it."""
        replies = sorted(
            (int(seq), float(at))
            for at, seq in re.findall(r"\[([\d.]+)\] .* icmp_seq=(\d+) ttl=", self.path.read_text())
        )
        interval = float(PING_INTERVAL)
        return [
            at + (missing - seq) * interval
            for (seq, at), (after, _) in itertools.pairwise(replies)
            for missing in range(seq + 1, after)
        ]

    def stop(self) -> int:
        """Lost pings (ping's own count, without the requests still in flight)."""
        if self._lost is None:
            self.proc.send_signal(2)  # SIGINT: ping prints its summary
            self.proc.wait(timeout=10)
            self._out.close()
            self._lost = ping_losses(self.path.read_text(), float(PING_INTERVAL))[1]
        return self._lost


@contextlib.contextmanager
def workload_netns(name: str, ttl: int = 0) -> Iterator[str]:
    """A workload namespace for an endpoint the bench adds (loopback up; replies with `ttl`)."""
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        if ttl:
            sysctls = [f"net.ipv4.ip_default_ttl={ttl}", f"net.ipv6.conf.all.hop_limit={ttl}",
                       f"net.ipv6.conf.default.hop_limit={ttl}"]  # fmt: skip
            subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", *sysctls], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def run(plan: Plan, hosts: int = 3, memory_log: Path = MEMORY_LOG) -> dict[str, Any]:
    """One lab, both phases; the result without the host's part of the header."""
    header = guest_header(plan, hosts)  # the commit as the run starts
    topology = directory_topology(hosts=hosts, reflectors=hosts - 1)
    with (
        MemoryLog(memory_log),
        Lab(topology) as lab,
        tempfile.TemporaryDirectory() as work,
    ):
        workdir = Path(work)
        bench = Bench(lab, workdir)
        reader_binary = build_reader(workdir)
        bench.start()
        reader = RouteCount(lab, bench.host2.namespace, reader_binary,
                            [bench.mirror, bench.vrf, FLOOR_TABLE])  # fmt: skip
        bench.publish(reader, plan)
        reader.close()
        bench.start_agents()
        bench.add_to_reachable(plan.add_trials)
        bench.move_to_traffic(plan.move_trials)
        bench.env.agents.stop_all()  # a clean stop, checked
    result = {"header": header, **bench.result}
    return {key: result[key] for key in KEYS}


def unit_events(result: dict[str, Any], trials: int) -> None:
    """p50 / p99 of each event_cpu_ms row, from `routed-nv bench events`' delta measurement at
    the same number of routes: the real learn, agent loop and routing driver over an in-memory
    kernel, with this process's CPU clock (in a UML guest it ticks at 10 ms: no p99 there)."""
    from routed_nv.bench import events

    for row in result["event_cpu_ms"]:
        bench = events.Bench(row["routes"])
        row |= summary([bench.delta() * 1000 for _ in range(trials)])
        row["measured_by"] = "bench events (in-memory kernel)" + (
            " in the guest" if uml.in_guest() else " on the host"
        )


def guest_header(plan: Plan, hosts: int) -> dict[str, Any]:
    return {
        "mode": f"{hosts}-host/{hosts - 1}-RR",
        "sizes": {str(n): reps for n, reps in plan.sizes.items()},
        "trials": {
            "add": plan.add_trials,
            "move": plan.move_trials,
            "event": plan.event_trials,
            "unit_events": plan.unit_events,
        },
        "commit": commit(),
        "guest_kernel": os.uname().release,
        "guest_cpus": os.cpu_count(),
        "in_uml": uml.in_guest(),
    }


def uml_guests(proc: Path = Path("/proc")) -> int:
    """UML guests running on this host: distinct `umid=` values among the processes of a UML
    kernel (each guest runs many host processes, all with its kernel's command line)."""
    umids = set()
    for cmdline in proc.glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            args = cmdline.read_bytes().split(b"\0")
            if args and args[0].endswith((b"linux", b"linux.uml")):
                umids.update(a for a in args if a.startswith(b"umid="))
    return len(umids)


def commit() -> str | None:
    """The checkout's commit, `-dirty` when it has changes (None outside a git checkout)."""
    done = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                          text=True, check=False, cwd=Path(__file__).parent)  # fmt: skip
    return done.stdout.strip() or None


def host_header() -> dict[str, Any]:
    """What only the host sees: its load and the other UML guests (before ours boots)."""
    return {
        "host_load": list(os.getloadavg()),
        "other_uml_guests": uml_guests(),
        "host_cpus": os.cpu_count(),
    }


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


def table(result: dict[str, Any]) -> str:
    """The result as text for people (the JSON has it all)."""
    h = result["header"]
    lines = [
        f"{h['mode']}, commit {h.get('commit')}, host load {h.get('host_load')}, "
        f"other UML guests {h.get('other_uml_guests')}, guest {h['guest_kernel']}",
        f"agent start -> READY {result['ready_s']:.2f} s, -> in sync {result['in_sync_s']:.2f} s",
    ]
    for r in result["publish_to_vrf"]:
        lines.append(f"publish {r['routes']:,} -> VRF {r['seconds']:.2f} s, floor "
                     f"{r['floor_seconds']:.2f} s, ratio {r['ratio']:.2f}")  # fmt: skip
    for r in result["event_cpu_ms"]:
        lines.append(f"one change at {r['routes']:,}: agent CPU p50 {r['p50']:.2f} ms, "
                     f"p99 {r['p99']:.2f} ms; lab mean {r['lab']['mean_ms']:.1f} ms")  # fmt: skip
    lines.append(f"agent RSS per remote route {result['agent_rss_bytes_per_route']:.0f} B")
    for key in ("add_to_reachable_s", "move_to_traffic_s"):
        s = result[key]
        lines.append(f"{key}: p50 {s['p50']:.2f} s, p99 {s['p99']:.2f} s, n {s['n']}"
                     + (f", lost {s['lost_pings']}" if "lost_pings" in s else ""))  # fmt: skip
    return "\n".join(lines)


PROG = "routed-nv bench directory"


def main(argv: list[str] | None = None) -> int:
    """`argv`: the options (default: this process's); `routed-nv bench directory` passes its own."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sizes_given = parser.add_mutually_exclusive_group()
    sizes_given.add_argument("--quick", action="store_true", help="1,000 routes, few trials")
    sizes_given.add_argument("--full", action="store_true", help="10,000 and 100,000 (default)")
    sizes_given.add_argument(
        "--size", type=size, action="append", metavar="N[:REPS]", help="only these (repeatable)"
    )
    parser.add_argument("--hosts", type=int, choices=(2, 3), default=3,
                        help="3: 3 hosts, 2 route reflectors; 2: 2 hosts, 1")  # fmt: skip
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument(
        "--memory-log", type=Path, default=MEMORY_LOG, help="where the guest's memory went"
    )
    parser.add_argument("--guest-report", type=Path, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.size:
        plan = dataclasses.replace(plan, sizes=dict(args.size))
    host = host_header() if not uml.in_guest() else {}
    if args.guest_report is not None:
        args.guest_report.write_text(json.dumps(run(plan, args.hosts, args.memory_log)))
        return 0
    if uml.needs_uml():
        # 100,000 routes: BIRD on every node, the agent's view and routing cache
        large = max(plan.sizes) > 10_000
        mem = "6G" if large else "1G"
        if large and (advice := uml.map_count_advice(mem)):  # host2's agent: ~375 MB at 100k
            print(f"routed-nv: warning: {advice}", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="rnvd-", dir="/var/tmp") as workdir:
            report = Path(workdir) / "report.json"
            command = [sys.executable, "-m", "routed_nv.bench.directory", *argv,
                       "--guest-report", str(report)]  # fmt: skip
            rc = uml.run_in_uml(command, cwd=Path.cwd(), timeout=7200, mem=mem)
            if rc != 0 or not report.exists():
                print(f"routed-nv: the benchmark in the UML guest failed (exit status {rc})",
                      file=sys.stderr)  # fmt: skip
                return 1
            result = json.loads(report.read_text())
    else:
        result = run(plan, args.hosts, args.memory_log)
    unit_events(result, plan.unit_events)  # after the guest: it would compete with it
    result["header"].update(host)
    if host:
        result["header"]["host_load_end"] = list(os.getloadavg())
    print(json.dumps(result, indent=2) if args.output == "json" else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
