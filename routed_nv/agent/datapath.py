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

Work in proportion to the change:
- a stage whose inputs are the ones it last applied without error or anything pending is
  skipped, unless the apply is a resync (which reads everything again: drift): netfilter's only
  input is the config, XFRM's the config, the view's (tenant, peer host) pairs and the key
  files' contents, routing's the config and the view; IKE is never skipped on this path
  (charon's own state changes without any input of ours changing);
- given the config and view it last applied, when only endpoints changed (the endpoint API),
  only those endpoints' routing objects are computed and applied (calc.routing
  .endpoint_changes), against the routing driver's cache; netfilter edits only their rules;
- given a directory delta that changes only other hosts' addresses (the agent checks that no
  local address's mobility decision moves), under the config last applied, only the routes
  and proxy-NDP entries of the changed addresses are computed and applied, against the routing
  driver's cache; XFRM and IKE run only when a tenant gains or loses a peer host.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from routed_nv.agent.changes import Changed, of_ike, of_netfilter, of_routing, of_xfrm
from routed_nv.agent.snapshot import changed_endpoints
from routed_nv.calc.ike import CredentialFiles, credential_files, desired_ike
from routed_nv.calc.netfilter import desired_rules, endpoint_rule_changes
from routed_nv.calc.routing import (
    RoutingConflict,
    desired_routing,
    endpoint_changes,
    remote_changes,
)
from routed_nv.calc.xfrm import desired_xfrm
from routed_nv.config.model import Config, KeyingMode
from routed_nv.esp import keys
from routed_nv.esp.driver import XfrmPlan, XfrmResult
from routed_nv.esp.ike import IkePlan, IkeResult
from routed_nv.model.directory import DirectoryView
from routed_nv.model.directory_delta import DirectoryDelta
from routed_nv.model.ike import DesiredIke
from routed_nv.model.keys import LoadedKeys
from routed_nv.model.netfilter import DesiredRules, TableChange
from routed_nv.model.result import Plan, Problem, Result
from routed_nv.model.routing import DesiredRouting
from routed_nv.model.xfrm import DesiredXfrm
from routed_nv.netfilter.driver import NetfilterPlan, NetfilterResult
from routed_nv.routing.driver import RoutingPlan, RoutingResult


# What the Datapath needs of each driver (the one plan/apply contract of model/result.py): the
# real ones are built in agent/wiring.py, unit tests pass fakes.
class NetfilterStage(Protocol):
    def plan(self, desired: DesiredRules) -> NetfilterPlan: ...
    def apply(self, plan: NetfilterPlan) -> NetfilterResult: ...
    def apply_changes(self, changes: list[TableChange]) -> NetfilterResult: ...


class XfrmStage(Protocol):
    def plan(self, desired: DesiredXfrm) -> XfrmPlan: ...
    def apply(self, plan: XfrmPlan) -> XfrmResult: ...


