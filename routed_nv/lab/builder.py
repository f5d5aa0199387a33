"""Builds a topology as network namespaces, and tears down exactly what it built.

One namespace per underlay node, one for the underlay router, one per workload. The build is a
few `ip -batch` runs (one `ip` process per namespace instead of one per object: each `ip` costs
~70 ms in the UML guest). Tenant datapath (VRFs, tenant addresses and routes) is not built here,
nor are a BGP underlay's routes (lab/bird.py starts the BIRDs that learn them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from routed_nv.errors import RoutedNvError
from routed_nv.lab.topology import (
    NODE_LINK_LOCAL,
    NS_PREFIX,
    ROUTER_LINK_LOCAL,
    UPLINK,
    WORKLOAD_IFNAME,
    Topology,
)

IP = "ip"
_SYSCTLS = (
    "net.ipv6.conf.all.forwarding=1",
    "net.ipv4.ip_forward=1",
    # Static addresses are unique by construction: skip the 1-2 s of duplicate detection.
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
)
_STOP_GRACE_S = 2.0


class LabError(RoutedNvError, RuntimeError):
    pass


@dataclass(frozen=True)
class BuildPlan:
    namespaces: list[str]
    forwarding: list[str]  # namespaces that get the forwarding sysctls
    batches: list[tuple[str, list[str]]]  # (namespace, `ip -batch` lines), in order


def plan(topology: Topology) -> BuildPlan:
    """The whole build as data: namespaces, sysctls and `ip -batch` lines per namespace."""
    router: list[str] = []
    for node in topology.underlay_nodes:
        link = node.router_link
        router += [
            f"link add {link} type veth peer name {UPLINK} netns {node.namespace}",
            f"link set {link} up",
            f"addr add {ROUTER_LINK_LOCAL}/64 dev {link} nodad",
        ]
    batches = [(topology.router_namespace, ["link set lo up", *router])]
    for node in topology.underlay_nodes:
        lines = [
            "link set lo up",
            f"link set {UPLINK} up",
            f"addr add {NODE_LINK_LOCAL}/64 dev {UPLINK} nodad",
            f"addr add {node.uplink_address}/128 dev {UPLINK} nodad",
        ]
        if not topology.bgp_underlay:
            lines.append(f"route add {topology.aggregate} via {ROUTER_LINK_LOCAL} dev {UPLINK}")
        for w in topology.workloads_on(node.name):
            lines += [
                f"link add {w.host_link} type veth peer name {WORKLOAD_IFNAME} netns {w.namespace}",
                f"link set {w.host_link} up",
            ]
        batches.append((node.namespace, lines))
    # Routes to the nodes once both ends of every uplink are up (a BGP underlay learns them).
    if not topology.bgp_underlay:
        batches.append(
            (
                topology.router_namespace,
                [
                    f"route add {n.prefix} via {NODE_LINK_LOCAL} dev {n.router_link}"
                    for n in topology.underlay_nodes
                ],
            )
        )
    batches += [
        (w.namespace, ["link set lo up", f"link set {WORKLOAD_IFNAME} up"])
        for w in topology.workloads
    ]
    forwarding = [topology.router_namespace, *(n.namespace for n in topology.underlay_nodes)]
    return BuildPlan(topology.namespaces, forwarding, batches)


def _ip(args: Sequence[str], batch: Sequence[str] = ()) -> str:
    done = subprocess.run(
        [IP, *args], input="\n".join(batch) + "\n", capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise LabError(f"ip {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def ip_batch(namespace: str, lines: Sequence[str]) -> None:
    """Run `ip` commands in a namespace with one process (each process costs ~70 ms in UML)."""
    _ip(["-n", namespace, "-batch", "-"], lines)


def lab_namespaces() -> list[str]:
    """Namespaces on this machine that carry the lab's prefix."""
    names = (line.split()[0] for line in _ip(["netns", "list"]).splitlines() if line.strip())
    return [n for n in names if n.startswith(NS_PREFIX)]


def delete_namespaces(names: Sequence[str]) -> None:
    if names:
        _ip(["-force", "-batch", "-"], [f"netns del {n}" for n in names])


def remove_leftovers() -> list[str]:
    """Remove every `rnv-lab-` namespace left by an earlier run, and the processes inside them.

    Only lab runs create namespaces with that prefix, so whatever runs in them was started by one.
    """
    names = lab_namespaces()
    for ns in names:
        for pid in _ip(["netns", "pids", ns]).split():
            _kill(int(pid))
    delete_namespaces(names)
    return names


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


class Lab:
    """A built topology. Use as a context manager, or call build() and teardown()."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.namespaces: list[str] = []  # only what this instance created
        self._processes: list[subprocess.Popen[bytes]] = []

    def build(self) -> Lab:
        leftovers = lab_namespaces()
        if leftovers:
            raise LabError(
                f"leftover lab namespaces {', '.join(leftovers)}: remove them with "
                "`routed-nv lab down`"
            )
        build_plan = plan(self.topology)
        try:
            _ip(["-batch", "-"], [f"netns add {n}" for n in build_plan.namespaces])
            self.namespaces = list(build_plan.namespaces)
            for ns in build_plan.forwarding:
                self.exec(ns, ["sysctl", "-qw", *_SYSCTLS], check=True)
            for ns, lines in build_plan.batches:
                ip_batch(ns, lines)
        except BaseException:
            self.teardown()
            raise
        return self

    def exec(
        self, namespace: str, argv: Sequence[str], *, check: bool = False, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in one of the lab's namespaces and wait for it."""
        done = subprocess.run(
            [IP, "netns", "exec", namespace, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise LabError(f"{namespace}: {' '.join(argv)} failed: {done.stderr.strip()}")
        return done

    def spawn(
        self, namespace: str, argv: Sequence[str], **popen: object
    ) -> subprocess.Popen[bytes]:
        """Start a long-running process in a namespace; teardown stops it (by its pid)."""
        proc = subprocess.Popen([IP, "netns", "exec", namespace, *argv], **popen)  # type: ignore[call-overload]
        self._processes.append(proc)
        return proc

    def teardown(self) -> None:
        for proc in self._processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self._processes:
            try:
                proc.wait(timeout=_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._processes.clear()
        delete_namespaces(self.namespaces)
        self.namespaces = []

    def __enter__(self) -> Lab:
        return self.build()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.teardown()
