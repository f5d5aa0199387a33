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
apply retries it. Every driver keeps the one contract of model/result.py: each stage reads the
kernel once to plan, and applies that plan; its errors say whether retrying may help.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from routed_nv.agent.changes import Changed, of_ike, of_netfilter, of_routing, of_xfrm
from routed_nv.calc.ike import DesiredIke, desired_ike
from routed_nv.calc.inputs import DirectoryView
from routed_nv.calc.netfilter import DesiredRules, desired_rules
from routed_nv.calc.routing import RoutingConflict, desired_routing
from routed_nv.calc.xfrm import DesiredXfrm, desired_xfrm
from routed_nv.config.model import Config, KeyingMode
from routed_nv.esp import keys
from routed_nv.esp.driver import XfrmPlan, XfrmResult
from routed_nv.esp.ike import IkePlan, IkeResult
from routed_nv.model.result import Plan, Problem, Result
from routed_nv.netfilter.driver import NetfilterPlan, NetfilterResult
from routed_nv.routing.driver import RoutingPlan, RoutingResult
from routed_nv.routing.objects import DesiredRouting


# What the Datapath needs of each driver (the one plan/apply contract of model/result.py): the
# real ones are built in agent/wiring.py, unit tests pass fakes.
class NetfilterStage(Protocol):
    def plan(self, desired: DesiredRules) -> NetfilterPlan: ...
    def apply(self, plan: NetfilterPlan) -> NetfilterResult: ...


class XfrmStage(Protocol):
    def plan(self, desired: DesiredXfrm) -> XfrmPlan: ...
    def apply(self, plan: XfrmPlan) -> XfrmResult: ...


class RoutingStage(Protocol):
    def plan(self, desired: DesiredRouting, resync: bool = False) -> RoutingPlan: ...
    def apply(self, plan: RoutingPlan) -> RoutingResult: ...


class IkeStage(Protocol):
    def plan(self, desired: DesiredIke) -> IkePlan: ...
    def apply(self, plan: IkePlan) -> IkeResult: ...


@dataclass
class Stage:
    name: str
    lines: list[str] = field(default_factory=list)  # changes (planned or made), one per line
    changes: list[Changed] = field(default_factory=list)  # for the log: the same, as objects
    errors: list[Problem] = field(default_factory=list)
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

    @property
    def retry(self) -> bool:
        """Whether trying again may fix an error by itself (one is transient)."""
        return any(e.transient for stage in self.stages for e in stage.errors)


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
        # Each stage plans once; its apply takes that plan and does not read the kernel again.
        def routing_plan() -> RoutingPlan:
            try:
                desired = desired_routing(config, view)
            except RoutingConflict as exc:  # the config and the directory disagree
                return RoutingPlan(problems=(Problem(str(exc), transient=False),))
            return self.routing.plan(desired, resync=resync)

        stages = [
            _stage(
                "netfilter",
                lambda: self.netfilter.plan(desired_rules(config)),
                self.netfilter.apply if execute else None,
                of_netfilter,
            ),
            _stage(
                "xfrm",
                lambda: self.xfrm.plan(
                    desired_xfrm(config, view, keys.loader(config.keying.secrets_dir))
                ),
                self.xfrm.apply if execute else None,
                of_xfrm,
            ),
            _stage("routing", routing_plan, self.routing.apply if execute else None, of_routing),
        ]
        if config.keying.mode is KeyingMode.IKE:

            def ike_plan() -> IkePlan:
                return self.ike.plan(desired_ike(config, view))

            stages.append(_stage("ike", ike_plan, self.ike.apply if execute else None, of_ike))
        return Outcome(stages)


def _stage(
    name: str,
    plan: Callable[[], Plan[Any]],
    apply: Callable[[Any], Result[Any]] | None,
    changed: Callable[[Iterable[Any]], list[Changed]],
) -> Stage:
    """Plans a stage and, unless `apply` is None (a dry run), applies that plan: the lines are
    what was planned or done, the errors the plan's and the apply's."""
    start = time.monotonic()
    try:
        planned = plan()
        if apply is None:
            objs, errors, pending = list(planned.changes), list(planned.problems), planned.pending
        else:
            result = apply(planned)
            objs, errors, pending = result.done, result.problems, result.pending
        stage = Stage(
            name,
            [line for obj in objs for line in obj.lines()],
            changed(objs),
            errors,
            pending=list(pending),
        )
    except Exception as exc:  # a bug or a vanished netns: the next stages still run
        stage = Stage(name, errors=[Problem(f"{type(exc).__name__}: {exc}", transient=True)])
    stage.seconds = time.monotonic() - start
    return stage
