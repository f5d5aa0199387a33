"""The Datapath with fake drivers: stage order, plan vs apply, errors per stage, IKE vs static,
that an apply reads the kernel once (the plan it made is the plan it applies), and what the agent
does with transient and permanent errors."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from test_agent_loop import HOST3, Harness, config, route, view

from routed_nv.agent.changes import Changed
from routed_nv.agent.datapath import Datapath, Outcome
from routed_nv.agent.loop import Settings
from routed_nv.calc.routing import desired_routing
from routed_nv.config.model import Config
from routed_nv.esp.driver import XfrmDriver, XfrmPlan, XfrmResult
from routed_nv.esp.ike import IkeDriver, IkeOp, IkePlan, IkeResult
from routed_nv.esp.ike import Verb as IkeVerb
from routed_nv.esp.seqstore import ReservationStore
from routed_nv.esp.xfrm import Op, Verb, XfrmError
from routed_nv.model import markers
from routed_nv.model.netfilter import Family, TableChange
from routed_nv.model.result import Plan, Problem, Result
from routed_nv.model.routing import Route
from routed_nv.model.secret import Secret
from routed_nv.model.xfrm import XfrmState
from routed_nv.netfilter.driver import NetfilterDriver, NetfilterPlan, NetfilterResult
from routed_nv.routing.driver import Change, RoutingDriver, RoutingPlan, RoutingResult
from tests.fakes import (
    FakeCharon,
    FakeNetfilterStage,
    FakeRoutingKernel,
    FakeStage,
    FakeTables,
    FakeWorld,
    FakeXfrmKernel,
)

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
LOAD = IkeOp(IkeVerb.LOAD_CONN, "rnv-host2", "new")


class Fakes:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.netfilter = FakeNetfilterStage(
            "netfilter", self.calls, NetfilterPlan((HOOK,)), NetfilterResult(done=[HOOK])
        )
        op = Op(Verb.ADD, SA)
        self.xfrm = FakeStage("xfrm", self.calls, XfrmPlan((op,)), XfrmResult(done=[op]))
        change = Change("+", ROUTE)
        self.routing = FakeStage(
            "routing", self.calls, RoutingPlan((change,)), RoutingResult(done=[change])
        )
        self.ike = FakeStage("ike", self.calls, IkePlan((LOAD,)), IkeResult(done=[LOAD]))

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
        "netfilter.apply",
        "xfrm.plan",
        "xfrm.apply",
        "routing.plan",
        "routing.apply",
    ]
    # the plan each stage made is the one it applied: no second read of the kernel
    for stage in (fakes.netfilter, fakes.xfrm, fakes.routing):
        assert stage.applied_plans == [stage.planned]
        assert stage.applied_plans[0] is stage.planned
    assert outcome.ok and outcome.changed


def test_ike_mode_adds_the_ike_stage_last(fakes: Fakes) -> None:
    outcome = fakes.datapath().apply(config(), view())  # the default keying mode is IKE
    assert names(outcome) == ["netfilter", "xfrm", "routing", "ike"]
    assert fakes.calls[-2:] == ["ike.plan", "ike.apply"]
    assert outcome.stages[-1].lines == ["load-conn rnv-host2 (new)"]


def test_the_ike_stage_reads_charon_at_every_apply(fakes: Fakes) -> None:
    # unchanged inputs do not mean charon is unchanged: a restarted charon has lost its
    # connections, and only its lists say so
    datapath, cfg, routes = fakes.datapath(), config(), view()
    fakes.ike.planned, fakes.ike.result = IkePlan(()), IkeResult()  # charon in line
    datapath.apply(cfg, routes)
    fakes.calls.clear()
    outcome = datapath.apply(cfg, routes)
    assert [c for c in fakes.calls if c.startswith("ike.")] == ["ike.plan", "ike.apply"]
    assert not outcome.stages[-1].skipped


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


def test_a_failing_stage_does_not_stop_the_next_and_every_error_is_reported(
    fakes: Fakes,
) -> None:
    unreadable = Problem("ipv6 table raw: read failed", transient=True)
    fakes.netfilter.planned = NetfilterPlan((HOOK,), problems=(unreadable,))
    fakes.netfilter.result = NetfilterResult(
        problems=[Problem("ipv4 table filter: apply failed: boom", True, HOOK)]
    )
    fakes.xfrm.planned = XfrmError("ip xfrm state in netns x failed: boom")
    fakes.routing.result = RuntimeError("a bug")
    fakes.ike.result = IkeResult(problems=[Problem("load-conn rnv-host2: refused", True, LOAD)])
    outcome = fakes.datapath().apply(config(), view())
    assert fakes.calls == [
        "netfilter.plan",
        "netfilter.apply",
        "xfrm.plan",
        "routing.plan",
        "routing.apply",
        "ike.plan",
        "ike.apply",
    ]
    errors = {s.name: [str(e) for e in s.errors] for s in outcome.stages}
    assert errors["netfilter"] == [
        "ipv6 table raw: read failed",
        "ipv4 table filter: apply failed: boom",
    ]
    assert errors["xfrm"][-1] == "XfrmError: ip xfrm state in netns x failed: boom"
    assert errors["routing"] == ["RuntimeError: a bug"]
    assert errors["ike"] == ["load-conn rnv-host2: refused"]
    assert not outcome.ok and outcome.retry


def test_changes_for_the_log_are_what_each_stage_did(static: Config, fakes: Fakes) -> None:
    failed = Problem("add failed", transient=True)
    fakes.xfrm.result = XfrmResult(problems=[failed])  # planned, but the kernel took nothing
    stages = {s.name: s for s in fakes.datapath().apply(static, view()).stages}
    assert stages["xfrm"].changes == stages["xfrm"].lines == []
    assert stages["xfrm"].errors == [failed]
    assert stages["routing"].changes[0].obj == "route"
    where = (("family", "ipv4"), ("table", "filter"))
    hook = Changed("set", "jump", (*where, ("hook", "INPUT"), ("target", "rnv-input")))
    assert stages["netfilter"].changes == [hook]


def test_a_conflict_in_the_routing_input_is_permanent_and_routing_is_not_asked(
    fakes: Fakes,
) -> None:
    both = {"tenant": "blue", "addresses": ["10.0.0.1"], "interface": "tap0", "netns": "n1"}
    outcome = fakes.datapath().apply(config(endpoints={"web": both}), view())
    (stage,) = [s for s in outcome.stages if s.name == "routing"]
    assert [e.transient for e in stage.errors] == [False], stage.errors
    assert "set either interface" in str(stage.errors[0])
    assert "routing.plan" not in fakes.calls and not outcome.retry


# -- one read per plan and apply, with the real drivers on fake kernels ------------------------


class Reads:
    """Wraps a real driver: how often its kernel was read while it planned, and while it
    applied (never: apply takes the plan)."""

    def __init__(self, driver: Any, count: Callable[[], dict[str, int]]) -> None:
        self.driver, self.count = driver, count
        self.by_plan: dict[str, int] = {}
        self.by_apply: dict[str, int] = {}

    def plan(self, desired: object, **kw: Any) -> Plan[Any]:
        before = self.count()
        plan = self.driver.plan(desired, **kw)
        self.by_plan = _minus(self.count(), before)
        return plan

    def apply(self, plan: Plan[Any]) -> Result[Any]:
        before = self.count()
        result = self.driver.apply(plan)
        self.by_apply = _minus(self.count(), before)
        return result


def _minus(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0)}


class CountingTables(FakeTables):
    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[str, int] = {}

    def read(self, family: Family, table: str) -> Any:
        key = f"{family} {table}"
        self.reads[key] = self.reads.get(key, 0) + 1
        return super().read(family, table)


class CountingXfrm(FakeXfrmKernel):
    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[str, int] = {}

    def read_states(self) -> list[XfrmState]:
        self.reads["states"] = self.reads.get("states", 0) + 1
        return super().read_states()

    def read_policies(self) -> Any:
        self.reads["policies"] = self.reads.get("policies", 0) + 1
        return super().read_policies()


def counting(
    static: Config, fakes: Fakes, tmp_path: Path
) -> tuple[CountingTables, CountingXfrm, Datapath]:
    """A Datapath whose netfilter tables and XFRM kernel count their reads."""
    tables, kernel = CountingTables(), CountingXfrm()
    xfrm = XfrmDriver(kernel, static.host.underlay_prefix, 5, ReservationStore(tmp_path), 30)
    datapath = Datapath(NetfilterDriver(tables), xfrm, fakes.routing, fakes.ike)  # type: ignore[arg-type]
    return tables, kernel, datapath


def test_a_stage_whose_inputs_did_not_change_is_skipped_until_the_resync(
    static: Config, fakes: Fakes, tmp_path: Path
) -> None:
    tables, kernel, datapath = counting(static, fakes, tmp_path)
    assert datapath.apply(static, view(route("10.0.0.2/32"))).ok
    tables.reads.clear()
    kernel.reads.clear()
    # another address at the same peer: netfilter (config) and XFRM (peers) have nothing new
    outcome = datapath.apply(static, view(route("10.0.0.2/32"), route("10.0.0.3/32")))
    assert [s.name for s in outcome.stages if s.skipped] == ["netfilter", "xfrm"]
    assert (tables.reads, kernel.reads) == ({}, {})
    # a new peer host is a new input for XFRM; a new config object for everything
    outcome = datapath.apply(static, view(route("10.0.0.2/32"), route("10.0.0.4/32", HOST3)))
    assert [s.name for s in outcome.stages if s.skipped] == ["netfilter"]
    reloaded = static.model_copy()
    outcome = datapath.apply(reloaded, view(route("10.0.0.2/32"), route("10.0.0.4/32", HOST3)))
    assert not any(s.skipped for s in outcome.stages)
    outcome = datapath.apply(reloaded, view(route("10.0.0.2/32"), route("10.0.0.4/32", HOST3)),
                             resync=True)  # fmt: skip
    assert not any(s.skipped for s in outcome.stages) and kernel.reads


def test_a_key_rotation_is_an_input_of_the_xfrm_stage(
    static: Config, fakes: Fakes, tmp_path: Path
) -> None:
    # a rotation edits the key file and applies the same config: XFRM must not be skipped
    _, kernel, datapath = counting(static, fakes, tmp_path)
    routes = view(route("10.0.0.2/32"))
    assert datapath.apply(static, routes).ok
    before = set(kernel.states)
    (tmp_path / "blue.key").write_text(f"1 {SECRET} active\n2 {SECRET[::-1]}\n")
    outcome = datapath.apply(static, routes)
    assert outcome.ok, [str(e) for s in outcome.stages for e in s.errors]
    assert [s.name for s in outcome.stages if s.skipped] == ["netfilter", "routing"]
    assert set(kernel.states) - before  # the new generation's SAs are in the kernel
    again = datapath.apply(static, routes)
    assert [s.name for s in again.stages if s.skipped] == ["netfilter", "xfrm", "routing"]


class CountingCharon(FakeCharon):
    def __init__(self) -> None:
        super().__init__()
        self.reads: dict[str, int] = {}

    def __getattribute__(self, name: str) -> Any:
        if name in ("list_conns", "list_sas", "get_shared", "get_keys", "list_certs"):
            reads = object.__getattribute__(self, "reads")
            reads[name] = reads.get(name, 0) + 1
        return object.__getattribute__(self, name)


def _real_drivers(cfg: Config, tmp_path: Path) -> tuple[list[Reads], Datapath, FakeWorld]:
    tables, xfrm_kernel, charon = CountingTables(), CountingXfrm(), CountingCharon()
    world = FakeWorld()
    world.ns(None).plain_link("tap0", kind="tun")  # the endpoint's interface
    host: FakeRoutingKernel = world.ns(None)

    @contextmanager
    def connect() -> Iterator[FakeCharon]:
        yield charon

    store = ReservationStore(tmp_path / "seq")
    xfrm = XfrmDriver(xfrm_kernel, cfg.host.underlay_prefix, 5, store, 30)
    spies = [
        Reads(NetfilterDriver(tables), lambda: dict(tables.reads)),
        Reads(xfrm, lambda: dict(xfrm_kernel.reads)),
        Reads(RoutingDriver(world.ns), lambda: dict(host.reads)),
        Reads(IkeDriver(connect), lambda: dict(charon.reads)),  # type: ignore[arg-type]
    ]
    return spies, Datapath(*spies), world  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["static", "ike"])
def test_one_apply_reads_the_kernel_once_and_applies_without_reading(
    mode: str, static: Config, tmp_path: Path
) -> None:
    if mode == "ike":
        psk = tmp_path / "psk"
        os.close(os.open(psk, os.O_WRONLY | os.O_CREAT, 0o600))
        psk.write_bytes(b"secret")
        cfg = config(keying={"mode": "ike", "psk_file": str(psk)})
    else:
        cfg = static
    spies, datapath, _ = _real_drivers(cfg, tmp_path)
    remote = view(route("10.0.0.2/32"))
    sysctls = len(desired_routing(cfg, remote).sysctls)
    for resync in (False, True):  # from nothing, then in line (a resync: no stage skipped)
        outcome = datapath.apply(cfg, remote, resync=resync)
        assert outcome.ok, [(s.name, s.errors) for s in outcome.stages]
        netfilter, xfrm, routing, ike = spies
        assert netfilter.by_plan and set(netfilter.by_plan.values()) == {1}  # each table once
        assert xfrm.by_plan == {"states": 1, "policies": 1}
        # each kind at most once (the cache: on the second apply only what the first one's
        # device changes made it forget), sysctls one file each
        assert routing.by_plan and all(
            n == 1 for kind, n in routing.by_plan.items() if kind != "sysctls"
        )
        assert routing.by_plan.get("sysctls", 0) <= sysctls
        if mode == "ike":
            assert ike.by_plan == dict.fromkeys(
                ["list_conns", "list_sas", "get_shared", "get_keys", "list_certs"], 1
            )
        assert [s.by_apply for s in spies] == [{}, {}, {}, {}]  # apply never reads
    # converged (charon's CHILD_SAs never come up in the fake: IKE keeps initiating)
    assert not [s.lines for s in datapath.plan(cfg, remote).stages if s.name != "ike" and s.lines]


# -- transient errors are retried with backoff, permanent ones reported once -------------------


def _agent_with(fakes: Fakes, **settings: Any) -> Harness:
    return Harness(
        Settings(min_interval_s=0.1, resync_interval_s=30, backoff_min_s=1, **settings),
        datapath=fakes.datapath(),
    )


def test_a_transient_error_is_retried_on_the_next_pass_with_backoff(fakes: Fakes) -> None:
    busy = Problem(f"{ROUTE.describe()}: Device or resource busy", transient=True, obj=ROUTE)
    fakes.routing.result = RoutingResult(problems=[busy])
    h = _agent_with(fakes)
    h.publish(view(route("10.0.0.2")))
    assert h.settle() == pytest.approx(1)  # retried after 1 s, then 2 s, 4 s
    h.clock.now += 1
    assert h.settle() == pytest.approx(2)
    h.clock.now += 2
    assert h.settle() == pytest.approx(4)
    assert fakes.calls.count("routing.apply") == 3
    assert len(h.lines("agent.apply.error")) == 3  # each attempt says what still fails
    assert "trigger=retry" in h.lines("agent.apply")[-1]
    fakes.routing.result = RoutingResult(done=[Change("+", ROUTE)])
    h.clock.now += 4
    assert h.settle() == pytest.approx(30)  # recovered: back to the resync period
    assert h.agent.snapshot().state == "ready"


def test_a_permanent_error_is_reported_once_and_not_retried(fakes: Fakes) -> None:
    bad = Problem("tenant blue: key file /etc/routed-nv/keys/blue.key is missing", False)
    fakes.xfrm.planned = XfrmPlan(problems=(bad,))
    fakes.xfrm.result = XfrmResult()
    h = _agent_with(fakes)
    h.publish(view(route("10.0.0.2")))
    assert h.settle() == pytest.approx(30)  # no retry: only the periodic resync comes back
    assert fakes.calls.count("xfrm.apply") == 1
    h.publish(view(route("10.0.0.3")))  # later passes, the same error
    h.clock.now += 1
    h.settle()
    h.clock.now += 30
    h.settle()
    assert fakes.calls.count("xfrm.apply") == 3
    (logged,) = h.lines("agent.apply.error")  # said once, not every pass
    assert "blue.key is missing" in logged
    snap = h.agent.snapshot()  # status shows it while it lasts
    assert snap.last_apply is not None and snap.last_apply.errors == (f"xfrm: {bad}",)
    fakes.xfrm.planned = XfrmPlan()  # fixed, then broken again: said again
    h.publish(view(route("10.0.0.4")))
    h.clock.now += 1
    h.settle()
    fakes.xfrm.planned = XfrmPlan(problems=(bad,))
    # a new peer host: XFRM has new inputs (unchanged ones it applied cleanly are skipped)
    h.publish(view(route("10.0.0.5", HOST3)))
    h.clock.now += 1
    h.settle()
    assert len(h.lines("agent.apply.error")) == 2


def test_a_resync_of_the_same_config_and_view_reads_the_kernel_but_does_not_recalculate(
    static: Config, fakes: Fakes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # at 1,000 endpoints the two calculations took most of a no-op resync
    import routed_nv.agent.datapath as module

    calls: list[str] = []
    for name in ("desired_rules", "desired_routing"):
        calc = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _c=calc, _n=name: calls.append(_n) or _c(*a))
    tables, _, datapath = counting(static, fakes, tmp_path)
    routes = view(route("10.0.0.2/32"))
    first = datapath.apply(static, routes)
    assert first.ok, [str(e) for s in first.stages for e in s.errors]
    assert sorted(calls) == ["desired_routing", "desired_rules"]
    calls.clear()
    tables.reads.clear()
    for _ in range(3):
        assert datapath.apply(static, routes, resync=True).ok
    assert calls == [] and tables.reads == {"ipv4 raw": 3, "ipv6 raw": 3}
    assert fakes.calls.count("routing.plan") == 4  # the routing stage still runs, reading
    # every full apply resolves mobility into a new view: an equal one is the same input
    assert datapath.apply(static, view(route("10.0.0.2/32")), resync=True).ok
    assert calls == []
    # a new view is a new input of routing only; a new config of both
    assert datapath.apply(static, view(route("10.0.0.3/32")), resync=True).ok
    assert calls == ["desired_routing"]
    calls.clear()
    assert datapath.apply(static.model_copy(), routes, resync=True).ok
    assert sorted(calls) == ["desired_routing", "desired_rules"]
