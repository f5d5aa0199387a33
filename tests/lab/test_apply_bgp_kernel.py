"""`routed-nv apply` on hosts whose directory is BGP, on a real kernel (issue 14 item 6).

The BGP lab of test_bgp_agent_kernel.py (3 hosts, 2 route reflectors, one agent per host, no
static remote endpoints). apply used to plan from the static entries and so would have deleted
every remote route the agent learned; it now plans with the agent's view, or refuses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from test_bgp_agent_kernel import reach
from test_datapath_scenario import ns, sh

from routed_nv import markers
from routed_nv.lab.agents import ROUTED_NV
from routed_nv.lab.bgp_agents import BgpAgents
from routed_nv.lab.builder import Lab
from routed_nv.lab.checks import tenant_matrix
from routed_nv.lab.topology import directory_topology

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BgpAgents]:
    workdir = tmp_path_factory.mktemp("apply-bgp")
    with Lab(directory_topology()) as built:
        env = BgpAgents(built, workdir)
        started = time.monotonic()
        env.start()
        for host in ("blue2", "blue3"):
            reach(env, host, "10.0.0.1", started)
        yield env
        env.agents.stop_all()


def apply(env: BgpAgents, host: str, *args: str) -> tuple[int, str, str]:
    agent = env.agents[host]
    # the run dir as --run-dir's variable: the command line an operator types, unchanged
    argv = ["env", f"ROUTED_NV_RUN_DIR={agent.run_dir}", *ROUTED_NV, "apply"]
    argv += ["-c", str(agent.config_path), *args]
    done = env.datapath.lab.exec(agent.namespace, argv, timeout=300)
    return done.returncode, done.stdout, done.stderr


def learned(env: BgpAgents, host: str) -> str:
    remote = markers.RTPROT_REMOTE
    return sh(env.datapath, ns(host), f"ip -4 route show table all proto {remote}; "
              f"ip -6 route show table all proto {remote}")  # fmt: skip


def test_dry_run_and_apply_on_a_converged_bgp_host_change_nothing(env: BgpAgents) -> None:
    before = learned(env, "host1")
    assert "10.0.0.2" in before and "10.0.0.3" in before, before  # blue2, blue3: from BGP
    code, out, err = apply(env, "host1", "--dry-run")
    assert (code, err) == (0, ""), out + err
    assert out.startswith("to change: netfilter 0 ("), out
    code, out, err = apply(env, "host1")
    assert (code, err) == (0, ""), out + err
    assert [line for line in out.splitlines() if not line.startswith("changed: ")] == [], out
    assert "xfrm 0 (" in out and "routing 0 (" in out, out
    assert learned(env, "host1") == before
    assert [r for r in tenant_matrix(env.datapath.lab) if not r.ok] == []


def test_apply_refuses_while_the_agent_is_stopped(env: BgpAgents) -> None:
    before = learned(env, "host1")
    agent = env.agents["host1"]
    assert agent.stop() == 0
    try:
        for args in (["--dry-run"], []):
            code, out, err = apply(env, "host1", *args)
            assert (code, out) == (2, ""), err
            assert 'directory.source is "bgp"' in err and "no agent answers" in err, err
        assert learned(env, "host1") == before
    finally:
        agent.start()
