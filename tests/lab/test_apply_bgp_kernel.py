"""The operator's commands on hosts whose directory is BGP, on a real kernel: the lab that
`routed-nv lab shell` runs, the BGP lab of test_bgp_agent_kernel.py (3 hosts, 2 route
reflectors, one agent per host, no static remote endpoints), built once for this module.

- docs/operator-guide.md runs as written (issue 17 item 2): every command of its `<!-- lab -->`
  blocks, through `rnv-host` as an operator types it in `lab shell`, exits 0 and prints what the
  guide shows (first, in the lab as `lab shell` hands it over).
- `routed-nv apply` (issue 14 item 6) used to plan from the static entries and so would have
  deleted every remote route the agent learned; it now plans with the agent's view, or refuses.
- BIRD stopped on host1 (issue 17 item 6): host2's `lookup` names host1 as the host that
  withdrew the address, host1's `status --brief` exits 3 naming BIRD, both recover with BIRD.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import test_bgp_agent_kernel
from test_datapath_scenario import ns, sh

from routed_nv.cli.status import EXIT_NOT_READY
from routed_nv.lab.agents import ROUTED_NV
from routed_nv.lab.bgp_agents import BgpAgents
from routed_nv.lab.checks import tenant_matrix
from routed_nv.lab.guide import mismatch, runnable_commands
from routed_nv.lab.host_shell import write_host_command
from routed_nv.model import markers

pytestmark = pytest.mark.kernel
# that module's BGP lab, a module-scoped fixture: built anew for this module
bgp_lab = test_bgp_agent_kernel.env
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "operator-guide.md"
DEADLINE_S = 120.0  # not a measurement: the shared machine is slow at times


@pytest.fixture(scope="module")
def rnv_host(bgp_lab: BgpAgents, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`rnv-host`, as `routed-nv lab shell` writes it."""
    config_files = bgp_lab.datapath.config_files
    hosts = {h.name: (h.namespace, config_files[h.name]) for h in bgp_lab.birds.lab.topology.hosts}
    return write_host_command(tmp_path_factory.mktemp("bin"), hosts)


def on(rnv_host: Path, host: str, command: str) -> subprocess.CompletedProcess[str]:
    """COMMAND typed at lab host HOST's prompt; stdout and stderr as the terminal shows them."""
    return subprocess.run(
        [str(rnv_host), host, "sh", "-c", command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=DEADLINE_S,
        check=False,
    )


def test_the_operator_guide_runs_as_written(bgp_lab: BgpAgents, rnv_host: Path) -> None:
    problems = []
    commands = runnable_commands(GUIDE.read_text())
    took = {}
    for c in commands:
        started = time.monotonic()
        done = on(rnv_host, c.host, c.command)
        took[c.command] = time.monotonic() - started
        where = f"operator-guide.md:{c.line}: {c.host}# {c.command}"
        if done.returncode != 0:
            problems.append(f"{where}: exit status {done.returncode}: {done.stdout[-600:]}")
        elif why := mismatch(c.output, done.stdout):
            problems.append(f"{where}: {why}\n{done.stdout[-1500:]}")
    slowest = ", ".join(f"{c} {t:.1f} s" for c, t in sorted(took.items(), key=lambda x: -x[1])[:4])
    print(f"\n{len(commands)} commands of the operator guide run in {sum(took.values()):.1f} s "
          f"(slowest: {slowest}), {len(problems)} differ")  # fmt: skip
    assert problems == [], "\n".join(problems)


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


Done = subprocess.CompletedProcess[str]


def until(what: str, probe: Callable[[], Done], done: Callable[[Done], bool]) -> Done:
    """probe() again until done(its result); the result."""
    deadline = time.monotonic() + DEADLINE_S
    while not done(result := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} in {DEADLINE_S:g} s; last: {result.stdout}")
        time.sleep(0.2)
    return result


def test_bird_stopped_is_named_by_lookup_elsewhere_and_degrades_its_host_until_it_starts(
    bgp_lab: BgpAgents, rnv_host: Path
) -> None:
    env = bgp_lab
    env.wait_converged()

    def lookup() -> subprocess.CompletedProcess[str]:
        return on(rnv_host, "host2", "routed-nv lookup blue 10.0.0.1")

    def brief() -> subprocess.CompletedProcess[str]:
        return on(rnv_host, "host1", "routed-nv status --brief")

    assert lookup().stdout.startswith("blue 10.0.0.1: host host1 (2001:db8:0:1::1)\n")
    # stopped, as `systemctl stop bird` does: BIRD closes its sessions with a Cease, and the
    # route reflectors withdraw host1's routes at once (a crash would leave them to graceful
    # restart: test_bgp_agent_kernel)
    env.birds.signal("host1", signal.SIGTERM)
    try:
        gone = until("withdrawal on host2", lookup, lambda d: d.returncode != 0)
        assert gone.returncode == 1, gone.stdout
        assert re.fullmatch(
            r"error: no endpoint 10\.0\.0\.1 in tenant blue: last announced by host1 "
            r"\(2001:db8:0:1::1\), withdrawn at \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\S*\n",
            gone.stdout,
        ), gone.stdout
        degraded = until("degraded host1", brief, lambda d: d.returncode != 0)
        assert degraded.returncode == EXIT_NOT_READY, degraded.stdout
        assert degraded.stdout.startswith(
            "degraded (directory bgp not in sync: cannot connect to BIRD at "
            f"{env.birds.node('host1').socket}: "
        ), degraded.stdout
    finally:
        # Without -R: the clean stop withdrew host1's /64 from the ToR too, and with -R BIRD
        # would hold it back (with every export) until End-of-RIB on the route reflector
        # sessions that need it, i.e. for all of `graceful restart wait` (240 s)
        env.birds.start("host1", recover=False)
    ready = until("ready host1", brief, lambda d: d.returncode == 0)
    assert ready.stdout.startswith("ready: directory bgp in sync"), ready.stdout
    back = until("host1's address on host2", lookup, lambda d: d.returncode == 0)
    assert back.stdout.startswith("blue 10.0.0.1: host host1 (2001:db8:0:1::1)\n"), back.stdout
    print(f"\nBIRD stopped on host1: host2 {gone.stdout.strip()!r}; host1 {degraded.stdout!r}")
    env.wait_converged()  # leave the lab as found