class RoutingStage(Protocol):
    def plan(self, desired: DesiredRouting, resync: bool = False) -> RoutingPlan: ...
    def apply(self, plan: RoutingPlan) -> RoutingResult: ...
    def apply_changes(
        self, upserts: Iterable[Any], deletes: Iterable[Any]
    ) -> RoutingResult | None: ...


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
    skipped: bool = False  # not run: its inputs are those it last applied cleanly
    timers: bool = False  # the driver waits for time to pass (rotation grace): run it again


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
        # per stage, the inputs it last applied with no error and nothing pending
        self._clean: dict[str, tuple[object, ...]] = {}
        # per calculation, its last inputs and result: a resync reads the kernel again, but
        # what we want of it is pure calculation of the same config and view (at 1,000
        # endpoints desired_routing and desired_rules took most of a no-op resync)
        self._desired: dict[Callable[..., Any], tuple[tuple[object, ...], Any]] = {}

    def plan(self, config: Config, view: DirectoryView, resync: bool = False) -> Outcome:
        return self._run(config, view, execute=False, resync=resync)

    def apply(
        self,
        config: Config,
        view: DirectoryView,
        resync: bool = False,
        delta: DirectoryDelta | None = None,
        since: tuple[Config, DirectoryView] | None = None,
    ) -> Outcome:
        """`resync`: drivers that cache the kernel (routing) read it again first; pass it on the
        periodic resync, which is what finds changes made behind the agent's back. `delta`: how
        `view` differs from the view last applied, when only other hosts' addresses changed.
        `since`: the config and view last applied, when only endpoints may have changed."""
        if delta is not None and not resync and delta.remote_only:
            outcome = self._apply_delta(config, view, delta)
            if outcome is not None:
                return outcome
        if since is not None and not resync:
            names = self._changed_endpoints(since, config, view)
            if names is not None:
                return self._apply_endpoints(config, view, since, names)
        return self._run(config, view, execute=True, resync=resync)

    def _changed_endpoints(
        self, since: tuple[Config, DirectoryView], config: Config, view: DirectoryView
    ) -> set[str] | None:
        """changed_endpoints, or None when routing last applied something else than `since`."""
        routing = self._clean.get("routing")
        if routing is None or routing[0] is not since[0] or routing[1] is not since[1]:
            return None
        return changed_endpoints(since, config, view)

    def _apply_endpoints(
        self,
        config: Config,
        view: DirectoryView,
        since: tuple[Config, DirectoryView],
        names: set[str],
    ) -> Outcome:
        """Every stage but routing as usual (netfilter edits only what changed); routing only
        for these endpoints, or in full when that cannot be done."""
        old_config = since[0]
        stages = [self._endpoint_rules(old_config, config, view, names)]
        # XFRM and IKE take nothing from endpoints (tenants, keys and peer hosts are as last
        # applied: _changed_endpoints checked): skipped if XFRM last applied them cleanly, IKE
        # as on the delta path (a restarted charon waits for the next full apply or resync)
        peers, xfrm = _peer_pairs(view), self._clean.get("xfrm")
        loaded = _tenant_keys(config)
        if xfrm is not None and xfrm[0] is old_config and xfrm[1:] == (peers, loaded):
            self._clean["xfrm"] = (config, peers, loaded)
            stages.append(Stage("xfrm", skipped=True))
        else:
            stages.append(self._maybe_xfrm(config, view, peers))
        start = time.monotonic()
        try:
            upserts, deletes = endpoint_changes(since, (config, view), names)
            result = self.routing.apply_changes(upserts, deletes)
        except RoutingConflict:
            result = None
        if result is None:
            stages.append(self._maybe("routing", lambda: self._routing(config, view, True, False),
                                      (config, view)))  # fmt: skip
        else:
            stages.append(self._routing_stage(result, start, (config, view)))
        if config.keying.mode is KeyingMode.IKE:
            stages.append(Stage("ike", skipped=True))
        return Outcome(stages)

    def _endpoint_rules(
        self, old: Config, config: Config, view: DirectoryView, names: set[str]
    ) -> Stage:
        """Netfilter for a change of these endpoints: their chains and dispatch rules alone,
        without reading the tables, when the rules of `old` are what it last applied cleanly;
        else the whole stage."""
        clean = self._clean.pop("netfilter", None)
        changes = None
        if clean is not None and clean[0] is old:
            with contextlib.suppress(RoutingConflict):  # the full stage reports it
                changes = endpoint_rule_changes(old, config, names)
        if changes is None:
            if clean is not None:
                self._clean["netfilter"] = clean
            return self._maybe("netfilter", lambda: self._netfilter(config, view, True), (config,))
        start = time.monotonic()
        result = self.netfilter.apply_changes(changes)
        stage = Stage(
            "netfilter",
            [line for obj in result.done for line in obj.lines()],
            of_netfilter(result.done),
            list(result.problems),
            seconds=time.monotonic() - start,
        )
        if not stage.errors:
            self._clean["netfilter"] = (config,)
        return stage

    def _routing_stage(
        self, result: RoutingResult, start: float, inputs: tuple[object, ...]
    ) -> Stage:
        """The routing stage of a partial apply; clean with these inputs if it had no error."""
        stage = Stage(
            "routing",
            lines=result.lines(),
            changes=of_routing(result.done),
            errors=list(result.problems),
            seconds=time.monotonic() - start,
        )
        if stage.errors:
            self._clean.pop("routing", None)
        else:
            self._clean["routing"] = inputs
        return stage

    def _run(self, config: Config, view: DirectoryView, execute: bool, resync: bool) -> Outcome:
        if resync:
            self._clean.clear()
        ike = config.keying.mode is KeyingMode.IKE
        if not execute:  # a plan reads everything, and changes nothing that is known
            stages = [
                self._netfilter(config, view, False),
                self._xfrm(config, view, False, _tenant_keys(config)),
                self._routing(config, view, False, resync),
            ]
            if ike:
                stages.append(self._ike(config, view, False, _credentials(config)))
            return Outcome(stages)
        peers = _peer_pairs(view)
        stages = [
            self._maybe("netfilter", lambda: self._netfilter(config, view, True), (config,)),
            self._maybe_xfrm(config, view, peers),
            self._maybe(
                "routing", lambda: self._routing(config, view, True, resync), (config, view)
            ),
        ]
        if ike:
            stages.append(self._ike_stage(config, view))
        return Outcome(stages)

    def _maybe_xfrm(self, config: Config, view: DirectoryView, peers: frozenset[Any]) -> Stage:
        # the key files are inputs too: a rotation edits them, not the config
        loaded = _tenant_keys(config)
        return self._maybe(
            "xfrm", lambda: self._xfrm(config, view, True, loaded), (config, peers, loaded)
        )

    def _ike_stage(self, config: Config, view: DirectoryView) -> Stage:
        # never skipped for unchanged inputs: charon keeps state of its own (it restarts, and
        # negotiates, rekeys and deletes with its peers by itself), so only reading its lists
        # says whether there is nothing to do
        return self._ike(config, view, True, _credentials(config))

    def _calc(self, calc: Callable[..., Any], *inputs: object) -> Any:
        """calc(*inputs), or its last result for the same inputs: the config by identity (it is
        replaced whole when it changes), the view by value (every full apply resolves mobility
        into a new one; comparing sets costs milliseconds). A raised error is not kept."""
        last = self._desired.get(calc)
        if last is not None and all(
            a is b or (isinstance(a, DirectoryView) and a == b)
            for a, b in zip(last[0], inputs, strict=True)
        ):
            return last[1]
        result = calc(*inputs)
        self._desired[calc] = (inputs, result)
        return result

    def _maybe(self, name: str, run: Callable[[], Stage], inputs: tuple[object, ...]) -> Stage:
        """Run a stage unless it last applied these very inputs cleanly. The config and the
        view count by identity (each is replaced whole when it changes, and a reload runs
        everything), the peer pairs and the key files' contents by value."""
        last = self._clean.pop(name, None)
        if last is not None and all(
            a is b or (isinstance(a, frozenset | dict) and a == b)
            for a, b in zip(last, inputs, strict=True)
        ):
            self._clean[name] = inputs
            return Stage(name, skipped=True)
        stage = run()
        if not (stage.errors or stage.pending or stage.timers):
            self._clean[name] = inputs
        return stage

    def _apply_delta(
        self, config: Config, view: DirectoryView, delta: DirectoryDelta
    ) -> Outcome | None:
        """Only the changed addresses' routing objects; None when that cannot be done (another
        config, or the routing cache must be read first): the caller runs every stage."""
        routing = self._clean.get("routing")
        if routing is None or routing[0] is not config:
            return None
        try:
            upserts, deletes = remote_changes(config, delta.remote_added, delta.remote_removed)
        except RoutingConflict:
            return None
        start = time.monotonic()
        result = self.routing.apply_changes(upserts, deletes)
        if result is None:
            return None
        stage = self._routing_stage(result, start, (config, view))
        peers = None if not delta.peers else _peer_pairs(view)  # rare: a tenant's peer set
        stages = [Stage("netfilter", skipped=True)]
        stages.append(
            Stage("xfrm", skipped=True) if peers is None else self._maybe_xfrm(config, view, peers)
        )
        stages.append(stage)
        if config.keying.mode is KeyingMode.IKE:
            stages.append(
                Stage("ike", skipped=True) if peers is None else self._ike_stage(config, view)
            )
        return Outcome(stages)

    # Each stage plans once; its apply takes that plan and does not read the kernel again.
    def _netfilter(self, config: Config, view: DirectoryView, execute: bool) -> Stage:
        return _stage(
            "netfilter",
            lambda: self.netfilter.plan(self._calc(desired_rules, config)),
            self.netfilter.apply if execute else None,
            of_netfilter,
        )

    def _xfrm(
        self, config: Config, view: DirectoryView, execute: bool, loaded: LoadedKeys
    ) -> Stage:
        return _stage(
            "xfrm",
            lambda: self.xfrm.plan(desired_xfrm(config, view, loaded)),
            self.xfrm.apply if execute else None,
            of_xfrm,
            timers=lambda result: result.waiting > 0,
        )

    def _ike(
        self, config: Config, view: DirectoryView, execute: bool, texts: CredentialFiles
    ) -> Stage:
        return _stage(
            "ike",
            lambda: self.ike.plan(desired_ike(config, view, texts)),
            self.ike.apply if execute else None,
            of_ike,
        )

    def _routing(self, config: Config, view: DirectoryView, execute: bool, resync: bool) -> Stage:
        def plan() -> RoutingPlan:
            try:
                desired = self._calc(desired_routing, config, view)
            except RoutingConflict as exc:  # the config and the directory disagree
                return RoutingPlan(problems=(Problem(str(exc), transient=False),))
            return self.routing.plan(desired, resync=resync)

        return _stage("routing", plan, self.routing.apply if execute else None, of_routing)


