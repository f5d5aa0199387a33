"""The Datapath with fake drivers: stage order, plan vs apply, errors per stage, IKE vs static,
and that an apply reads the kernel once (the plan it made is the plan it applies)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
from test_agent_loop import HOST3, config, route, view

from routed_nv.agent.changes import Changed
from routed_nv.agent.datapath import Datapath, Outcome
from routed_nv.config.model import Config
from routed_nv.esp.driver import XfrmDriver, XfrmPlan, XfrmResult
from routed_nv.esp.ike import IkePlan, IkeResult
from routed_nv.esp.seqstore import ReservationStore
from routed_nv.esp.xfrm import Op, Verb, XfrmError
from routed_nv.model import markers
from routed_nv.model.netfilter import Family, TableChange
from routed_nv.model.routing import Route
from routed_nv.model.secret import Secret
from routed_nv.model.xfrm import XfrmState
from routed_nv.netfilter.driver import NetfilterDriver, NetfilterPlan, NetfilterResult
from routed_nv.routing.driver import Change, Result
from tests.fakes import FakeStage, FakeTables, FakeXfrmKernel

SECRET = "5a" * 32
KEY = Secret(b"\x11" * 20)
SA = XfrmState(
    ipaddress.IPv6Address("2001:db8:0:1::1:64"),
    ipaddress.IPv6Address("2001:db8:0:2::1:64"),
    0x640004,
    markers.reqid(100),
    KEY,
)
HOOK = TableChange(Family.IPV4, "filter", hooks={"INPUT": "rnv-input"})
ROUTE = Route(ipaddress.ip_network("10.0.0.2/32"), 1100, markers.RTPROT_REMOTE, dev="rnv-t100")


class Fakes:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.netfilter = FakeStage(
            "netfilter", self.calls, NetfilterPlan((HOOK,)), NetfilterResult(done=[HOOK])
        )
        op = Op(Verb.ADD, SA)
        self.xfrm = FakeStage("xfrm", self.calls, XfrmPlan((op,), {}), XfrmResult(done=[op]))
        change = Result(changes=[Change("+", ROUTE)])
        self.routing = FakeStage("routing", self.calls, change, change)
        self.ike = FakeStage(
            "ike", self.calls, IkePlan((), ()), IkeResult(done=["load-conn rnv-host2 (new)"])
        )

    def datapath(self) -> Datapath:
        return Datapath(self.netfilter, self.xfrm, self.routing, self.ike)  # type: ignore[arg-type]


@pytest.fixture
def static(tmp_path: Path) -> Config:
    (tmp_path / "blue.key").write_text(f"1 {SECRET}\n")
    (tmp_path / "blue.key").chmod(0o600)
    return config(keying={"mode": "static", "secrets_dir": str(tmp_path)})


@pytest.fixture
def fakes() -> Fakes:
    return Fakes()


def names(outcome: Outcome) -> list[str]:
    return [s.name for s in outcome.stages]


def test_static_apply_runs_the_stages_in_order_and_applies_each_plan(
    static: Config, fakes: Fakes
) -> None:
    outcome = fakes.datapath().apply(static, view(route("10.0.0.2/32")))
    assert names(outcome) == ["netfilter", "xfrm", "routing"]
    assert fakes.calls == [
        "netfilter.plan",
        "netfilter.apply_plan",
        "xfrm.plan",
        "xfrm.apply_plan",
        "routing.apply",
    ]
    # the plan each stage made is the one it applied: no second read of the kernel
    assert fakes.netfilter.applied_plans == [fakes.netfilter.planned]
    assert fakes.xfrm.applied_plans[0] is fakes.xfrm.planned
    assert outcome.ok and outcome.changed


def test_ike_mode_adds_the_ike_stage_last(fakes: Fakes) -> None:
    outcome = fakes.datapath().apply(config(), view())  # the default keying mode is IKE
    assert names(outcome) == ["netfilter", "xfrm", "routing", "ike"]
    assert fakes.calls[-1] == "ike.apply"
    assert outcome.stages[-1].lines == ["load-conn rnv-host2 (new)"]


def test_static_mode_never_talks_to_charon(static: Config, fakes: Fakes) -> None:
    fakes.datapath().apply(static, view())
    fakes.datapath().plan(static, view())
    assert not [c for c in fakes.calls if c.startswith("ike.")]


@pytest.mark.parametrize("mode", ["static", "ike"])
def test_a_dry_run_only_plans(mode: str, static: Config, fakes: Fakes) -> None:
    cfg = static if mode == "static" else config()
    outcome = fakes.datapath().plan(cfg, view(route("10.0.0.2/32")))
    planned = ["netfilter.plan", "xfrm.plan", "routing.plan"]
    assert fakes.calls == planned + (["ike.plan"] if mode == "ike" else [])
    # what it would do is still reported
    assert outcome.stages[0].lines == HOOK.lines()
    assert outcome.stages[2].lines == [str(Change("+", ROUTE))]


def test_an_empty_netfilter_plan_is_not_applied(static: Config, fakes: Fakes) -> None:
    fakes.netfilter.planned = NetfilterPlan(())
    fakes.datapath().apply(static, view())
    assert "netfilter.apply_plan" not in fakes.calls


def test_a_failing_stage_does_not_stop_the_next_and_every_error_is_reported(
    fakes: Fakes,
) -> None:
    fakes.netfilter.planned = NetfilterPlan((HOOK,), errors=("ipv6 table raw: read failed",))
    fakes.netfilter.result = NetfilterResult(errors=["ipv4 table filter: apply failed: boom"])
    fakes.xfrm.planned = XfrmError("ip xfrm state in netns x failed: boom")
    fakes.routing.result = RuntimeError("a bug")
    fakes.ike.result = IkeResult(errors=["load-conn rnv-host2: refused"])
    outcome = fakes.datapath().apply(config(), view())
    assert fakes.calls == [
        "netfilter.plan",
        "netfilter.apply_plan",
        "xfrm.plan",
        "routing.apply",
        "ike.apply",
    ]
    errors = {s.name: s.errors for s in outcome.stages}
    assert errors["netfilter"][-2:] == [
        "ipv6 table raw: read failed",
        "ipv4 table filter: apply failed: boom",
    ]
    assert errors["xfrm"][-1] == "ip xfrm state in netns x failed: boom"
    assert errors["routing"] == ["RuntimeError: a bug"]
    assert errors["ike"] == ["load-conn rnv-host2: refused"]
    assert not outcome.ok


def test_changes_for_the_log_are_what_each_stage_did(static: Config, fakes: Fakes) -> None:
    fakes.xfrm.result = XfrmResult(errors=["add failed"])  # planned, but the kernel took nothing
    stages = {s.name: s for s in fakes.datapath().apply(static, view()).stages}
    assert stages["xfrm"].changes == [] and stages["xfrm"].lines  # planned, not done
    assert stages["routing"].changes[0].obj == "route"
    where = (("family", "ipv4"), ("table", "filter"))
    hook = Changed("set", "jump", (*where, ("hook", "INPUT"), ("target", "rnv-input")))
    assert stages["netfilter"].changes == [hook]


class CountingTables(FakeTables):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def read(self, family: Family, table: str) -> Any:
        self.reads += 1
        return super().read(family, table)


class CountingXfrm(FakeXfrmKernel):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def read_states(self) -> list[XfrmState]:
        self.reads += 1
        return super().read_states()

    def read_policies(self) -> Any:
        self.reads += 1
        return super().read_policies()


def counting(
    static: Config, fakes: Fakes, tmp_path: Path
) -> tuple[CountingTables, CountingXfrm, Datapath]:
    """A Datapath whose netfilter tables and XFRM kernel count their reads."""
    tables, kernel = CountingTables(), CountingXfrm()
    xfrm = XfrmDriver(kernel, static.host.underlay_prefix, 5, ReservationStore(tmp_path), 30)
    datapath = Datapath(NetfilterDriver(tables), xfrm, fakes.routing, fakes.ike)  # type: ignore[arg-type]
    return tables, kernel, datapath


def test_one_apply_reads_each_table_and_the_xfrm_state_once(
    static: Config, fakes: Fakes, tmp_path: Path
) -> None:
    tables, kernel, datapath = counting(static, fakes, tmp_path)
    outcome = datapath.apply(static, view(route("10.0.0.2/32")))
    assert outcome.ok, [s.errors for s in outcome.stages]
    assert kernel.states and kernel.policies  # it did program something
    table_count = len({(c.family, c.table) for c in tables.applied})
    assert (tables.reads, kernel.reads) == (table_count, 2)  # states once, policies once
    tables.reads = kernel.reads = 0
    again = datapath.apply(static, view(route("10.0.0.2/32")), resync=True)
    assert again.stages[0].lines == again.stages[1].lines == []  # in line: nothing planned
    assert (tables.reads, kernel.reads) == (table_count, 2)


def test_a_stage_whose_inputs_did_not_change_is_skipped_until_the_resync(
    static: Config, fakes: Fakes, tmp_path: Path
) -> None:
    tables, kernel, datapath = counting(static, fakes, tmp_path)
    assert datapath.apply(static, view(route("10.0.0.2/32"))).ok
    tables.reads = kernel.reads = 0
    # another address at the same peer: netfilter (config) and XFRM (peers) have nothing new
    outcome = datapath.apply(static, view(route("10.0.0.2/32"), route("10.0.0.3/32")))
    assert [s.name for s in outcome.stages if s.skipped] == ["netfilter", "xfrm"]
    assert (tables.reads, kernel.reads) == (0, 0)
    # a new peer host is a new input for XFRM; a new config object for everything
    outcome = datapath.apply(static, view(route("10.0.0.2/32"), route("10.0.0.4/32", HOST3)))
    assert [s.name for s in outcome.stages if s.skipped] == ["netfilter"]
    reloaded = static.model_copy()
    outcome = datapath.apply(reloaded, view(route("10.0.0.2/32"), route("10.0.0.4/32", HOST3)))
    assert not any(s.skipped for s in outcome.stages)
    outcome = datapath.apply(reloaded, view(route("10.0.0.2/32"), route("10.0.0.4/32", HOST3)),
                             resync=True)  # fmt: skip
    assert not any(s.skipped for s in outcome.stages) and kernel.reads > 0
