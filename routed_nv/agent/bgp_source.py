"""The BGP directory source: BIRD's mirror tables, checked by learn(), as whole views (with this
host's publish tables, the other half of the mobility decision).

One thread owns everything: it applies the rendered BIRD config (start, reload, and again after a
failure), sleeps in select() on the mirror-table watch (route events wake it at once) and reads
BIRD's state every POLL_S (BIRD pushes no session events). It publishes only when something
changed; the agent coalesces the rest.

In sync means: at least one route-reflector session is Established and BIRD is not in
graceful-restart recovery. BIRD runs with `-R` (ARCHITECTURE.md §6), so recovery lasts until every
session has sent End-of-RIB (or the wait timer ran out): that is the "initial dump is done". It
matters most after a host BIRD restart: the mirror tables persist and still hold the old routes,
BIRD's fresh RIB fills in behind them, and a view taken before recovery ends would delete routes
that are merely not re-learned yet. BIRD unreachable (crashed, restarting) is not in sync either;
the agent then keeps every remote route it knows (source.keep_known).

It logs its own events when they change: `directory.sync` (in sync or not, and why),
`directory.peer` (a session's state), `directory.bird_config` (applied, or refused and why).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from routed_nv.agent.events import EventLog
from routed_nv.agent.source import PeerStatus, Publish, SourceUpdate
from routed_nv.config.model import Config
from routed_nv.directory import bird_apply
from routed_nv.directory.bird_config import (
    MIRROR_METRIC,
    RR_CONNECT_RETRY_S,
    BirdConfigError,
    families_of,
    mirror_names,
    rr_protocol,
)
from routed_nv.directory.birdc import GR_RECOVERY, BirdClient, BirdError, CommandError, Route
from routed_nv.directory.learn import Learned, Learner, MirrorRoute, PublishedRoute
from routed_nv.directory.netlink_watch import MirrorWatch, RouteEvent, WatchError
from routed_nv.model import markers
from routed_nv.model.directory_delta import DirectoryDelta
from routed_nv.model.mobility import SEQUENCE_COMMUNITY, TENANT_COMMUNITY

POLL_S = 0.5
# BIRD's CLI tells no End-of-RIB. A route-reflector session that has just come up (agent start,
# or a reset: a password or neighbour change, the RR back) has not sent its table yet, and a view
# taken then would delete what is merely still on its way (seen in the lab: a host's every remote
# route deleted and re-added 2 s later after its sessions came back). Worse, a restarted route
# reflector learns its clients' routes only as each client reconnects, which takes up to one
# connect retry, yet it sends End-of-RIB to the first client at once (dynamic neighbours: BIRD
# holds nothing back for clients it does not know yet), and that client flushes its stale paths.
# With both RRs back at once, a late host's routes leave every other host's mirror tables until
# it reconnects (lab: 7.3 s with its BGP held back).
# So the source is in sync only once SETTLE_S have passed since a session came up with no mirror
# route change meanwhile: longer than the clients' reconnect (one connect retry), with as much
# again for a loaded host.
SETTLE_S = 2.0 * RR_CONNECT_RETRY_S
# Paths BIRD's mirror export refused (unreachable next hop) are learned too, asked for at this
# interval: deleting them black-holed traffic (docs/incidents.md, "Unreachable next hops").
REFUSED_POLL_S = 5.0


class Watch(Protocol):
    """What this source needs of MirrorWatch (unit tests pass a fake)."""

    @property
    def routes(self) -> frozenset[MirrorRoute]: ...

    @property
    def published(self) -> frozenset[PublishedRoute]: ...

    def open(self) -> object: ...

    def close(self) -> None: ...

    def fileno(self) -> int: ...

    def wait(self, timeout: float | None = None) -> list[RouteEvent]:
        """The changes that arrived (empty: none, and routes/published are as before)."""
        ...


class _Settle:
    """Whether new route-reflector sessions may still be sending their tables (SETTLE_S)."""

    def __init__(self) -> None:
        self._up: frozenset[str] = frozenset()
        self._until = 0.0

    def holding(self, peers: tuple[PeerStatus, ...], routes_changed: bool, now: float) -> bool:
        up = frozenset(p.name for p in peers if p.address and p.info == "Established")
        if up - self._up or (now < self._until and routes_changed):
            self._until = now + SETTLE_S
        self._up = up
        return now < self._until


class BgpSource:
    name = "bgp"

    def __init__(
        self,
        netns: str | None,
        watch: Watch | None = None,
        connect: Callable[[Path], BirdClient] = BirdClient,
        apply: Callable[[Config, Path], object] = bird_apply.apply,
        log: EventLog | None = None,
    ) -> None:
        self._log = log or EventLog()
        self._watch: Watch = watch if watch is not None else MirrorWatch(netns)
        self._connect = connect
        self._apply = apply
        self._lock = threading.Lock()
        self._config: Config | None = None
        self._to_apply: Config | None = None  # set by start/reload, cleared once BIRD took it
        self._apply_error = ""
        self._publish: Publish | None = None
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._thread: threading.Thread | None = None

    def start(self, config: Config, publish: Publish) -> None:
        self._publish = publish
        self._watch.open()  # a netns that does not exist fails the start, not a thread later
        self.reload(config)
        self._thread = threading.Thread(target=self._run, name="bgp-source", daemon=True)
        self._thread.start()

    def reload(self, config: Config) -> None:
        with self._lock:
            self._config = self._to_apply = config
        self._wake()

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join()
        self._watch.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a wake-up is pending already
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        last: SourceUpdate | None = None
        next_poll = 0.0
        state: tuple[bool, tuple[PeerStatus, ...], str] = (False, (), "starting")
        settle = _Settle()
        learner: Learner | None = None
        learned: Learned | None = None  # the learner's view, built only when it changed
        delta: DirectoryDelta | None = None  # since the last update published; None: whole
        unwritten: frozenset[MirrorRoute] = frozenset()
        next_unwritten = 0.0
        while not self._stop.is_set():
            with self._lock:
                config, to_apply = self._config, self._to_apply
            assert config is not None
            if to_apply is not None:
                self._apply_config(to_apply)
            now = time.monotonic()
            if now >= next_poll:
                state = self._bird_state(config)
                next_poll = now + POLL_S
            if now >= next_unwritten:
                fresh = self._unwritten(config, unwritten)
                next_unwritten = now + REFUSED_POLL_S
                if fresh != unwritten:
                    unwritten, learner = fresh, None
            try:
                # drain after reading BIRD's state: routes BIRD wrote before it said "in sync"
                # are in the view that says so
                events = self._watch.wait(0)
            except WatchError as exc:  # the socket failed: a new one starts with a full dump
                state = (False, state[1], str(exc))
                self._watch.close()
                self._watch.open()
                events, learner = [], None
            if state[0] and not all(e.added for e in events):
                # BIRD flushes a session's routes the moment it goes down without graceful
                # restart (disabled, a Cease): the state read before may still say up, and a
                # view published with it would delete what is merely unknown now (lab: both of
                # host1's sessions disabled, its agent deleted every remote route)
                state = self._bird_state(config)
                next_poll = time.monotonic() + POLL_S
            if events and (unwritten or not all(e.added for e in events)):
                # a mirror route gone may be only unwritable now; one written again is no
                # longer an unwritten path
                fresh = self._unwritten(config, unwritten)
                next_unwritten = time.monotonic() + REFUSED_POLL_S
                if fresh != unwritten:
                    unwritten, learner = fresh, None
            if learner is None or learner.config is not config:
                # learning every route is O(routes) (seconds at 100,000): only at start, on a
                # config change, a new watch socket or changed unwritten paths
                paths = self._watch.routes | unwritten
                learner = Learner(config, paths, self._watch.published)
                learned, delta = learner.learned(), None
            elif events:
                rejections = learner.rejections
                step = learner.update(_changes(events, unwritten))
                if step or learner.rejections != rejections:
                    learned = learner.learned()
                if step:
                    delta = delta.then(step) if delta is not None else None
            assert learned is not None
            in_sync, peers, detail = state
            if settle.holding(peers, bool(events), time.monotonic()):
                in_sync, detail = False, f"{detail}; waiting for the new sessions' routes"
            update = self._update(learned, in_sync, peers, detail, delta)
            if update != last and self._publish is not None:
                self._log_update(last, update)
                self._publish(update)
                last, delta = update, DirectoryDelta()
            ready, _, _ = select.select(
                [self._watch, self._wake_r], [], [], max(0.0, next_poll - time.monotonic())
            )
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)

    def _apply_config(self, config: Config) -> None:
        try:
            self._apply(config, config.directory.bird_config)
        except (BirdError, BirdConfigError, OSError) as exc:
            error = f"BIRD config not applied: {exc}"  # retried every poll, logged once
            if error != self._apply_error:
                self._log("directory.bird_config", ok=False, error=str(exc))
            self._apply_error = error
            return
        self._apply_error = ""
        self._log("directory.bird_config", ok=True, path=str(config.directory.bird_config))
        with self._lock:
            if self._to_apply is config:  # not replaced by a reload meanwhile
                self._to_apply = None

    def _log_update(self, last: SourceUpdate | None, update: SourceUpdate) -> None:
        """What changed since the last update published: sessions, then being in sync."""
        before = {p.name: p for p in last.peers} if last else {}
        for p in update.peers:
            was = before.pop(p.name, None)
            if was is None or (was.state, was.info) != (p.state, p.info):
                self._log(
                    "directory.peer", name=p.name, address=p.address, state=p.state, info=p.info
                )
        for name in sorted(before):  # BIRD unreachable, or the session is configured no more
            self._log("directory.peer", name=name, state="unknown")
        if last is None or (last.in_sync, last.detail) != (update.in_sync, update.detail):
            self._log("directory.sync", in_sync=update.in_sync, detail=update.detail)

    def _bird_state(self, config: Config) -> tuple[bool, tuple[PeerStatus, ...], str]:
        try:
            with self._connect(config.directory.bird_socket) as bird:
                protocols = bird.protocols()
                status = bird.command("show status")
        except BirdError as exc:
            return False, (), str(exc)
        reflectors = {
            rr_protocol(i): str(rr) for i, rr in enumerate(config.directory.route_reflectors, 1)
        }
        peers = tuple(
            PeerStatus(p.name, reflectors.get(p.name, ""), p.state, p.since, p.info)
            for p in protocols
            if p.proto == "BGP"
        )
        up = sum(1 for p in protocols if p.name in reflectors and p.session == "Established")
        recovering = any(line.text == GR_RECOVERY for line in status.lines)
        detail = f"{up} of {len(reflectors)} route reflector sessions established"
        if recovering:
            detail += "; BIRD in graceful-restart recovery"
        return up > 0 and not recovering, peers, detail

    def _unwritten(self, config: Config, before: frozenset[MirrorRoute]) -> frozenset[MirrorRoute]:
        """The paths BIRD's mirror exports refused, as the mirror routes they would have been
        (`before` while BIRD does not answer)."""
        paths: list[MirrorRoute] = []
        try:
            with self._connect(config.directory.bird_socket) as bird:
                for tenant in config.tenants.values():
                    for fam in families_of(tenant):
                        table, writer = mirror_names(tenant.id, fam)
                        try:
                            found = bird.routes(f"table {table} noexport {writer}")
                        except CommandError:  # not in BIRD's config yet (being applied)
                            continue
                        kernel_table = markers.mirror_table(tenant.id)
                        paths += (_as_mirror(r, kernel_table, config.directory.asn) for r in found)
        except BirdError:
            return before
        return frozenset(paths)

    def _update(
        self,
        learned: Learned,
        in_sync: bool,
        peers: tuple[PeerStatus, ...],
        detail: str,
        delta: DirectoryDelta | None,
    ) -> SourceUpdate:
        if self._apply_error:
            detail = f"{detail}; {self._apply_error}"
        return SourceUpdate(learned.view, in_sync, peers, learned.rejected, detail, delta)


def _changes(
    events: list[RouteEvent], unwritten: frozenset[MirrorRoute]
) -> Iterator[tuple[bool, MirrorRoute | PublishedRoute]]:
    """The watch's events as the learner's route changes. The learner holds the mirror routes
    and the unwritten paths as one set: a path in both stays while either has it."""
    for e in events:
        replaced = e.replaced if e.added else None
        if replaced is not None and replaced != e.route and replaced not in unwritten:
            yield False, replaced
        if e.added or e.route not in unwritten:
            yield e.added, e.route


def _as_mirror(path: Route, table: int, asn: int) -> MirrorRoute:
    """A path BIRD did not write, as the mirror route it would have been (sequence and tenant
    count from its communities, as the mirror export sets them)."""
    tags = [(kind, value) for a, kind, value in path.large_communities if a == asn]
    sequence = max((v for k, v in tags if k == SEQUENCE_COMMUNITY), default=0)
    tenants = sum(1 for k, _ in tags if k == TENANT_COMMUNITY)
    prefix = ipaddress.ip_network(path.prefix)
    return MirrorRoute(table, prefix, path.next_hop, MIRROR_METRIC, sequence, tenants)
