"""Remote causes reported as such (issue 17 item 6): a withdrawn address says who withdrew it and
when; an agent whose directory is not in sync is degraded, and `status --brief` says so in its
exit status."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_agent_loop import HOST2, Harness, route, view

from routed_nv.agent import loop, report
from routed_nv.agent.control import SOCKET_NAME, ControlServer, answer
from routed_nv.cli.status import status_command


def lookup(h: Harness, address: str) -> dict[str, object]:
    request = {"request": "lookup", "tenant": "blue", "address": address}
    return answer(request, h.agent.snapshot(), h.agent.request_reload)


def test_a_withdrawn_address_names_who_announced_it_and_when() -> None:
    h = Harness()
    h.agent._wall = lambda: 1_800_000_000.0  # type: ignore[method-assign]
    h.publish(view(route("10.0.0.2"), route("10.0.0.3")))
    h.settle()
    h.publish(view(route("10.0.0.3")))  # host2 withdrew 10.0.0.2 (its BIRD stopped, say)
    h.clock.now += 1
    h.settle()
    assert lookup(h, "10.0.0.2") == {
        "ok": False,
        "code": "not-found",
        "error": "no endpoint 10.0.0.2 in tenant blue: last announced by host2 "
        f"({HOST2.address}), withdrawn at 2027-01-15T08:00:00.000+00:00",
    }
    never = lookup(h, "10.0.0.9")
    assert never["error"] == "no endpoint 10.0.0.9 in tenant blue"

    h.publish(view(route("10.0.0.3"), route("10.0.0.2")))  # announced again: forgotten
    h.clock.now += 1
    h.settle()
    assert lookup(h, "10.0.0.2")["ok"] is True
    assert h.agent.snapshot().withdrawn == {}


def test_the_memory_of_withdrawn_addresses_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    monkeypatch.setattr(loop, "WITHDRAWN_MAX", 2)
    h.publish(view(*(route(f"10.0.0.{i}") for i in range(2, 6))))
    h.settle()
    h.publish(view())
    h.clock.now += 1
    h.settle()
    kept = {prefix for _, prefix in h.agent.snapshot().withdrawn}
    assert len(kept) == 2
    assert kept <= {ipaddress.ip_network(f"10.0.0.{i}") for i in range(2, 6)}


def test_an_agent_whose_directory_is_not_in_sync_is_degraded(tmp_path: Path) -> None:
    h = Harness()
    h.publish(view(route("10.0.0.2")))
    h.settle()
    detail = "cannot connect to BIRD at /run/bird/bird.ctl"
    h.publish(view(route("10.0.0.2")), in_sync=False, detail=detail)
    h.clock.now += 1
    h.settle()
    status = report.status(h.agent.snapshot())
    assert status["agent"]["state"] == "degraded"
    assert status["agent"]["reason"] == f"directory fake not in sync: {detail}"
    server = ControlServer(tmp_path / SOCKET_NAME, h.agent.snapshot, h.agent.request_reload)
    server.start()
    try:
        brief = CliRunner().invoke(status_command, ["--run-dir", str(tmp_path), "--brief"], env={})
        full = CliRunner().invoke(status_command, ["--run-dir", str(tmp_path)], env={})
    finally:
        server.close()
    assert brief.exit_code == 3
    assert brief.stdout.startswith(f"degraded (directory fake not in sync: {detail}): ")
    assert full.exit_code == 0  # the full view answers whatever the state
    assert full.stdout.startswith("Agent:      degraded (directory fake not in sync: ")
