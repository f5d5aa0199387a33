"""Local endpoints at scale through the endpoint API, on a real kernel (issue 16), in quick form:
50 concurrent API adds all programmed at their answer and reachable from a peer, restored by a
restarted agent after their veths were lost, deleted again by 50 concurrent clients; and every
add and delete rewrote only that endpoint's rules: the netfilter counters of an endpoint that
was there all along keep counting. The agent lab of test_agent_kernel.py (3 hosts, static
directory). Behaviour only: `routed-nv bench endpoints` measures the times. A resync enters only
a rotating share of the workload namespaces: a default route deleted inside one of the 50 comes
back within K resyncs."""

from __future__ import annotations

import contextlib
import math
import re
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import test_agent_kernel
from test_agent_kernel import AGENT_ARGS, Env
from test_agent_kill_kernel import namespaces
from test_datapath_scenario import ns, sh

from routed_nv.agent.control import SOCKET_NAME, ControlError, ask
from routed_nv.calc.netfilter import DISPATCH, SRC_PREFIX
from routed_nv.model import markers
from routed_nv.routing.driver import ROTATE_NAMESPACES

pytestmark = pytest.mark.kernel
scale_lab = test_agent_kernel.env  # that module's agent lab, built anew for this module

COUNT = 50
NAMES = [f"s{i}" for i in range(COUNT)]
ADDRESS = {n: f"10.0.0.{200 + i}" for i, n in enumerate(NAMES)}


def at_once(call: Callable[[str], Any]) -> dict[str, str]:
    """`call(name)` for every endpoint, all at once: name -> "ok" or what went wrong."""
    outcome: dict[str, str] = {}

    def client(name: str) -> None:
        try:
            call(name)
            outcome[name] = "ok"
        except Exception as exc:  # reported per client
            outcome[name] = f"{type(exc).__name__}: {exc}"

    threads = [threading.Thread(target=client, args=(n,)) for n in NAMES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return outcome


def counters(env: Env, chain: str, rule: str) -> int:
    """Packets counted by the first rule of `chain` in host1's raw table whose line has `rule`."""
    out = sh(env.lab, ns("host1"), f"iptables-legacy -t raw -L {chain} -v -x -n")
    for line in out.splitlines()[2:]:
        if rule in line:
            return int(line.split()[0])
    raise AssertionError(f"no rule with {rule!r} in {chain}:\n{out}")


def endpoint_links(env: Env) -> set[str]:
    out = sh(env.lab, ns("host1"), "ip -o link show")
    return set(re.findall(rf"{markers.ENDPOINT_LINK_PREFIX}(s\d+)@", out))


def unreachable(env: Env, names: list[str]) -> list[str]:
    script = "".join(f"ping -c 1 -W 3 {ADDRESS[n]} >/dev/null || echo {n}\n" for n in names)
    return sh(env.lab, ns("blue2"), script).split()


def resynced(env: Env, repaired: Callable[[], bool], k: int) -> int:
    """Asks host1's agent for up to `k` resyncs, each waited for in its log, until `repaired()`;
    how many it took (k + 1: never)."""
    agent = env.agents["host1"]
    for n in range(1, k + 1):
        offset = len(agent.log())
        ask(agent.run_dir / SOCKET_NAME, {"request": "resync"})
        deadline = time.monotonic() + 300  # a hang guard, not a timing assertion
        while not re.search(r"^agent\.apply .*trigger=\S*resync", agent.log()[offset:], re.M):
            assert time.monotonic() < deadline, "no resync apply logged"
            time.sleep(0.5)
        if repaired():
            return n
    return k + 1


def test_fifty_concurrent_adds_programmed_reachable_restored_and_only_their_rules_rewritten(
    scale_lab: Env,
) -> None:
    env = scale_lab
    host1, host2 = env.agents["host1"], env.agents["host2"]
    sock = host1.run_dir / SOCKET_NAME
    blue1 = next(w for w in env.lab.lab.topology.workloads if w.name == "blue1")
    own_chain = SRC_PREFIX + blue1.host_link

    def pinged_blue1() -> tuple[int, int]:
        """blue1 pings its gateway; (its source chain's first rule, its dispatch rule)."""
        assert " 0% packet loss" in sh(env.lab, ns("blue1"), "ping -c 3 -i 0.2 169.254.0.1")
        return counters(env, own_chain, "RNV-HOST"), counters(env, DISPATCH, blue1.host_link)

    def add(name: str) -> None:
        ask(sock, {"request": "endpoint.add", "id": name, "tenant": "blue",
                   "addresses": [ADDRESS[name]], "netns": ns(name), "timeout": 300},
            timeout=330)  # fmt: skip
        # the answer means programmed: the route is in the VRF now
        route = sh(env.lab, ns("host1"), f"ip route show vrf rnv-v100 {ADDRESS[name]}")
        assert f"{markers.ENDPOINT_LINK_PREFIX}{name}" in route, route

    def delete(name: str) -> None:
        ask(sock, {"request": "endpoint.delete", "id": name, "timeout": 300}, timeout=330)

    host2_original = host2.config_path.read_text()
    first = pinged_blue1()
    with namespaces([ns(n) for n in NAMES]):
        try:
            assert at_once(add) == dict.fromkeys(NAMES, "ok")
            assert endpoint_links(env) == set(NAMES)
            after_adds = pinged_blue1()
            # blue1's rules were not rewritten by 50 changes: their counters kept counting
            assert all(a > b for a, b in zip(after_adds, first, strict=True)), (first, after_adds)

            # drift inside one workload namespace of many: back within K resyncs
            drifted = ns(NAMES[COUNT // 2])
            sh(env.lab, drifted, "ip route del default")
            k = math.ceil((COUNT + 2) / ROTATE_NAMESPACES)  # and blue1, red1

            def back() -> bool:
                return "default" in sh(env.lab, drifted, "ip route show")

            assert resynced(env, back, k) <= k

            host2.config_path.write_text(
                host2_original
                + "".join(
                    f'\n[remote_endpoints.{n}]\ntenant = "blue"\naddresses = ["{ADDRESS[n]}"]\n'
                    'host = "host1"\n'
                    for n in NAMES
                )
            )
            host2.reload()
            assert unreachable(env, NAMES) == []

            # a restarted agent restores them from its store, veths lost meanwhile
            assert host1.stop() == 0
            lost = "".join(f"link del {markers.ENDPOINT_LINK_PREFIX}{n}\n" for n in NAMES)
            subprocess.run(["ip", "-n", ns("host1"), "-batch", "-"], input=lost, text=True,
                           check=True)  # fmt: skip
            assert endpoint_links(env) == set()
            host1.start(*AGENT_ARGS)
            assert endpoint_links(env) == set(NAMES)
            assert host1.status()["datapath"]["local_endpoints"] == 2 + COUNT
            assert unreachable(env, NAMES) == []

            before_deletes = pinged_blue1()
            assert at_once(delete) == dict.fromkeys(NAMES, "ok")
            assert endpoint_links(env) == set()
            chains = sh(env.lab, ns("host1"), "iptables-legacy-save -t raw")
            assert f"{SRC_PREFIX}{markers.ENDPOINT_LINK_PREFIX}s" not in chains
            after_deletes = pinged_blue1()
            assert all(a > b for a, b in zip(after_deletes, before_deletes, strict=True))
        finally:
            for name in NAMES:  # whatever a failure left: through the API
                with contextlib.suppress(ControlError, OSError):
                    delete(name)
            host2.config_path.write_text(host2_original)
            host2.reload()
