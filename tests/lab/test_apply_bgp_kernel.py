"""`routed-nv apply` on hosts whose directory is BGP, on a real kernel (issue 14 item 6).

The BGP lab of test_bgp_agent_kernel.py (3 hosts, 2 route reflectors, one agent per host, no
static remote endpoints). apply used to plan from the static entries and so would have deleted
every remote route the agent learned; it now plans with the agent's view, or refuses.
"""

from __future__ import annotations

import pytest
import test_bgp_agent_kernel
from test_datapath_scenario import ns, sh

from routed_nv.lab.agents import ROUTED_NV
from routed_nv.lab.bgp_agents import BgpAgents
from routed_nv.lab.checks import tenant_matrix
from routed_nv.model import markers

pytestmark = pytest.mark.kernel
# that module's BGP lab, a module-scoped fixture: built anew for this module
bgp_lab = test_bgp_agent_kernel.env


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


def test_dry_run_and_apply_on_a_converged_bgp_host_change_nothing(bgp_lab: BgpAgents) -> None:
    env = bgp_lab
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


def test_apply_refuses_while_the_agent_is_stopped(bgp_lab: BgpAgents) -> None:
    env = bgp_lab
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