def _peer_pairs(view: DirectoryView) -> frozenset[tuple[int, object]]:
    """What XFRM and IKE take from the view: which peer hosts each tenant has."""
    return frozenset((r.tenant_id, r.peer) for r in view.remote_routes)


def _stage(
    name: str,
    plan: Callable[[], Plan[Any]],
    apply: Callable[[Any], Result[Any]] | None,
    changed: Callable[[Iterable[Any]], list[Changed]],
    timers: Callable[[Any], bool] | None = None,
) -> Stage:
    """Plans a stage and, unless `apply` is None (a dry run), applies that plan: the lines are
    what was planned or done, the errors the plan's and the apply's. `timers`: whether the
    result waits for time to pass (the stage must run again even with unchanged inputs)."""
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
            timers=apply is not None and timers is not None and timers(result),
        )
    except Exception as exc:  # a bug or a vanished netns: the next stages still run
        stage = Stage(name, errors=[Problem(f"{type(exc).__name__}: {exc}", transient=True)])
    stage.seconds = time.monotonic() - start
    return stage


def _tenant_keys(config: Config) -> LoadedKeys:
    """Static keying's keys, read afresh at each apply (rotation is edit + apply)."""
    if config.keying.mode is not KeyingMode.STATIC:
        return {}
    return keys.load_all(config.keying.secrets_dir, config.tenants)


def _credentials(config: Config) -> CredentialFiles:
    """IKE's credential files' contents, read afresh at each apply."""
    return keys.read_files(*credential_files(config.keying))
