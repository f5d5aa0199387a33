"""An agent killed (-9) in the middle of a large change, then started again, on a real kernel
(issue 14 item 7). The agent lab of test_agent_kernel.py (3 hosts, static directory).

host1 gets 100 new netns endpoints at once (a drop-in and SIGHUP) and is killed while it applies
them; the restarted agent's first apply must restore all of them without an error. Before, that
apply failed (`RuntimeError: child process is dead`, from pyroute2 forking a child per network
namespace it opened) and the retry took 211 s; the seconds to READY=1 are printed (docs/agent.md).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator

import pytest
import test_agent_kernel
from test_agent_kernel import AGENT_ARGS, Env
from test_datapath_scenario import ns, sh

from routed_nv.lab.agents import READY_TIMEOUT_S
from routed_nv.model import markers
from routed_nv.routing.netlink import NetlinkKernel

pytestmark = pytest.mark.kernel
# that module's agent lab, a module-scoped fixture: built anew for this module
agent_lab = test_agent_kernel.env

COUNT = 100
NETNS = [f"rnv-lab-k{i:03d}" for i in range(COUNT)]  # the lab prefix: `lab down` cleans them up


def drop_in() -> str:
    return "".join(
        f'[endpoints.k{i:03d}]\ntenant = "blue"\nnetns = "{name}"\n'
        f'addresses = ["10.0.0.{100 + i}", "fd10::{100 + i:x}"]\n\n'
        for i, name in enumerate(NETNS)
    )


@contextlib.contextmanager
def namespaces(names: list[str] = NETNS) -> Iterator[None]:
    """Empty network namespaces (loopback up) for netns endpoints, deleted afterwards."""
    script = "".join(f"ip netns add {n} && ip -n {n} link set lo up\n" for n in names)
    try:
        subprocess.run(["sh", "-ec", script], check=True)
        yield
    finally:
        subprocess.run(["sh", "-c", "".join(f"ip netns del {n}\n" for n in names)], check=False)


def endpoint_links(env: Env) -> int:
    out = sh(env.lab, ns("host1"), "ip -o link show")
    return out.count(f"{markers.ENDPOINT_LINK_PREFIX}k")


def test_a_killed_agent_restores_100_netns_endpoints_at_its_first_apply(agent_lab: Env) -> None:
    env = agent_lab
    agent = env.agents["host1"]
    extra = agent.config_path.parent / "conf.d" / "50-kill-test.toml"
    extra.parent.mkdir(exist_ok=True)
    with namespaces():
        try:
            extra.write_text(drop_in())
            assert agent.proc is not None
            agent.proc.send_signal(1)  # SIGHUP: apply the 100 new endpoints
            agent.until("RELOADING")
            deadline = time.monotonic() + READY_TIMEOUT_S
            while (made := endpoint_links(env)) < COUNT // 5:  # well into the change
                assert time.monotonic() < deadline, agent.log()[-2000:]
                time.sleep(0.05)
            agent.proc.kill()
            agent.proc.wait(timeout=30)
            logged = len(agent.log())
            ready = agent.start(*AGENT_ARGS)
            print(f"\nkilled after {made} of {COUNT} endpoints; restart -> READY=1: {ready:.1f} s")
            applies = [x for x in agent.log()[logged:].splitlines() if x.startswith("agent.apply ")]
            assert applies[0].startswith("agent.apply ok=true "), agent.log()[logged:][-3000:]
            assert agent.status()["datapath"]["local_endpoints"] == 2 + COUNT
            assert endpoint_links(env) == COUNT
            # one of the last endpoints answers from its namespace through host1
            last = NETNS[-1]
            done = sh(env.lab, last, "ip -4 route; ping -c 2 -i 0.2 -W 2 169.254.0.1")
            assert " 0% packet loss" in done, done
        finally:
            extra.unlink(missing_ok=True)
            agent.proc.send_signal(1)
            agent.until("READY")
    assert endpoint_links(env) == 0


def test_opening_a_namespace_forks_no_process(
    agent_lab: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyroute2's netns= forked a child per namespace (the `child process is dead` above)."""

    def no_fork() -> int:
        raise AssertionError("forked a process to open a network namespace")

    monkeypatch.setattr(os, "fork", no_fork)
    kernel = NetlinkKernel(ns("host1"))
    try:
        assert markers.HOST_DEVICE in {link.name for link in kernel.links()}
        assert kernel.read_sysctl("net/ipv4/ip_forward") in ("0", "1")
    finally:
        kernel.close()
