"""The agent's reconcile loop (after Calico Felix): cheap inputs mark dirty, one thread applies.

Inputs come from anywhere and only record and wake: `publish` (the directory source's callback,
any thread), `request_reload` and `request_stop` (signal handlers, the control socket). The loop
thread alone touches the kernel, through one Datapath that lives as long as the agent:
- one apply per dirty period, never sooner than `min_interval_s` after the previous one started,
  so a burst of directory updates becomes one apply of the latest view;
- a full resync every `resync_interval_s` even when nothing is dirty: drivers that cache the
  kernel (routing) read it all again first, so this catches drift nobody reported; a retry
  after a failure resyncs too, since a failure can mean the cache is wrong;
- a failed apply (some objects, or an exception) stays dirty and is retried with exponential
  backoff; the objects that did apply stay applied;
- before the source is in sync no remote route is deleted (`source.keep_known`);
- when a source says how its view changed (`SourceUpdate.delta`, the BGP source) and only other
  hosts' addresses did, none of them local, the loop composes the deltas of the updates since
  the last apply and hands the net delta to the datapath, which applies only those addresses'
  objects; the counts and the withdrawn memory follow the delta too. When only the endpoint API
  changed the config, the datapath is given the config and view last applied and applies only
  the changed endpoints' objects. Anything else (another config change, an address of this
  host, mobility, a source not in sync, a retry, the resync) takes the full path, the only one
  that is O(everything);
- which host announces an address held by more than one is decided on the applied view
  (calc/mobility.py), and logged when it changes; the loop keeps the memory that re-asserts a
  still-attached address and freezes a flapping one (calc/duplicates.py), wakes up when a
  re-assertion falls due, and clears a duplicate when the operator asks (`request_clear`).
Stopping leaves the dataplane exactly as it is (fail closed: isolation stays in the kernel; a
restarted agent adopts it and changes nothing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from routed_nv.agent.changes import log_changes
from routed_nv.agent.events import EventLog
from routed_nv.agent.notify import Notifier
from routed_nv.agent.snapshot import (
    ApplyRecord,
    Counts,
    Drift,
    SaInfo,
    Snapshot,
    SourceInfo,
    Withdrawn,
    changed_endpoints,
    count,
    recount,
    recount_endpoints,
)
from routed_nv.agent.source import DirectorySource, keep_known
from routed_nv.calc import mobility
from routed_nv.calc.duplicates import Duplicate, Guard, Limits, Where
from routed_nv.calc.routing import RoutingConflict
from routed_nv.config.loader import ConfigError, Problem
from routed_nv.config.model import Config
from routed_nv.config.views import local_addresses
from routed_nv.model.directory import Claim, DirectoryView, IPNetwork, RemoteRoute
from routed_nv.model.directory_delta import DirectoryDelta
from routed_nv.model.directory_source import RejectedRoute, SourceUpdate

if TYPE_CHECKING:  # importing the Datapath module pulls in pyroute2
    from routed_nv.agent.datapath import Outcome


REJECTED_LOG_MAX = 20  # rejected routes logged one by one per apply
WITHDRAWN_MAX = 4096  # withdrawn remote addresses remembered for `lookup`, newest kept


@dataclass(frozen=True)
class Settings:
    min_interval_s: float = 0.2
    resync_interval_s: float = 30.0
    backoff_min_s: float = 1.0
    backoff_max_s: float = 60.0


class DatapathLike(Protocol):
    def apply(
        self,
        config: Config,
        view: DirectoryView,
        resync: bool = False,
        delta: DirectoryDelta | None = None,
        since: tuple[Config, DirectoryView] | None = None,
    ) -> Outcome: ...

    def plan(self, config: Config, view: DirectoryView, resync: bool = False) -> Outcome: ...


# The fields a Datapath is built from (the XFRM driver's ownership test uses the host prefix,
# its timers the rotation grace, its sequence reservations the state directory, the IKE driver
# its VICI socket): the one Datapath cannot follow a change, a restart can.
def restart_only(config: Config) -> tuple[object, ...]:
    k = config.keying
    return (config.host.underlay_prefix, k.rotation_grace_s, k.vici_socket, config.agent.state_dir)


RESTART_ONLY_PROBLEM = (
    "host.underlay_prefix, keying.rotation_grace_s, keying.vici_socket and agent.state_dir "
    "change only on restart"
)


def limits(config: Config) -> Limits:
    d = config.directory
    return Limits(d.duplicate_moves, d.duplicate_window_s, d.reassert_after_s)


@dataclass(frozen=True)
class Applied:
    """One apply as the endpoint API sees it: the config generation it started with, the
    config it applied and its record (errors included)."""

    generation: int
    config: Config
    record: ApplyRecord


def _claim_order(claim: Claim) -> tuple[int, int, int]:
    return (claim.tenant_id, claim.prefix.version, int(claim.prefix.network_address))


class Waker:
    """A socket pair the loop sleeps on. Signals wake it too: the daemon hands `write_fd` to
    signal.set_wakeup_fd, so handlers themselves only set flags."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    @property
    def write_fd(self) -> int:
        return self._w.fileno()

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full of wake-ups already: awake enough
            self._w.send(b"\0")

    def wait(self, timeout: float | None) -> None:
        ready, _, _ = select.select([self._r], [], [], timeout)
        if ready:
            with contextlib.suppress(BlockingIOError):
                while self._r.recv(4096):
                    pass

    def close(self) -> None:
        self._r.close()
        self._w.close()


