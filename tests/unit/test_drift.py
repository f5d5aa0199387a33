"""Drift the agent can show: the kernel changed behind its back (issue 17 item 4)."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from pathlib import Path

from click.testing import CliRunner
from test_agent_loop import Harness, route, view

from routed_nv.agent import report
from routed_nv.agent.changes import CHANGE_LOG_MAX, Changed
from routed_nv.agent.control import SOCKET_NAME, ControlServer, ask
from routed_nv.cli.lookup import lookup_command
from routed_nv.cli.status import brief_line, status_command, status_table
from routed_nv.model import markers

TABLE = markers.vrf_table(100)
MISSING_ROUTE = (
    f"+ route 10.0.0.2/32 via 2001:db8:0:2::64 dev rnv-t100 onlink table {TABLE} proto 250 metric 0"
)
MISSING_SA = "+ state src 2001:db8:0:1::64 dst 2001:db8:0:2::64 spi 0x00000064 <key redacted>"


def checked(h: Harness, reuse: float = 0.0) -> bool:
    """Agent.check_kernel as the control thread calls it, while the loop runs."""
    answers: list[bool] = []
    asker = threading.Thread(target=lambda: answers.append(h.agent.check_kernel(5, reuse)))
    asker.start()
    while asker.is_alive():
        h.agent.step()
        time.sleep(0.001)
    return answers[0]


def drifted() -> Harness:
    """An agent in sync, then a remote route and an outbound SA deleted by hand."""
    h = Harness()
    h.publish(view(route("10.0.0.2")))
    h.settle()
    h.datapath.drift = [MISSING_ROUTE, MISSING_SA]
    h.sas = []
    return h


def test_status_shows_the_kernel_drift_and_counts_sas_in_the_kernel() -> None:
    h = drifted()
    before = report.status(h.agent.snapshot())
    assert before["kernel"]["in_sync"] is True  # the apply left the kernel as wanted
    assert before["datapath"]["sas"] == 1

    assert checked(h)
    assert h.datapath.plans == [True]  # read-only, and from a fresh read of the kernel
    assert len(h.datapath.applied) == 1  # shown, not repaired, until the next apply
    status = report.status(h.agent.snapshot())
    assert status["kernel"]["in_sync"] is False
    assert status["kernel"]["differ"] == 2
    assert status["kernel"]["objects"] == [MISSING_ROUTE, MISSING_SA]
    assert status["datapath"]["sas"] == 0  # the kernel's count, not the desired one
    now = time.time()
    lines = status_table(status, now).splitlines()
    assert any(x.startswith("Kernel:     2 objects differ (checked ") for x in lines)
    assert f"  {MISSING_ROUTE}" in lines
    assert "0 SAs; kernel 2 objects differ (checked " in brief_line(status, now)


def test_a_recent_check_is_reused_and_its_age_shown() -> None:
    # each check reads the whole kernel: `watch -n1 routed-nv status` must not make it read
    # every second
    h = drifted()
    assert checked(h, reuse=5)
    assert h.datapath.plans == [True]
    h.clock.now += 4.9
    assert checked(h, reuse=5)  # answered from the check 4.9 s ago: no kernel read
    assert h.datapath.plans == [True]
    snap = h.agent.snapshot()
    assert snap.drift is not None
    kernel = report.status(snap, now=snap.drift.time + 4.9)["kernel"]
    assert (kernel["differ"], kernel["age_s"]) == (2, 4.9)
    found = report.lookup(snap.config, snap.view, snap.sas, "blue", "10.0.0.2", snap.drift)
    assert found is not None and found["kernel_checked"] == kernel["checked"]
    h.clock.now += 0.1  # 5 s old: read again
    assert checked(h, reuse=5)
    assert h.datapath.plans == [True, True]
    assert checked(h)  # no reuse asked: every call reads
    assert h.datapath.plans == [True, True, True]


def test_a_check_before_the_first_apply_does_not_wait_or_plan() -> None:
    h = Harness()
    assert not h.agent.check_kernel(5)
    assert h.datapath.plans == []
    assert report.status(h.agent.snapshot())["kernel"]["in_sync"] is None


def test_lookup_says_the_kernel_route_is_missing() -> None:
    h = drifted()
    assert checked(h)
    snap = h.agent.snapshot()
    found = report.lookup(snap.config, snap.view, snap.sas, "blue", "10.0.0.2", snap.drift)
    assert found is not None
    assert found["kernel_route"] == "missing"
    h.datapath.drift = []
    assert checked(h)
    snap = h.agent.snapshot()
    found = report.lookup(snap.config, snap.view, snap.sas, "blue", "10.0.0.2", snap.drift)
    assert found is not None
    assert found["kernel_route"] == "ok"


def test_a_different_route_in_another_tenant_table_is_not_this_address() -> None:
    h = drifted()
    h.datapath.drift = [
        MISSING_ROUTE.replace(f"table {TABLE}", f"table {markers.vrf_table(200)}"),
        f"~ route 10.0.0.1/32 dev tap0 table {TABLE} proto 249 metric 0  (was: ...)",
    ]
    assert checked(h)
    snap = h.agent.snapshot()
    prefix = ipaddress.ip_network("10.0.0.2/32")
    assert report.kernel_route(snap.drift, 100, prefix) == "ok"
    local = ipaddress.ip_network("10.0.0.1/32")
    assert report.kernel_route(snap.drift, 100, local) == "different"


def test_status_and_lookup_over_the_socket_check_the_kernel_first(tmp_path: Path) -> None:
    h = drifted()
    stop = threading.Event()

    def loop() -> None:  # the agent's loop thread
        while not stop.is_set():
            h.agent.step()
            time.sleep(0.001)

    server = ControlServer(
        tmp_path / SOCKET_NAME,
        h.agent.snapshot,
        h.agent.request_reload,
        check=lambda: h.agent.check_kernel(5),
        resync=h.agent.request_resync,
    ).start()
    looper = threading.Thread(target=loop)
    looper.start()
    try:
        runner = CliRunner()
        status = runner.invoke(status_command, ["--run-dir", str(tmp_path)], env={})
        assert "Kernel:     2 objects differ (checked 0s ago)" in status.stdout.splitlines()
        found = runner.invoke(lookup_command, ["blue", "10.0.0.2", "--run-dir", str(tmp_path)])
        assert "  kernel route: MISSING" in found.stdout
        assert "(checked 0s ago)" in found.stdout
        as_json = runner.invoke(
            lookup_command, ["blue", "10.0.0.2", "--run-dir", str(tmp_path), "-o", "json"]
        )
        assert json.loads(as_json.stdout)["kernel_route"] == "missing"

        # the operator asks for the resync now: it repairs and names what it repaired
        h.datapath.done = [Changed("add", "route", (("dst", "10.0.0.2/32"),))]
        assert ask(tmp_path / SOCKET_NAME, {"request": "resync"}) == {"resync": "requested"}
        h.clock.now += 1  # past the throttle
        deadline = time.monotonic() + 10
        while len(h.datapath.applied) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert h.datapath.resyncs[-1] is True
    finally:
        stop.set()
        looper.join()
        server.close()
    repairs = h.lines("agent.repair")
    assert repairs == ["agent.repair stage=routing op=add obj=route dst=10.0.0.2/32"]


def test_the_repair_log_is_bounded() -> None:
    h = Harness()
    h.publish(view(route("10.0.0.2")))
    h.settle()
    h.datapath.done = [Changed("add", "route", (("dst", f"10.0.1.{i}/32"),)) for i in range(55)]
    h.agent.request_resync()
    h.clock.now += 1
    h.settle()
    assert len(h.lines("agent.repair")) == CHANGE_LOG_MAX
    assert h.lines("agent.repair.more") == ["agent.repair.more stage=routing count=5 add=5"]
