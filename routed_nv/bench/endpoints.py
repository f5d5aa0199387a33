"""Benchmark of local endpoints at scale, in the BGP lab (issue 16).

Netns endpoints added and deleted in one burst through host1's endpoint API, the no-op resync
with many local endpoints, and endpoints restored by a restarted agent, in the BGP lab (3 hosts,
2 route reflectors, an agent per host).

    python -m routed_nv.bench.endpoints [--quick] [-o json]

Timed by the tools, not by a Python loop polling the guest's one CPU: the API's answers (each
means "programmed on host1"; the clients sleep in recv), `ip -ts monitor route` on host2 (its
VRF route via the tenant tunnel: the peer has it) and on host1 (restore), the agent's own
`agent.apply ... seconds=` log lines (no-op applies) and sd_notify READY=1. The bench reads the
monitors' files every POLL_S while it waits. The header says how loaded the machine was: UML
speeds are not a machine's, and other helpers' guests share the CPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from routed_nv.agent.control import SOCKET_NAME, ask
from routed_nv.config.model import Config
from routed_nv.lab import uml
from routed_nv.lab.bgp_agents import BgpAgents
from routed_nv.lab.builder import Lab, LabError
from routed_nv.lab.topology import directory_topology
from routed_nv.model import markers

PROG = "routed-nv bench endpoints"
TENANT, TENANT_ID = "blue", 100
SPACE = ipaddress.IPv4Network("10.64.0.0/16")  # added to blue on every host
NETNS_PREFIX = "rnv-lab-x"  # the lab's prefix: `routed-nv lab down` removes what a crash left
CLIENTS = 25  # concurrent API clients (a CNI runtime starting pods)
POLL_S = 0.25  # how often a monitor's file is read while waiting
WAIT_S = 900.0  # for any one wait: a loaded guest is slow, not stuck
HOST_ENV = "ROUTED_NV_BENCH_HOST"  # the machine's load, measured outside the guest


@dataclass(frozen=True)
class Sizes:
    burst: int  # endpoints added (then deleted) in one burst
    restore: int  # endpoints a restarted agent restores
    noop: int  # local endpoints present for the no-op applies
    noop_reps: int


QUICK = Sizes(burst=50, restore=30, noop=200, noop_reps=5)
FULL = Sizes(burst=200, restore=100, noop=1000, noop_reps=5)


@dataclass
class Report:
    header: dict[str, Any] = field(default_factory=dict)
    burst_s: dict[str, Any] = field(default_factory=dict)
    delete_s: dict[str, Any] = field(default_factory=dict)
    restore_s: dict[str, Any] = field(default_factory=dict)
    noop_apply_s: dict[str, Any] = field(default_factory=dict)


def address(i: int) -> str:
    return str(SPACE[i + 1])


def name(i: int) -> str:
    return f"x{i}"


def netns(i: int) -> str:
    return f"{NETNS_PREFIX}{i}"


class Monitor:
    """`ip -ts monitor route` in one namespace, into a file; lines parsed on demand."""

    def __init__(self, namespace: str, path: Path) -> None:
        self.path = path
        self._out = path.open("wb")
        self.proc = subprocess.Popen(
            ["ip", "-n", namespace, "-ts", "monitor", "route"], stdout=self._out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def events(self, dev_prefix: str) -> list[tuple[float, bool, str]]:
        """(wall time, added, destination) of each route in SPACE on a device whose name starts
        with dev_prefix (host2: the tenant tunnel, the VRF route; host1: the endpoint's veth)."""
        found = []
        for line in self.path.read_text(errors="replace").splitlines():
            m = re.match(r"\[([^\]]+)\]\s*(Deleted )?(\S+) .*\bdev (\S+)", line)
            if not m or not m.group(4).startswith(dev_prefix):
                continue
            dst = m.group(3).split("/")[0]
            with contextlib.suppress(ValueError):
                if ipaddress.ip_address(dst) in SPACE:
                    when = datetime.fromisoformat(m.group(1)).timestamp()
                    found.append((when, m.group(2) is None, dst))
        return found

    def until(self, dev_prefix: str, wanted: set[str], added: bool, since: float) -> float:
        """Seconds from `since` (wall) to the last of `wanted` reaching the state (the first
        such event of each after `since`)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            first: dict[str, float] = {}
            for when, is_add, dst in self.events(dev_prefix):
                if when >= since and is_add == added and dst in wanted:
                    first.setdefault(dst, when)
            if len(first) == len(wanted):
                return max(first.values()) - since
            if time.monotonic() > deadline:
                raise LabError(f"{len(wanted) - len(first)} of {len(wanted)} routes never seen")
            time.sleep(POLL_S)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self._out.close()


class Bench:
    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.env = _Agents(lab, workdir)
        self.host1 = lab.topology.host("host1").namespace
        self.host2 = lab.topology.host("host2").namespace
        self.workdir = workdir
        self.present: set[int] = set()  # endpoints added through the API
        self.namespaces: set[int] = set()

    @property
    def agent(self) -> Any:
        return self.env.agents["host1"]

    @property
    def sock(self) -> Path:
        return Path(self.agent.run_dir) / SOCKET_NAME

    def start(self) -> None:
        self.env.start()
        self.env.wait_converged()

    def make_namespaces(self, indexes: range) -> None:
        new = [i for i in indexes if i not in self.namespaces]
        script = "".join(
            f"ip netns add {netns(i)} && ip -n {netns(i)} link set lo up\n" for i in new
        )
        subprocess.run(["sh", "-ec", script], check=True)
        self.namespaces.update(new)

    def remove_namespaces(self) -> None:
        script = "".join(f"ip netns del {netns(i)}\n" for i in self.namespaces)
        subprocess.run(["sh", "-c", script], check=False)
        self.namespaces.clear()

    def _burst(self, indexes: list[int], verb: str) -> tuple[float, float, list[str]]:
        """CLIENTS threads at once, each asking for its share in turn: (wall start, seconds to
        the last answer, errors)."""
        errors: list[str] = []

        def client(mine: list[int]) -> None:
            for i in mine:
                request: dict[str, Any] = {"request": f"endpoint.{verb}", "id": name(i),
                                           "timeout": 600}  # fmt: skip
                if verb == "add":
                    request.update(tenant=TENANT, addresses=[address(i)], netns=netns(i))
                try:
                    ask(self.sock, request, timeout=660)
                except Exception as exc:  # reported, and the bench fails
                    errors.append(f"{name(i)}: {type(exc).__name__}: {exc}")

        shares = [indexes[k::CLIENTS] for k in range(CLIENTS)]
        threads = [threading.Thread(target=client, args=(s,)) for s in shares if s]
        start, clock = time.time(), time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return start, time.monotonic() - clock, errors

    def applies_since(self, offset: int) -> list[dict[str, str]]:
        """host1's agent.apply lines written after `offset` characters of its log."""
        lines = self.agent.log()[offset:].splitlines()
        return [dict(re.findall(r"(\w+)=(\S+)", x)) for x in lines if x.startswith("agent.apply ")]

    def burst(self, indexes: list[int], verb: str, peer: Monitor) -> dict[str, Any]:
        offset = len(self.agent.log())
        start, answered, errors = self._burst(indexes, verb)
        if errors:
            raise LabError(f"endpoint.{verb}: {len(errors)} failed, e.g. {errors[:3]}")
        wanted = {address(i) for i in indexes}
        to_peer = peer.until(markers.tunnel_name(TENANT_ID), wanted, verb == "add", start)
        (self.present.update if verb == "add" else self.present.difference_update)(indexes)
        applies = self.applies_since(offset)
        return {
            "endpoints": len(indexes),
            "clients": CLIENTS,
            "to_programmed_local_s" if verb == "add" else "to_deleted_local_s": round(answered, 3),
            "to_peer_vrf_s" if verb == "add" else "gone_from_peer_vrf_s": round(to_peer, 3),
            "applies": len(applies),
            "apply_seconds_max": max((float(a["seconds"]) for a in applies), default=0.0),
            "apply_seconds_sum": round(sum(float(a["seconds"]) for a in applies), 3),
        }

    def restore(self, count: int, local: Monitor, peer: Monitor) -> dict[str, Any]:
        """Stop host1's agent, delete the endpoints' veths (what a reboot of the workloads'
        network would leave), start it: READY=1 and every endpoint's VRF route back."""
        assert len(self.present) >= count
        restored = sorted(self.present)[:count]
        gone = sorted(self.present)[count:]
        if gone:
            self.burst(gone, "delete", peer)
        agent = self.agent
        assert agent.stop() == 0
        batch = "".join(f"link del {markers.ENDPOINT_LINK_PREFIX}{name(i)}\n" for i in restored)
        subprocess.run(["ip", "-n", self.host1, "-batch", "-"], input=batch, text=True,
                       check=True)  # fmt: skip
        start = time.time()
        ready = agent.start(*AGENT_ARGS)
        wanted = {address(i) for i in restored}
        programmed = local.until(markers.ENDPOINT_LINK_PREFIX, wanted, True, start)
        return {"endpoints": count, "to_ready_s": round(ready, 3),
                "to_programmed_s": round(programmed, 3)}  # fmt: skip

    def noop(self, reps: int) -> dict[str, Any]:
        """Resyncs asked for on the control socket with nothing to change: the agent's own
        seconds for each (its log line), never a timer around it."""
        seconds = []
        for _ in range(reps):
            offset = len(self.agent.log())
            ask(self.sock, {"request": "resync"})
            deadline = time.monotonic() + WAIT_S
            # "resync" alone, or with what else was pending ("resync,retry")
            while not (done := [a for a in self.applies_since(offset)
                                if "resync" in a.get("trigger", "").split(",")]):  # fmt: skip
                if time.monotonic() > deadline:
                    raise LabError("no resync apply logged")
                time.sleep(POLL_S)
            if done[0]["changes"] != "0" or done[0]["ok"] != "true":
                errors = [x for x in self.agent.log()[offset:].splitlines()
                          if x.startswith("agent.apply.error")][:5]  # fmt: skip
                raise LabError(f"a no-op resync changed something or failed: {done[0]} {errors}")
            seconds.append(float(done[0]["seconds"]))
        return {"endpoints": len(self.present), "p50": round(statistics.median(seconds), 3),
                "p99": round(p99(seconds), 3), "n": len(seconds)}  # fmt: skip


AGENT_ARGS = ("--resync-interval", "600")  # the no-op applies are asked for, not waited for


class _Agents(BgpAgents):
    """The BGP lab with SPACE in blue's IPv4 subnets on every host."""

    def _bgp_config(self, host: str, config: Config) -> Config:
        config = super()._bgp_config(host, config)
        tenant = config.tenants[TENANT]
        wider = tenant.model_copy(update={"ipv4": [*tenant.ipv4, SPACE]})
        return config.model_copy(update={"tenants": {**config.tenants, TENANT: wider}})

    def start(self, *agent_args: str) -> dict[str, float]:
        return super().start(*AGENT_ARGS, *agent_args)


def p99(values: list[float]) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def host_header() -> dict[str, Any]:
    """What the machine was doing (outside any guest): load, other UML guests, the commit."""
    load = Path("/proc/loadavg").read_text().split()[:3]
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=False)
    guests = {m for m in re.findall(r"umid=(\S+)", ps.stdout)}
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                            text=True, check=False).stdout.strip()  # fmt: skip
    return {"host_load": [float(x) for x in load], "host_cpus": os.cpu_count(),
            "uml_guests_running": len(guests), "commit": commit or "unknown"}  # fmt: skip