class Agent:
    def __init__(
        self,
        config: Config,
        datapath: DatapathLike,
        source: DirectorySource,
        load_config: Callable[[], Config],
        *,
        read_sas: Callable[[], list[SaInfo]] = list,
        settings: Settings | None = None,
        log: EventLog | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.settings = settings or Settings()
        self.waker = Waker()
        self.on_apply: list[Callable[[ApplyRecord], None]] = []  # metrics observe durations
        self._datapath = datapath
        self._source = source
        self._load_config = load_config
        self._read_sas = read_sas
        self._log = log or EventLog()
        self._notify = notifier or Notifier("")
        self._clock = clock
        self._wall = wall
        self._started = wall()
        # Flags: set from signal handlers, so plain assignments (no lock, no I/O).
        self.stop_requested = False
        self.reload_requested = False
        # Shared with input threads and readers: guarded by _lock, values replaced whole.
        self._lock = threading.Lock()
        self._applied_cond = threading.Condition(self._lock)  # endpoint API callers wait on it
        self._generation = 0  # counts in-process config changes (the endpoint API's)
        self._applied: Applied | None = None  # the last apply, with the generation it ran
        self._update: SourceUpdate | None = None
        # how _update's view differs from the update the last apply took (None: not known)
        self._delta: DirectoryDelta | None = None
        self._updates = 0
        self._dirty: set[str] = set()
        self._rejected_total: Counter[str] = Counter()
        self._rejected_new: list[RejectedRoute] = []  # to log, from the loop thread
        self._duplicates: tuple[Duplicate, ...] = ()
        self._clears: list[Where] = []  # duplicates the operator cleared, for the loop thread
        self._state = "starting"
        self._known = DirectoryView(frozenset())
        self._last: ApplyRecord | None = None
        self._last_ok: float | None = None
        self._counts = Counts()
        self._sas: tuple[SaInfo, ...] = ()
        self._reconciles = 0
        self._reconcile_errors = 0
        self._config_errors = 0
        self._drift: Drift | None = None  # the kernel against the last applied view
        self._withdrawn: dict[tuple[int, IPNetwork], Withdrawn] = {}  # oldest first
        self._check_requested = False
        self._checks = 0
        self._checked_at: float | None = None  # clock() of the last check that read the kernel
        # Loop-thread only.
        self._last_start: float | None = None
        self._last_end = 0.0
        self._failures = 0
        self._retry_at = 0.0
        self._reported: set[str] = set()  # permanent errors of the last apply, logged once
        self._ready_sent = False
        self._reload_pending = False  # READY=1 owed to systemd after the reload's apply
        self._guard = Guard(limits(config))
        # the last apply's view was its update's view (in sync, nothing of it local or stale)
        # with the claims added, and it applied cleanly: the next one may go by delta
        self._by_delta_ok = False
        self._local: tuple[Config, set[tuple[int, IPNetwork]]] | None = None

    # -- inputs: cheap, any thread ------------------------------------------------------------

    def publish(self, update: SourceUpdate) -> None:
        with self._lock:
            before = set(self._update.rejected) if self._update else set()
            new = [r for r in update.rejected if r not in before]
            self._rejected_total.update(r.reason for r in new)
            self._rejected_new += new
            if self._delta is not None and update.delta is not None:
                self._delta = self._delta.then(update.delta)
            else:
                self._delta = None
            self._update = update
            self._updates += 1
            self._dirty.add("directory")
        self.waker.wake()

    def request_clear(self, where: Where) -> None:
        """The operator clears a duplicate (control socket): applied by the loop thread."""
        with self._lock:
            self._clears.append(where)
            self._dirty.add("clear-duplicate")
        self.waker.wake()

    def request_reload(self) -> None:
        self.reload_requested = True
        self.waker.wake()

    def request_stop(self) -> None:
        self.stop_requested = True
        self.waker.wake()
        with self._applied_cond:
            self._applied_cond.notify_all()  # waiting API callers answer "stopping"

    def request_resync(self) -> None:
        """Apply now, reading the kernel again first (the periodic resync, brought forward)."""
        with self._lock:
            self._dirty.add("resync")
        self.waker.wake()

    def check_kernel(self, timeout: float, reuse: float = 0.0) -> bool:
        """Have the loop compare the kernel with the last applied view now (read-only: the
        drift is shown, not repaired, until the next apply), unless a check younger than
        `reuse` seconds stands. False when it did not answer in `timeout` (busy applying, or
        no view yet): the last check stands."""
        with self._applied_cond:
            if self._update is None or self._last_start is None:
                return False
            if self._checked_at is not None and self._clock() - self._checked_at < reuse:
                return True
            self._check_requested = True
            checks = self._checks
        self.waker.wake()
        with self._applied_cond:
            return (
                self._applied_cond.wait_for(
                    lambda: self._checks > checks or self.stop_requested, timeout
                )
                and self._checks > checks
            )

    def change_config(self, config: Config) -> int:
        """Take a validated config in-process (the endpoint API); returns its generation: the
        first apply that starts with a generation >= it has the change. ConfigError when it
        changes what only a restart can."""
        if restart_only(config) != restart_only(self.config):
            raise ConfigError([Problem("agent", "", None, RESTART_ONLY_PROBLEM)])
        with self._lock:
            self.config = config
            self._generation += 1
            self._dirty.add("endpoint")
            generation = self._generation
        self.waker.wake()
        return generation

    def generation(self) -> int:
        with self._lock:
            return self._generation

    def wait_applied(self, generation: int, timeout: float) -> Applied | None:
        """The first apply that started at `generation` or later, once it ended; None on
        timeout or stop (the last apply, if any, is then `last_applied()`)."""
        with self._applied_cond:
            self._applied_cond.wait_for(
                lambda: (
                    self.stop_requested
                    or (self._applied is not None and self._applied.generation >= generation)
                ),
                timeout,
            )
            applied = self._applied
            return applied if applied and applied.generation >= generation else None

    def last_applied(self) -> Applied | None:
        with self._lock:
            return self._applied

    def published(self) -> frozenset[Claim] | None:
        """This host's announcements as the directory source last read them back; None before
        its first update."""
        with self._lock:
            return self._update.view.published if self._update else None

    def contested(self) -> frozenset[RemoteRoute] | None:
        """Other hosts' announcements of local addresses as the source last read them; None
        before its first update."""
        with self._lock:
            return self._update.view.contested if self._update else None

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> None:
        """Reconcile until asked to stop; leaves the dataplane as it is."""
        self._log("agent.start", pid=os.getpid(), source=self._source.name)
        self._source.start(self.config, self.publish)
        while not self.stop_requested:
            timeout = self.step()
            if timeout != 0:
                self.waker.wait(timeout)
        with self._lock:
            self._state = "stopping"
        self._notify.stopping("stopping; dataplane left in place")
        self._source.stop()
        self._log("agent.stop", dataplane="left-in-place")

    def step(self) -> float | None:
        """Do whatever is due now. Returns seconds until something else is due (None: nothing
        until an input arrives, 0: call again)."""
        if self.reload_requested:
            self.reload_requested = False
            self._reload()
        if self.stop_requested:
            return 0
        if self._check_requested:
            self._check()
            return 0
        now = self._clock()
        due = self._next_apply(now)
        if due is None:
            return None
        if due > now:
            return due - now
        self._apply(now)
        return 0

    def _next_apply(self, now: float) -> float | None:
        with self._lock:
            if self._update is None:  # no view yet: applying would delete what it lacks
                return None
            dirty = bool(self._dirty)
        if self._last_start is None:
            return now
        resync = self._last_end + self.settings.resync_interval_s
        reassert = self._guard.due()  # a lost, still attached address to announce again
        if reassert is not None:
            resync = min(resync, max(reassert, self._last_end))
        if not dirty and now < resync:
            return resync
        return max(self._last_start + self.settings.min_interval_s, self._retry_at)

    def _apply(self, now: float) -> None:
        with self._lock:
            update = self._update
            assert update is not None
            why = sorted(self._dirty) or ["resync"]
            self._dirty.clear()
            rejected, self._rejected_new = self._rejected_new, []
            clears, self._clears = self._clears, []
            config, generation = self.config, self._generation  # together: a waiter's promise
            delta, self._delta = self._delta, DirectoryDelta()
        self._log_rejected(rejected)
        for where in clears:
            self._guard.clear(where)
        if self._last_start is None:
            why = ["start"]
        if not self._by_delta(why, update, config, delta):
            delta = None
        if delta is not None:  # the claims stand: no local address is concerned
            view = dataclasses.replace(update.view, claims=self._known.claims)
        else:
            view = update.view if update.in_sync else keep_known(self._known, update.view)
            view = mobility.resolve(config, view, self._guard, now)
            self._log_mobility(view)
            self._log_duplicates()
        self._last_start, started = now, self._wall()
        resync = bool({"start", "resync", "retry"} & set(why))
        # only endpoints changed (the endpoint API): the datapath may apply just theirs
        since = None
        if why == ["endpoint"] and self._applied is not None and self._failures == 0:
            since = (self._applied.config, self._known)
        try:
            outcome = self._datapath.apply(config, view, resync=resync, delta=delta, since=since)
            errors = tuple(f"{s.name}: {e}" for s in outcome.stages for e in s.errors)
            permanent = {
                f"{s.name}: {e}" for s in outcome.stages for e in s.errors if not e.transient
            }
            retry = outcome.retry
            changes = sum(len(s.lines) for s in outcome.stages)
            stages = {f"{s.name}_changes": len(s.lines) for s in outcome.stages}
            # each stage that ran, its seconds: where an apply's time went, without a profiler
            stages |= {f"{s.name}_s": round(s.seconds, 3) for s in outcome.stages if not s.skipped}
        except Exception as exc:  # a bug or a vanished netns must not end the agent
            outcome, retry, permanent = None, True, set()
            errors, changes, stages = (f"apply: {type(exc).__name__}: {exc}",), 0, {}
        end = self._clock()
        self._last_end = end
        record = ApplyRecord(started, end - now, not errors, changes, errors, ",".join(why))
        self._after_apply(
            config, view, record, inspect=outcome is not None, delta=delta, since=since
        )
        self._by_delta_ok = (
            record.ok
            and update.in_sync
            and not mobility.stale(view)
            and len(view.remote_routes) == len(update.view.remote_routes)  # none was local
        )
        with self._applied_cond:
            self._applied = Applied(generation, config, record)
            self._applied_cond.notify_all()
        # on a resync (not the start) a change repairs drift: say so in the event's name
        event = "agent.repair" if resync and why != ["start"] else "agent.change"
        for stage in outcome.stages if outcome else ():
            log_changes(self._log, stage.name, stage.changes, event)
        self._log(
            "agent.apply",
            ok=record.ok,
            changes=changes,
            seconds=record.seconds,
            trigger=record.trigger,
            in_sync=update.in_sync,
            **stages,
        )
        # a permanent error (a bad input) is logged when it appears; status shows it while it lasts
        for error in errors:
            if error not in permanent or error not in self._reported:
                self._log("agent.apply.error", error=error)
        self._reported = permanent
        if retry:  # transient errors: try again soon, backing off
            self._failures += 1
            backoff = self.settings.backoff_min_s * 2 ** (self._failures - 1)
            self._retry_at = end + min(backoff, self.settings.backoff_max_s)
            with self._lock:
                self._dirty.add("retry")
        else:
            self._failures, self._retry_at = 0, 0.0
        for observe in self.on_apply:
            observe(record)
        self._report(record)

    def _by_delta(
        self, why: list[str], update: SourceUpdate, config: Config, delta: DirectoryDelta | None
    ) -> bool:
        """Whether this apply can be the last one's view changed by `delta` alone."""
        if not (
            delta is not None
            and why == ["directory"]
            and self._by_delta_ok
            and update.in_sync
            and delta.remote_only
            and self._applied is not None
            and self._applied.config is config
            and self._guard.due() is None
        ):
            return False
        local = self._local_addresses(config)
        changed = (*delta.remote_added, *delta.remote_removed)
        return not any((r.tenant_id, r.prefix) in local for r in changed)

    def _local_addresses(self, config: Config) -> set[tuple[int, IPNetwork]]:
        if self._local is None or self._local[0] is not config:
            self._local = (config, local_addresses(config))
        return self._local[1]

    def _check(self) -> None:
        """Plan (never apply) the last applied view against a fresh read of the kernel."""
        with self._lock:
            self._check_requested = False
            config, view = self.config, self._known
        started = self._clock()  # what the check shows is as old as its first read
        try:
            outcome = self._datapath.plan(config, view, resync=True)
            drift = Drift(self._wall(), tuple(line for s in outcome.stages for line in s.lines))
            sas = tuple(self._read_sas())
            checked_at: float | None = started
        except Exception as exc:  # a check must not end the agent; the last one stands
            self._log("agent.check.error", error=f"{type(exc).__name__}: {exc}")
            drift, sas, checked_at = self._drift, self._sas, self._checked_at
        counts = count(config, view, sas)
        with self._applied_cond:
            self._drift, self._sas, self._counts = drift, sas, counts
            self._checked_at = checked_at
            self._checks += 1
            self._applied_cond.notify_all()

    def _log_rejected(self, rejected: list[RejectedRoute]) -> None:
        """One line per newly rejected directory route; a flood (a host announcing 100,000 bad
        routes) is summarised after the first REJECTED_LOG_MAX (status lists them all)."""
        for r in rejected[:REJECTED_LOG_MAX]:
            self._log("directory.rejected", reason=str(r.reason), route=str(r))
        if len(rejected) > REJECTED_LOG_MAX:
            self._log("directory.rejected.more", count=len(rejected) - REJECTED_LOG_MAX)

    def _log_duplicates(self) -> None:
        for e in self._guard.take_events():
            where = {"tenant": e.tenant_id, "address": str(e.prefix), "other": e.other}
            if e.kind == "duplicate":
                host = self.config.host.name
                self._log("mobility.duplicate", **where, hosts=f"{host},{e.other}", moves=e.moves,
                          window_s=self._guard.limits.window_s, frozen=True)  # fmt: skip
            elif e.kind == "reassert":
                self._log("mobility.reassert", **where, sequence=e.sequence)
            else:
                self._log("mobility.duplicate.cleared", **where, why=e.why)
        duplicates = tuple(self._guard.duplicates())
        with self._lock:
            self._duplicates = duplicates

    def _log_mobility(self, view: DirectoryView) -> None:
        """Say when a local address changes hands: announced with a new sequence, or stale."""
        before = {(c.tenant_id, c.prefix): c for c in self._known.claims}
        winners = {(r.tenant_id, r.prefix): str(r.peer.address) for r in view.remote_routes}
        for claim in sorted(view.claims - self._known.claims, key=_claim_order):
            where = (claim.tenant_id, claim.prefix)
            if claim.stale:
                was = before.get(where)
                if was is None or not was.stale:
                    self._log(
                        "mobility.stale",
                        tenant=claim.tenant_id,
                        address=str(claim.prefix),
                        sequence=claim.sequence,
                        winner=winners.get(where),
                    )
            elif claim.sequence > 0:
                self._log(
                    "mobility.announce",
                    tenant=claim.tenant_id,
                    address=str(claim.prefix),
                    sequence=claim.sequence,
                )

    def _after_apply(
        self,
        config: Config,
        view: DirectoryView,
        record: ApplyRecord,
        inspect: bool,
        delta: DirectoryDelta | None = None,
        since: tuple[Config, DirectoryView] | None = None,
    ) -> None:
        """`since`: the config and view of the last apply, when only endpoints may have
        changed: then the counts follow those endpoints, and neither the SAs (they change with
        tenants, keys and peers) nor the remote addresses can have changed."""
        endpoints = changed_endpoints(since, config, view) if since is not None else None
        sas = self._sas  # an apply that could not even start would not find the SAs either
        if inspect and endpoints is None and (delta is None or delta.peers):
            try:  # SAs change with peers (and the config) only
                sas = tuple(self._read_sas())
            except Exception as exc:  # counts are for people; the apply is what matters
                self._log("agent.inspect.error", error=f"{type(exc).__name__}: {exc}")
        if endpoints is not None and since is not None:
            try:
                counts = recount_endpoints(self._counts, since, (config, view), endpoints)
            except RoutingConflict:  # the apply reported it
                counts = count(config, view, sas)
            withdrawn = self._withdrawn
        elif delta is None:
            counts = count(config, view, sas)
            withdrawn = self._remember_withdrawn(view)
        else:
            counts = recount(self._counts, config, delta, len(sas))
            withdrawn = self._withdrawn_by(delta)
        # what an apply could not change still differs; an apply without errors read the
        # kernel and left it as wanted
        drift = Drift(self._wall(), record.errors)
        with self._lock:
            self._drift = drift
            self._withdrawn = withdrawn
            # An apply that ran (even with errors) may have programmed all of `view`: it is
            # the last known state until the source is in sync again.
            self._known = view
            self._last = record
            self._sas = sas
            self._counts = counts
            self._reconciles += 1
            if record.ok:
                self._last_ok = record.time
                self._state = "ready"
            else:
                self._reconcile_errors += 1
                if self._state == "ready":
                    self._state = "degraded"

    def _remember_withdrawn(self, view: DirectoryView) -> dict[tuple[int, IPNetwork], Withdrawn]:
        """The remote addresses the last view had and `view` lacks join the memory; those
        announced again leave it."""
        now = {(r.tenant_id, r.prefix) for r in view.remote_routes}
        return self._remember(now, self._known.remote_routes)

    def _withdrawn_by(self, delta: DirectoryDelta) -> dict[tuple[int, IPNetwork], Withdrawn]:
        """_remember_withdrawn for a delta: O(delta + memory), not O(view)."""
        return self._remember({(r.tenant_id, r.prefix) for r in delta.remote_added},
                              delta.remote_removed)  # fmt: skip

    def _remember(
        self, now: set[tuple[int, IPNetwork]], before: Iterable[RemoteRoute]
    ) -> dict[tuple[int, IPNetwork], Withdrawn]:
        """The memory with the addresses in `now` out and those of `before` not in `now` in,
        newest last. A new dict: readers keep the one they took."""
        memory = {k: w for k, w in self._withdrawn.items() if k not in now}
        wall = self._wall()
        for r in before:
            key = (r.tenant_id, r.prefix)
            if key not in now:
                memory.pop(key, None)  # re-inserted: the newest withdrawal goes last
                memory[key] = Withdrawn(r.peer.name, str(r.peer.address), wall)
        return dict(list(memory.items())[-WITHDRAWN_MAX:])

    def _report(self, record: ApplyRecord) -> None:
        c = self._counts
        text = (
            f"{c.local_endpoints} local endpoints, {c.remote_addresses} remote addresses, "
            f"{c.sas} SAs; last apply {'ok' if record.ok else 'FAILED'} "
            f"({record.changes} changes, {record.seconds:.2f} s)"
        )
        if (record.ok and not self._ready_sent) or self._reload_pending:
            self._ready_sent = self._ready_sent or record.ok
            self._reload_pending = False
            self._notify.ready(text)
        else:
            self._notify.status(text)

    def _reload(self) -> None:
        self._notify.reloading("reloading configuration")
        try:
            config = self._load_config()
            problems = []
            if restart_only(config) != restart_only(self.config):
                problems = [RESTART_ONLY_PROBLEM]
        except ConfigError as exc:
            problems = [str(p) for p in exc.problems]
        if problems:
            with self._lock:
                self._config_errors += 1
            self._log("agent.reload", ok=False, problems=len(problems), kept="previous")
            for problem in problems:
                self._log("agent.reload.problem", problem=problem)
            status = f"reload failed ({len(problems)} problems): running on the previous config"
            if self._ready_sent:
                self._notify.ready(status)
            else:
                self._notify.status(status)
            return
        self._guard.limits = limits(config)
        with self._lock:
            self.config = config
            self._dirty.add("reload")
        self._log(
            "agent.reload", ok=True, tenants=len(config.tenants), endpoints=len(config.endpoints)
        )
        self._reload_pending = True  # READY=1 once the new config is applied
        self._source.reload(config)

    # -- readers: any thread ------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        with self._lock:
            update = self._update
            source = SourceInfo(
                name=self._source.name,
                in_sync=bool(update and update.in_sync),
                detail=update.detail if update else "waiting for the first update",
                peers=update.peers if update else (),
                rejected=update.rejected if update else (),
            )
            return Snapshot(
                state=self._state,
                pid=os.getpid(),
                started=self._started,
                config=self.config,
                view=self._known,
                source=source,
                last_apply=self._last,
                last_ok=self._last_ok,
                counts=self._counts,
                sas=self._sas,
                reconciles=self._reconciles,
                reconcile_errors=self._reconcile_errors,
                config_errors=self._config_errors,
                rejected_total=dict(self._rejected_total),
                duplicates=self._duplicates,
                drift=self._drift,
                withdrawn=self._withdrawn,
            )
