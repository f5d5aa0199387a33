"""The XFRM driver: reads routed_nv's SAs and policies back from the kernel, diffs them against the
desired state and applies the difference in an order that never opens a plaintext window.

Order: block policies, inbound SAs, outbound SAs (the kernel prefers the newest SA for output, so
a new generation takes over as soon as it is added), ESP-required policies; then removals, last:
ESP-required policies, SAs (an inbound one only once it has been stale for the rotation
grace period, so packets still in flight decrypt), block policies.

Static-key outbound SAs are created at their persisted sequence reservation and their reservations
are kept ahead of the kernel's counters on every apply (esp/seqres.py, esp/seqstore.py), so a
host that lost its kernel state never sends sequence numbers its peers have already seen.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Protocol

from routed_nv.esp import seqres
from routed_nv.esp.seqstore import Reservations, ReservationStore, StoreError
from routed_nv.esp.xfrm import Op, OpFailure, Verb, XfrmError
from routed_nv.model import markers
from routed_nv.model.delta import delta
from routed_nv.model.result import Plan, Problem, Result, permanent, problem_of
from routed_nv.model.xfrm import (
    TUNNELLED_PROTOS,
    DesiredXfrm,
    Direction,
    PolicyKey,
    StateKey,
    XfrmPolicy,
    XfrmState,
)


class XfrmAdapter(Protocol):
    def read_states(self) -> list[XfrmState]: ...
    def read_policies(self) -> list[XfrmPolicy]: ...
    def apply(self, ops: list[Op]) -> list[OpFailure]: ...


@dataclass(frozen=True)
class XfrmPlan(Plan[Op]):
    waiting: Mapping[StateKey, float] = field(default_factory=dict)  # stale inbound SAs kept
    # for now: key -> seconds left. What apply() needs from the read the plan was made on, so it
    # never reads again: whether the read succeeded, our SAs as they were (their outbound
    # sequence counters), when, and whether SAs are ours to manage (not in IKE mode).
    read: bool = False
    states: tuple[XfrmState, ...] = ()
    now: float = 0.0
    manage_states: bool = False

    def lines(self) -> list[str]:
        """The plan for humans (`apply --dry-run`); keys are redacted."""
        return super().lines() + [
            f"keep state dst {dst} spi 0x{spi:08x} for {left:.0f} s more (rotation grace)"
            for (dst, spi), left in sorted(self.waiting.items())
        ]


@dataclass
class XfrmResult(Result[Op]):
    waiting: int = 0  # stale inbound SAs left in place until their grace period ends

    def _count(self, verb: Verb) -> int:
        return sum(op.verb is verb for op in self.done)

    @property
    def added(self) -> int:
        return self._count(Verb.ADD)

    @property
    def updated(self) -> int:
        return self._count(Verb.UPDATE)

    @property
    def deleted(self) -> int:
        return self._count(Verb.DELETE)


class XfrmDriver:
    """Programs one network namespace's XFRM state (the adapter decides which namespace)."""

    def __init__(
        self,
        adapter: XfrmAdapter,
        local_prefix: ipaddress.IPv6Network,
        grace_s: float,
        store: ReservationStore,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`interval_s`: the longest regular time between two applies (the agent's resync),
        which the outbound sequence reservations must cover."""
        self._adapter = adapter
        self._local_prefix = local_prefix
        self._grace_s = grace_s
        self._store = store
        self._interval_s = interval_s
        self._clock = clock
        # Persisted reservations as last read or written: a lower bound of the file (only ever
        # raised, also by others), so it says when the file must be updated. None: not read yet.
        self._reserved: Reservations | None = None
        self._samples: dict[StateKey, seqres.Sample] = {}  # last oseq reading per outbound SA
        self._unsent: dict[StateKey, int] = {}  # starts of outbound SAs whose add failed
        # When each stale inbound SA was first seen stale. Lost on restart, which only delays
        # its removal by one more grace period.
        self._stale_since: dict[StateKey, float] = {}

    def plan(self, desired: DesiredXfrm) -> XfrmPlan:
        """What apply() would do now; reads the kernel once, changes nothing. A kernel that
        cannot be read is the plan's problem (and its apply changes nothing)."""
        problems = permanent(desired.errors)
        try:
            states, policies = self._read()
        except XfrmError as exc:
            return XfrmPlan(problems=(*problems, problem_of(exc)))
        now = self._clock()
        plan = plan_ops(
            desired, states, policies, self._local_prefix, self._stale_since, now, self._grace_s
        )
        return replace(
            plan,
            problems=tuple(problems),
            read=True,
            states=tuple(states),
            now=now,
            manage_states=desired.states is not None,
        )

    def apply(self, plan: XfrmPlan) -> XfrmResult:
        """Applies a plan of this driver without reading the kernel again."""
        result = XfrmResult(problems=list(plan.problems))
        if not plan.read:
            return result
        self._stale_since = {k: self._stale_since.get(k, plan.now) for k in plan.waiting}
        ops = list(plan.changes)
        if plan.manage_states:
            ops = self._reserve(list(plan.states), ops, plan.now, result.problems)
        try:
            failures = self._adapter.apply(ops)
        except XfrmError as exc:
            result.problems.append(problem_of(exc))
            return result
        failed = {id(f.op) for f in failures}
        self._unsent = {
            o.key(): o.oseq for o in _added_states(f.op for f in failures) if self._outbound(o)
        }
        result.done = [op for op in ops if id(op) not in failed]
        result.waiting = len(plan.waiting)
        result.problems += [Problem(str(f), transient=True, obj=f.op) for f in failures]
        return result

    def reconcile(self, desired: DesiredXfrm) -> XfrmResult:
        """Brings the kernel in line: plan() and apply()."""
        return self.apply(self.plan(desired))

    def _reserve(
        self, states: list[XfrmState], ops: list[Op], now: float, problems: list[Problem]
    ) -> list[Op]:
        """Raises the persisted reservations of our outbound SAs that need it, then returns the
        ops with every outbound SA to create starting at its reservation. If the store fails, no
        outbound SA is created (or replaced): the ones in the kernel keep running."""
        running = {s.key(): s.oseq for s in states if self._outbound(s)}
        creating = {o.key() for o in _added_states(ops) if self._outbound(o)}
        samples = {key: seqres.Sample(oseq, now) for key, oseq in running.items()}
        pps = {key: seqres.rate(self._samples.get(key), s) for key, s in samples.items()}
        self._samples = samples
        starts: dict[StateKey, int] = {}

        def wanted(held: Reservations) -> Reservations:
            want = {
                key: seqres.extend(held.get(key, 0), oseq, pps[key], self._interval_s).reserved
                for key, oseq in running.items()
            }
            for key in creating:
                # Above all the file holds and a replaced SA sent; an SA whose add failed in this
                # process never sent anything, so its retry reuses the start (else every retry
                # would burn a reservation).
                start = self._unsent.get(key, max(held.get(key, 0), running.get(key, 0)))
                starts[key] = start
                want[key] = seqres.extend(start, start, 0, self._interval_s).reserved
            return want

        try:
            if self._reserved is None:
                self._reserved = self._store.load()
            known = self._reserved
            if any(v > known.get(k, 0) for k, v in wanted(known).items()):
                self._reserved = self._store.raise_to(wanted)
        except StoreError as exc:
            if creating:
                problems.append(
                    problem_of(exc, message=f"{len(creating)} outbound SAs not created: {exc}")
                )
            else:
                problems.append(
                    problem_of(exc, message=f"outbound sequence reservations not updated: {exc}")
                )
            return [op for op in ops if not _state_in(op, creating)]
        for key, oseq in sorted({**running, **starts}.items()):
            check = seqres.extend(
                self._reserved.get(key, 0), oseq, pps.get(key, 0), self._interval_s
            )
            if check.problem:  # the tenant's key must be rotated: retrying does not help
                problems.append(
                    Problem(
                        f"outbound SA dst {key[0]} spi 0x{key[1]:08x} {check.problem}",
                        transient=False,
                    )
                )
        return [
            Op(op.verb, replace(op.obj, oseq=starts[op.obj.key()]))
            if op.verb is Verb.ADD and isinstance(op.obj, XfrmState) and op.obj.key() in starts
            else op
            for op in ops
        ]

    def _outbound(self, state: XfrmState) -> bool:
        return state.src in self._local_prefix

    def pinned_out_policies(self) -> list[XfrmPolicy]:
        """charon's outbound policies for our tenants (our reqid, pinned to an SPI): what the
        IKE driver checks against the CHILD_SAs charon lists."""
        return [
            p
            for p in self._adapter.read_policies()
            if p.direction is Direction.OUT
            and p.spi
            and p.reqid is not None
            and markers.tenant_of_reqid(p.reqid) is not None
            and not is_our_policy(p, self._local_prefix)
        ]

    def _read(self) -> tuple[list[XfrmState], list[XfrmPolicy]]:
        states = [s for s in self._adapter.read_states() if is_our_state(s)]
        policies = [
            p for p in self._adapter.read_policies() if is_our_policy(p, self._local_prefix)
        ]
        return states, policies


def _added_states(ops: Iterable[Op]) -> list[XfrmState]:
    return [op.obj for op in ops if op.verb is Verb.ADD and isinstance(op.obj, XfrmState)]


def _state_in(op: Op, keys: set[StateKey]) -> bool:
    return isinstance(op.obj, XfrmState) and op.obj.key() in keys


def is_our_state(state: XfrmState) -> bool:
    return state.tenant_id is not None


def is_our_policy(policy: XfrmPolicy, local_prefix: ipaddress.IPv6Network) -> bool:
    if policy.reqid is not None:
        # charon's own policies carry our reqid too, at their own priority: they are charon's
        return (
            markers.tenant_of_reqid(policy.reqid) is not None
            and policy.priority == markers.XFRM_POLICY_PRIORITY
        )
    # A block carries no reqid: ours are at our priority, on a tenant address of this host.
    tenant_side = policy.src if policy.direction == "out" else policy.dst
    return (
        policy.is_block
        and policy.priority == markers.XFRM_BLOCK_PRIORITY
        and policy.proto in TUNNELLED_PROTOS
        and tenant_side.prefixlen == 128
        and tenant_side.subnet_of(local_prefix)
    )


def plan_ops(
    desired: DesiredXfrm,
    actual_states: Iterable[XfrmState],
    actual_policies: Iterable[XfrmPolicy],
    local_prefix: ipaddress.IPv6Network,
    stale_since: Mapping[StateKey, float],
    now: float,
    grace_s: float,
) -> XfrmPlan:
    """The ordered ops from actual (already filtered to ours) to desired. Pure."""
    pol = delta(desired.policies, {p.key(): p for p in actual_policies})

    def policies(objs: Mapping[PolicyKey, XfrmPolicy], verb: Verb, block: bool) -> list[Op]:
        return [Op(verb, p) for _, p in sorted(objs.items(), key=_sort) if p.is_block == block]

    sa_upserts: list[Op] = []
    sa_deletes: list[Op] = []
    waiting: dict[StateKey, float] = {}
    if desired.states is not None:
        keep = desired.keep_states_of
        actual = {s.key(): s for s in actual_states if s.tenant_id not in keep}
        sa = delta(desired.states, actual)

        def inbound_first(item: tuple[StateKey, XfrmState]) -> tuple[bool, str]:
            return (item[1].src in local_prefix, str(item[0]))

        for key, state in sorted(sa.upserts.items(), key=inbound_first):
            if key in actual:  # an SA cannot change in place: replace it
                sa_upserts.append(Op(Verb.DELETE, actual[key]))
            sa_upserts.append(Op(Verb.ADD, state))
        for key, state in sorted(sa.deletes.items(), key=inbound_first):
            left = grace_s - (now - stale_since.get(key, now))
            if state.src in local_prefix or left <= 0:  # outbound SAs go at once
                sa_deletes.append(Op(Verb.DELETE, state))
            else:
                waiting[key] = left
    ops = [
        *policies(pol.upserts, Verb.UPDATE, block=True),
        *sa_upserts,
        *policies(pol.upserts, Verb.UPDATE, block=False),
        *policies(pol.deletes, Verb.DELETE, block=False),
        *sa_deletes,
        *policies(pol.deletes, Verb.DELETE, block=True),
    ]
    return XfrmPlan(tuple(ops), waiting=waiting)


def _sort(item: tuple[object, object]) -> str:
    # A stable, readable order for plans and batches.
    return str(item[0])
