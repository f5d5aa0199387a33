"""The whole per-host datapath as one unit: calculate, plan and apply in a fixed order.

Order matters for isolation, so it is fixed here and nowhere else:
1. netfilter: anti-spoofing and "only what this tenant's SAs decrypted" come first;
2. XFRM: catch-all block policies, then SAs, then ESP policies — before any tunnel exists,
   nothing can leave a tenant in plaintext;
3. routing: VRFs, tunnels, workload interfaces and routes last, when traffic is already guarded;
4. IKE keying mode: charon's connections, once the host and tenant addresses they run between
   exist (routing puts them on rnv0); the SAs charon installs resolve the ESP policies of 2.
Each driver keeps going past a failing object; a failure in one stage (even an exception) does
not stop the next, so one bad object never leaves the rest of the host unprogrammed, and the next
apply retries it. Each stage reads the kernel once: it plans, and applies that plan.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from routed_nv.agent.changes import Changed, of_ike, of_netfilter, of_routing, of_xfrm
from routed_nv.calc.ike import credential_files, desired_ike
from routed_nv.calc.netfilter import desired_rules
from routed_nv.calc.routing import RoutingConflict, desired_routing
from routed_nv.calc.xfrm import desired_xfrm
from routed_nv.config.model import Config, KeyingMode
from routed_nv.esp import keys
from routed_nv.esp.driver import XfrmPlan, XfrmResult
from routed_nv.esp.ike import IkePlan, IkeResult
from routed_nv.esp.vici_adapter import ViciError
from routed_nv.esp.xfrm import XfrmError
from routed_nv.model.directory import DirectoryView
from routed_nv.model.ike import DesiredIke
from routed_nv.model.netfilter import DesiredRules
from routed_nv.model.routing import DesiredRouting
from routed_nv.model.xfrm import DesiredXfrm
from routed_nv.netfilter.driver import NetfilterPlan, NetfilterResult
from routed_nv.routing.driver import Result


# What the Datapath needs of each driver: the real ones are built in agent/wiring.py, unit tests
# pass fakes.
class NetfilterStage(Protocol):
    def plan(self, desired: DesiredRules) -> NetfilterPlan: ...
    def apply_plan(self, plan: NetfilterPlan) -> NetfilterResult: ...


class XfrmStage(Protocol):
    def plan(self, desired: DesiredXfrm) -> XfrmPlan: ...
    def apply_plan(self, plan: XfrmPlan) -> XfrmResult: ...


class RoutingStage(Protocol):
    def plan(self, desired: DesiredRouting, resync: bool = False) -> Result: ...
    def apply(self, desired: DesiredRouting, resync: bool = False) -> Result: ...


class IkeStage(Protocol):
    def plan(self, desired: DesiredIke) -> IkePlan: ...
    def apply(self, desired: DesiredIke) -> IkeResult: ...


@dataclass
class Stage:
    name: str
    lines: list[str] = field(default_factory=list)  # changes (planned or made), one per line
    changes: list[Changed] = field(default_factory=list)  # for the log: what apply really did
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # left alone this time because the kernel or a daemon is mid-change (IKE exchanges in
    # flight): neither a change nor an error, but not settled either
    pending: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    stages: list[Stage]

    @property
    def changed(self) -> bool:
        return any(stage.lines for stage in self.stages)

    @property
    def settled(self) -> bool:
        """Nothing to change and nothing in flight."""
        return not self.changed and not any(stage.pending for stage in self.stages)

    @property
    def ok(self) -> bool:
        return not any(stage.errors for stage in self.stages)


class Datapath:
    """The four drivers of one host (network namespace). Keep one instance for the life of an
    agent: the XFRM driver remembers since when old inbound SAs are unwanted (rotation grace).
    `agent.wiring.build_datapath` builds it with the real drivers."""

    def __init__(
        self, netfilter: NetfilterStage, xfrm: XfrmStage, routing: RoutingStage, ike: IkeStage
    ) -> None:
        self.netfilter = netfilter
        self.xfrm = xfrm
        self.routing = routing
        self.ike = ike

    def plan(self, config: Config, view: DirectoryView, resync: bool = False) -> Outcome:
        return self._run(config, view, execute=False, resync=resync)

    def apply(self, config: Config, view: DirectoryView, resync: bool = False) -> Outcome:
        """`resync`: drivers that cache the kernel (routing) read it again first; pass it on the
        periodic resync, which is what finds changes made behind the agent's back."""
        return self._run(config, view, execute=True, resync=resync)

    def _run(self, config: Config, view: DirectoryView, execute: bool, resync: bool) -> Outcome:
        return Outcome(
            [
                _stage("netfilter", lambda: self._netfilter(config, view, execute)),
                _stage("xfrm", lambda: self._xfrm(config, view, execute)),
                _stage("routing", lambda: self._routing(config, view, execute, resync)),
                *(
                    [_stage("ike", lambda: self._ike(config, view, execute))]
                    if config.keying.mode is KeyingMode.IKE
                    else []
                ),
            ]
        )

    # Each stage plans once; its apply takes that plan and does not read the kernel again.
    def _netfilter(self, config: Config, view: DirectoryView, execute: bool) -> Stage:
        desired = desired_rules(config)
        plan = self.netfilter.plan(desired)
        stage = Stage("netfilter", lines=plan.lines(), errors=[*desired.errors, *plan.errors])
        if execute and plan:
            result = self.netfilter.apply_plan(plan)
            stage.changes = of_netfilter(result.done)
            stage.errors += result.errors
        else:
            stage.changes = of_netfilter(plan.changes)
        return stage

    def _xfrm(self, config: Config, view: DirectoryView, execute: bool) -> Stage:
        static = config.keying.mode is KeyingMode.STATIC
        loaded = keys.load_all(config.keying.secrets_dir, config.tenants) if static else {}
        desired = desired_xfrm(config, view, loaded)
        stage = Stage("xfrm", errors=list(desired.errors))
        try:
            plan = self.xfrm.plan(desired)
        except XfrmError as exc:
            stage.errors.append(str(exc))
            return stage
        stage.lines = [op.describe() for op in plan.ops]
        if execute:
            result = self.xfrm.apply_plan(plan)
            stage.changes = of_xfrm(result.done)
            stage.errors += result.errors
        else:
            stage.changes = of_xfrm(plan.ops)
        return stage

    def _ike(self, config: Config, view: DirectoryView, execute: bool) -> Stage:
        desired = desired_ike(config, view, keys.read_files(*credential_files(config.keying)))
        if execute:
            result = self.ike.apply(desired)
            return Stage(
                "ike",
                lines=result.done,
                changes=of_ike(result.done),
                errors=result.errors,
                pending=result.waiting,
            )
        try:
            plan = self.ike.plan(desired)
        except ViciError as exc:
            return Stage("ike", errors=[*desired.errors, str(exc)])
        lines = [op.describe() for op in plan.ops]
        return Stage(
            "ike",
            lines=lines,
            changes=of_ike(lines),
            errors=list(desired.errors),
            pending=list(plan.waiting),
        )

    def _routing(self, config: Config, view: DirectoryView, execute: bool, resync: bool) -> Stage:
        try:
            desired = desired_routing(config, view)
        except RoutingConflict as exc:
            return Stage("routing", errors=[str(exc)])
        run = self.routing.apply if execute else self.routing.plan
        result = run(desired, resync=resync)
        return Stage(
            "routing",
            lines=[str(c) for c in result.changes],
            changes=of_routing(result.changes),
            errors=[str(f) for f in result.failures],
        )


def _stage(name: str, run: Callable[[], Stage]) -> Stage:
    start = time.monotonic()
    try:
        stage = run()
    except Exception as exc:  # a bug or a vanished netns: the next stages still run
        stage = Stage(name, errors=[f"{type(exc).__name__}: {exc}"])
    stage.seconds = time.monotonic() - start
    return stage