def run(sizes: Sizes, header: dict[str, Any]) -> Report:
    report = Report(header={**header, "guest_kernel": platform.release(), "sizes": asdict(sizes)})
    with Lab(directory_topology()) as lab, tempfile.TemporaryDirectory() as work:
        bench = Bench(lab, Path(work))
        try:
            bench.start()
            peer = Monitor(bench.host2, Path(work) / "host2.monitor")
            local = Monitor(bench.host1, Path(work) / "host1.monitor")
            try:
                burst = list(range(sizes.burst))
                bench.make_namespaces(range(max(sizes.burst, sizes.noop)))
                report.burst_s = bench.burst(burst, "add", peer)
                _say(f"burst: {report.burst_s}")
                report.delete_s = bench.burst(burst, "delete", peer)
                _say(f"delete: {report.delete_s}")
                fill = list(range(sizes.noop))
                filled = bench.burst(fill, "add", peer)
                _say(f"filled to {sizes.noop}: {filled}")
                report.noop_apply_s = bench.noop(sizes.noop_reps)
                _say(f"no-op: {report.noop_apply_s}")
                report.restore_s = bench.restore(sizes.restore, local, peer)
                _say(f"restore: {report.restore_s}")
                bench.burst(sorted(bench.present), "delete", peer)
            finally:
                peer.close()
                local.close()
            bench.env.agents.stop_all()
        finally:
            bench.remove_namespaces()
    return report


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def table(report: Report) -> str:
    h = report.header
    lines = [
        f"commit {h.get('commit')}, guest kernel {h.get('guest_kernel')}, host load "
        f"{h.get('host_load')} on {h.get('host_cpus')} CPUs, other UML guests running: "
        f"{h.get('uml_guests_running')}",
        "",
        "| what | endpoints | seconds | goal |",
        "|---|---:|---|---|",
        f"| burst add → all programmed on host1 (API answers) | {report.burst_s['endpoints']} | "
        f"{report.burst_s['to_programmed_local_s']} | |",
        f"| burst add → all in host2's VRF | {report.burst_s['endpoints']} | "
        f"{report.burst_s['to_peer_vrf_s']} | < 20 s at 200 |",
        f"| burst delete → all answered | {report.delete_s['endpoints']} | "
        f"{report.delete_s['to_deleted_local_s']} | |",
        f"| burst delete → gone from host2's VRF | {report.delete_s['endpoints']} | "
        f"{report.delete_s['gone_from_peer_vrf_s']} | |",
        f"| no-op resync, p50 / p99 | {report.noop_apply_s['endpoints']} | "
        f"{report.noop_apply_s['p50']} / {report.noop_apply_s['p99']} | < 0.5 s at 1,000 |",
        f"| restart → READY=1 | {report.restore_s['endpoints']} | "
        f"{report.restore_s['to_ready_s']} | |",
        f"| restart → all restored | {report.restore_s['endpoints']} | "
        f"{report.restore_s['to_programmed_s']} | < 10 s at 100 |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK.burst}-endpoint burst, {QUICK.noop} for the no-op, "
                        f"{QUICK.restore} restored (default: {FULL.burst}, {FULL.noop}, "
                        f"{FULL.restore})")  # fmt: skip
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if uml.needs_uml():
        command = [sys.executable, "-m", "routed_nv.bench.endpoints", *argv]
        header = json.dumps(host_header())
        mem = "1G" if args.quick else "2G"  # a netns with its veth pair is ~0.5-1 MB in UML
        return uml.run_in_uml(command, cwd=Path.cwd(), timeout=7200, mem=mem,
                              env={HOST_ENV: header})  # fmt: skip
    header = json.loads(os.environ[HOST_ENV]) if HOST_ENV in os.environ else host_header()
    report = run(sizes, header)
    print(json.dumps(asdict(report), indent=2) if args.output == "json" else table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
