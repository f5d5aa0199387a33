"""The directory benchmark (`routed-nv bench directory --quick --hosts 2 -o json`) on a real
kernel: its JSON has every key of issue 16 with sane values (positive times, as many trials as
asked, the ratio its seconds over its floor, lost pings an int). Timings are printed, never
asserted against a goal."""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

import pytest

from routed_nv.bench import directory as bench

pytestmark = pytest.mark.kernel
PLAN = bench.QUICK


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert bench.main(["--quick", "--hosts", "2", "-o", "json"]) == 0
    print(f"\n{out.getvalue()}")
    return json.loads(out.getvalue())  # type: ignore[no-any-return]


def test_every_key_is_there(result: dict[str, Any]) -> None:
    assert tuple(result) == bench.KEYS
    header = result["header"]
    assert header["mode"] == "2-host/1-RR"
    assert header["sizes"] == {str(n): reps for n, reps in PLAN.sizes.items()}
    assert header["guest_cpus"] >= 1 and header["guest_kernel"]


def test_start_publish_and_memory_are_positive(result: dict[str, Any]) -> None:
    assert 0 < result["ready_s"] < result["in_sync_s"]
    rows = result["publish_to_vrf"]
    assert [r["routes"] for r in rows] == [n for n, reps in PLAN.sizes.items() for _ in range(reps)]
    for r in rows:
        assert 0 < r["mirror_seconds"] <= r["seconds"], r  # the agent learns from the mirror
        assert r["floor_seconds"] > 0 and r["withdraw_seconds"] > 0, r
        assert r["ratio"] == pytest.approx(r["seconds"] / r["floor_seconds"])
    assert result["agent_rss_bytes_per_route"] > 0


def test_event_cpu_has_every_trial(result: dict[str, Any]) -> None:
    assert [r["routes"] for r in result["event_cpu_ms"]] == list(PLAN.sizes)
    for r in result["event_cpu_ms"]:
        # in the guest the CPU clock ticks at 10 ms: a delta event may round to 0
        assert r["n"] == PLAN.unit_events and 0 <= r["p50"] <= r["p99"], r
        assert r["lab"]["n"] == 2 * PLAN.event_trials and r["lab"]["idle_ms_per_s"] >= 0, r


def test_add_and_move_have_every_trial(result: dict[str, Any]) -> None:
    add = result["add_to_reachable_s"]
    assert (add["n"], add["v4"]["n"], add["v6"]["n"]) == (
        2 * PLAN.add_trials,
        *[PLAN.add_trials] * 2,
    )
    for figures in (add, add["v4"], add["v6"], add["cli"]):
        assert 0 < figures["p50"] <= figures["p99"], add
    move = result["move_to_traffic_s"]
    assert move["n"] == 2 * PLAN.move_trials and 0 < move["p50"] <= move["p99"], move
    assert isinstance(move["lost_pings"], int) and move["lost_pings"] >= 0, move
