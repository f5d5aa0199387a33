"""The whole per-host datapath as one unit: calculate, plan and apply in a fixed order.

Order matters for isolation, so it is fixed here and nowhere else:
1. netfilter: anti-spoofing and "only what this tenant's SAs decrypted" come first;
2. XFRM: catch-all block policies, then SAs, then ESP policies — before any tunnel exists,
   nothing can leave a tenant in plaintext;
3. routing: VRFs, tunnels, workload interfaces and routes last, when traffic is already guarded;
4. IKE keying mode: charon's connections, once the host and tenant addresses they run between
   exist (routing puts them on rnv0); the SAs charon installs resolve the ESP policies of 2.
Each driver keeps going past a failing object; a failure in one stage does not stop the next, so
one bad object never leaves the rest of the host unprogrammed, and the next apply retries it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from routed_nv.calc.ike import desired_ike
from routed_nv.calc.inputs import DirectoryView
from routed_nv.calc.netfilter import desired_rules
from routed_nv.calc.routing import RoutingConflict, desired_routing
from routed_nv.calc.xfrm import desired_xfrm
from routed_nv.config.model import Config, KeyingMode
from routed_nv.esp import keys
from routed_nv.esp.driver import XfrmDriver
from routed_nv.esp.ike import IkeDriver
from routed_nv.esp.seqstore import ReservationStore
from routed_nv.esp.vici_adapter import ViciError, ViciSession
from routed_nv.esp.xfrm import IprouteXfrm
from routed_nv.netfilter.driver import NetfilterDriver
from routed_nv.netfilter.restore import RestoreTables
from routed_nv.routing.driver import RoutingDriver
from routed_nv.routing.netlink import NetlinkKernel


@dataclass
class Stage:
    name: str
    lines: list[str] = field(default_factory=list)  # changes (planned or made), one per line
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
    """The three drivers of one host (network namespace). Keep one instance for the life of an
    agent: the XFRM driver remembers since when old inbound SAs are unwanted (rotation grace)."""

    def __init__(
        self, config: Config, netns: str | None = None, resync_interval_s: float | None = None
    ) -> None:
        """`resync_interval_s`: the agent's, when it overrides the config's."""
        self._netns = netns
        self.netfilter = NetfilterDriver(RestoreTables(netns=netns))
        self.xfrm = XfrmDriver(
            IprouteXfrm(netns),
            config.host.underlay_prefix,
            config.keying.rotation_grace_s,
            ReservationStore(config.agent.state_dir),
            resync_interval_s or config.agent.resync_interval_s,
        )
        self.routing = RoutingDriver(NetlinkKernel, host_netns=netns)
        # charon is reached by its VICI socket path, whatever namespace it runs in.
        socket = config.keying.vici_socket
        self.ike = IkeDriver(lambda: ViciSession(socket), read_pins=self.xfrm.pinned_out_policies)

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

    def _netfilter(self, config: Config, view: DirectoryView, execute: bool) -> Stage:
        desired = desired_rules(config)
        stage = Stage("netfilter", errors=list(desired.errors))
        plan = self.netfilter.plan(desired)
        stage.lines = plan.lines()
        if execute and plan:
            stage.errors += self.netfilter.apply(desired).errors
        return stage

    def _xfrm(self, config: Config, view: DirectoryView, execute: bool) -> Stage:
        desired = desired_xfrm(config, view, keys.loader(config.keying.secrets_dir))
        stage = Stage("xfrm")
        plan = self.xfrm.plan(desired)
        stage.lines = [op.describe() for op in plan.ops]
        if execute:
            stage.errors += self.xfrm.apply(desired).errors
        else:
            stage.errors += desired.errors
        return stage

    def _ike(self, config: Config, view: DirectoryView, execute: bool) -> Stage:
        desired = desired_ike(config, view)
        if execute:
            result = self.ike.apply(desired)
            return Stage("ike", lines=result.done, errors=result.errors, pending=result.waiting)
        try:
            plan = self.ike.plan(desired)
        except ViciError as exc:
            return Stage("ike", errors=[*desired.errors, str(exc)])
        lines = [op.describe() for op in plan.ops]
        return Stage("ike", lines=lines, errors=list(desired.errors), pending=list(plan.waiting))

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
            errors=[str(f) for f in result.failures],
        )


def _stage(name: str, run: Callable[[], Stage]) -> Stage:
    start = time.monotonic()
    stage = run()
    stage.seconds = time.monotonic() - start
    return stage
