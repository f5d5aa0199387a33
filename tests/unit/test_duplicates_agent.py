"""The agent's wiring of calc/duplicates: the loop wakes to re-assert, logs, reports duplicates in
status and metrics, and clears one on the operator's request (control socket and CLI)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_agent_loop import HERE, Harness, config, lose_to_host3, route
from test_metrics import scrape

from routed_nv.agent import report
from routed_nv.agent.control import SOCKET_NAME, ControlServer, answer
from routed_nv.agent.metrics import Metrics
from routed_nv.cli.directory import directory_group
from routed_nv.cli.status import status_table
from routed_nv.model.directory import Claim, DirectoryView, RemoteRoute

EXAMPLES = Path(__file__).resolve().parents[2] / "configs"


def republish(h: Harness, rival: RemoteRoute) -> None:
    """The kernel's answer to the last apply: this host's claim read back, the rival as before."""
    mine = next(iter(h.datapath.applied[-1][1].claims))
    h.publish(DirectoryView(frozenset({route("10.0.0.2")}), frozenset({rival}), frozenset({mine})))


def test_a_hijacked_address_is_taken_back_when_the_delay_is_up_and_reported() -> None:
    h = Harness()
    rival = lose_to_host3(h)
    assert h.datapath.applied[-1][1].claims == {Claim(100, HERE, 1, stale=True)}
    # the loop sleeps until the re-assertion is due (30 s by default), not the next resync
    h.clock.now += 1
    republish(h, rival)
    assert h.settle() == pytest.approx(29)
    h.clock.now += 29
    h.settle()
    applied = h.datapath.applied[-1][1]
    assert applied.claims == {Claim(100, HERE, 2)}
    assert rival not in applied.remote_routes  # routed here again, not to host3
    (line,) = h.lines("mobility.reassert")
    assert "address=10.0.0.1/32" in line and "other=host3" in line and "sequence=2" in line
    status = report.status(h.agent.snapshot())
    (dup,) = status["directory"]["duplicates"]
    assert dup == {
        "tenant": "blue",
        "tenant_id": 100,
        "prefix": "10.0.0.1/32",
        "hosts": ["host1", "host3"],
        "other_address": "2001:db8:0:3::1",
        "moves": 2,
        "frozen": False,
        "held_by": "host1",
    }
    lines = status_table(status, time.time()).splitlines()
    assert "Duplicates: 1 local addresses another host announces too" in lines
    assert (
        "  10.0.0.1/32 (tenant blue): hosts host1 and host3 (2001:db8:0:3::1), 2 moves, "
        "held by host1"
    ) in lines


def frozen_harness() -> Harness:
    h = Harness()
    h.config = h.next_config = config(directory={"duplicate_moves": 1})
    h.agent.request_reload()
    h.settle()
    rival = lose_to_host3(h)
    h.clock.now += 30
    republish(h, rival)
    h.settle()  # re-asserted: the second move, more than 1
    return h


def test_a_frozen_duplicate_is_logged_counted_and_cleared_by_the_operator() -> None:
    h = frozen_harness()
    (line,) = h.lines("mobility.duplicate")
    assert "hosts=host1,host3" in line and "moves=2" in line and "frozen=true" in line
    m = Metrics(h.agent.snapshot, dict)
    assert scrape(m)[("routed_nv_duplicate_addresses", (("state", "frozen"),))] == 1
    assert scrape(m)[("routed_nv_duplicate_addresses", (("state", "contested"),))] == 0
    cleared: list[object] = []
    request = {"request": "clear-duplicate", "tenant": "blue", "address": "10.0.0.1"}
    reply = answer(request, h.agent.snapshot(), h.agent.request_reload, cleared.append)
    assert reply == {"ok": True, "result": {"cleared": {"tenant_id": 100, "prefix": "10.0.0.1/32"}}}
    h.agent.request_clear(cleared[0])  # type: ignore[arg-type]
    h.clock.now += 1
    h.settle()
    assert report.status(h.agent.snapshot())["directory"]["duplicates"] == []
    assert len(h.lines("mobility.duplicate.cleared")) == 1
    again = answer(request, h.agent.snapshot(), h.agent.request_reload, cleared.append)
    assert again["code"] == "not-found"
    bad = answer(request | {"tenant": "green"}, h.agent.snapshot(), h.agent.request_reload)
    assert bad["code"] == "bad-request"


@pytest.fixture
def frozen_run_dir(tmp_path: Path) -> Iterator[tuple[Harness, Path]]:
    h = frozen_harness()
    server = ControlServer(
        tmp_path / SOCKET_NAME,
        h.agent.snapshot,
        h.agent.request_reload,
        clear=h.agent.request_clear,
    ).start()
    try:
        yield h, tmp_path
    finally:
        server.close()


def test_the_clear_duplicate_command(frozen_run_dir: tuple[Harness, Path]) -> None:
    h, run_dir = frozen_run_dir

    def clear(address: str) -> tuple[int, str, str]:
        args = ["clear-duplicate", "blue", address, "--run-dir", str(run_dir)]
        done = CliRunner().invoke(directory_group, args, env={}, catch_exceptions=False)
        return done.exit_code, done.stdout, done.stderr

    assert clear("10.0.0.9") == (
        1, "", "error: 10.0.0.9 in tenant blue is not a duplicate\n"
    )  # fmt: skip
    # found from the configuration's agent.run_dir, as every other command finds the agent
    by_config = CliRunner().invoke(
        directory_group,
        ["clear-duplicate", "blue", "10.0.0.9", "-c", str(EXAMPLES / "routed-nv.toml")],
        env={"ROUTED_NV_AGENT__RUN_DIR": str(run_dir), "ROUTED_NV_RUN_DIR": None},
    )
    assert (by_config.exit_code, by_config.stderr) == (
        1, "error: 10.0.0.9 in tenant blue is not a duplicate\n"
    )  # fmt: skip
    assert clear("10.0.0.1") == (0, "cleared duplicate 10.0.0.1/32 (tenant 100)\n", "")
    h.clock.now += 1
    h.settle()
    assert (
        json.loads(json.dumps(report.status(h.agent.snapshot())))["directory"]["duplicates"] == []
    )
