"""The BGP directory source: BIRD's mirror tables, checked by learn(), as whole views (with this
host's publish tables, the other half of the mobility decision).

One thread owns everything: it applies the rendered BIRD config (start, reload, and again after a
failure; after publishing the view, so the agent's first apply and READY never wait for BIRD),
sleeps in select() on the mirror-table watch (route events wake it at once) and reads BIRD's
state every POLL_S (BIRD pushes no session events). It publishes only when something changed;
the agent coalesces the rest.

In sync means: every configured route-reflector session is Established (one that stays down is
given up on after DOWN_WAIT_S), BIRD is not in graceful-restart recovery, and the mirror tables
have not changed for QUIET_S since (BIRD's CLI tells no End-of-RIB: the quiet table stands in for
it; a session back after a reset also holds RECONNECT_S). BIRD runs with `-R` (ARCHITECTURE.md
§6), so after a host BIRD restart recovery lasts until every session has sent End-of-RIB (or the
wait timer ran out). That matters most there: the mirror tables persist and still hold the old
routes, BIRD's fresh RIB fills in behind them, and a view taken before recovery ends would delete
routes that are merely not re-learned yet. Once in sync, a session that goes down or a route that
changes does not end it (the other RR holds the whole picture; a withdrawal is news to apply); a
session that comes up starts the wait again. BIRD unreachable (crashed, restarting) is not in
sync either; the agent then keeps every remote route it knows (source.keep_known).

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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

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
from routed_nv.model.directory_source import Log, PeerStatus, Publish, SourceUpdate
from routed_nv.model.mobility import SEQUENCE_COMMUNITY, TENANT_COMMUNITY

POLL_S = 0.5
# In sync needs BIRD's initial exchange done, but BIRD 2.0's CLI tells no End-of-RIB: a BGP
# channel's receive state (load_state, cleared by End-of-RIB) is not in `show protocols all`, and
# its message counters are compiled out. So the source waits for what End-of-RIB would end:
# every configured route-reflector session Established, then no mirror route change for QUIET_S.
# An RR sends its table in one burst and BIRD writes each route to the mirror table as it
# imports it, milliseconds apart: 1 s of quiet is far above those gaps and far below the fixed
# 10 s this replaced. A longer gap would end the wait early; where a partial table could delete
# something (this host's BIRD or an RR restarted, with old routes still programmed),
# graceful-restart recovery and RECONNECT_S hold the view instead.
QUIET_S = 1.0
# A route reflector that has just restarted learns its clients' routes only as each client
# reconnects, which takes up to one connect retry, yet it sends End-of-RIB to the first client
# at once (dynamic neighbours: BIRD holds nothing back for clients it does not know yet), and
# that client flushes its stale paths. With both RRs back at once, a late host's routes leave
# every other host's mirror tables until it reconnects (lab: 7.3 s with its BGP held back). So a
# session that comes back after this source saw it Established (its RR may have restarted) holds
# the view for RECONNECT_S: longer than the clients' reconnect (one connect retry), with as much
# again for a loaded host. A session seen up for the first time (agent start) does not: there is
# nothing stale to delete yet, and the agent would wait 10 s for nothing.
RECONNECT_S = 2.0 * RR_CONNECT_RETRY_S
# A configured RR whose session is not Established is waited for at most this long (three
# connect attempts) while BIRD runs: each RR holds the whole picture, and an RR that is down must
# not keep the agent from ever deleting a withdrawn route.
DOWN_WAIT_S = 3.0 * RR_CONNECT_RETRY_S
# A path whose next hop the underlay cannot reach fails BIRD's mirror export (`gw = bgp_next_hop`:
# "Invalid gw address"), and BIRD withdraws it from the mirror table: the watch cannot see it.
# That is a foreign next hop (a host announcing anything: a refusal to report), or every path at
# once when this host's own uplink is down: valid locations that must stay programmed, with
# their SAs. Deleting them deleted the outbound static-keyed SAs, and the SAs made anew on the
# uplink's return restart at sequence 1, which every peer's inbound SA drops as replays until
# the new one passes the old count (lab: 902 packets, host1 -> host2 black-holed for minutes).
# So the source asks BIRD what each mirror export refused (`show route noexport`) and learns
# those paths with the mirror routes: at once when mirror routes go, and every REFUSED_POLL_S
# (one command per tenant and family: not on every poll).
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


class _Hold:
    """Why a view BIRD calls ready may still be incomplete, from the source's start or a
    session coming up until the view is first complete: a route-reflector session still coming
    up (DOWN_WAIT_S), a session back after a reset (RECONNECT_S), a mirror table still changing
    (QUIET_S)."""

    def __init__(self) -> None:
        self._settling = True
        self._up: frozenset[str] = frozenset()
        self._seen_up: set[str] = set()
        self._down_since: dict[str, float] = {}
        self._changed = 0.0  # the last mirror route change or session coming up
        self._reconnect_until = 0.0

    def why(
        self,
        ready: bool,
        reflectors: Iterable[str],
        peers: tuple[PeerStatus, ...],
        routes_changed: bool,
        now: float,
    ) -> str:
        """What the source still waits for ("" for nothing) once BIRD is `ready` (reachable, a
        session up, not in recovery). `routes_changed`: the mirror table changed since the last
        call (watch events, or every route learned again)."""
        up = frozenset(p.name for p in peers if p.address and p.info.startswith("Established"))
        if up - self._up:
            self._settling = True
        if up - self._up or (self._settling and routes_changed):
            self._changed = now
        if (up - self._up) & self._seen_up:
            self._reconnect_until = now + RECONNECT_S
        self._seen_up |= up
        self._up = up
        # the wait for a session counts only while BIRD answers (it may start after the agent)
        self._down_since = {
            name: self._down_since.get(name, now) for name in reflectors if peers and name not in up
        }
        if not self._settling:
            return ""
        waiting = sorted(n for n, t in self._down_since.items() if now - t < DOWN_WAIT_S)
        if waiting:
            return f"waiting for the {', '.join(waiting)} session"
        if now < self._reconnect_until:
            return "waiting for the route reflectors' clients to reconnect"
        if now < self._changed + QUIET_S:
            return "waiting for the new sessions' routes"
        self._settling = not ready
        return ""


class BgpSource:
    name = "bgp"

    def __init__(
        self,
        netns: str | None,
        log: Log,
        watch: Watch | None = None,
        connect: Callable[[Path], BirdClient] = BirdClient,
        apply: Callable[[Config, Path], object] = bird_apply.apply,
    ) -> None:
        self._log = log
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
        hold = _Hold()
        learner: Learner | None = None
        learned: Learned | None = None  # the learner's view, built only when it changed
        delta: DirectoryDelta | None = None  # since the last update published; None: whole
        unwritten: frozenset[MirrorRoute] = frozenset()
        next_unwritten = 0.0
        while not self._stop.is_set():
            with self._lock:
                config, to_apply = self._config, self._to_apply
            assert config is not None
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
            changed = bool(events)  # the mirror table changed: the hold waits for it to be quiet
            if learner is None or learner.config is not config:
                # learning every route is O(routes) (seconds at 100,000): only at start, on a
                # config change, a new watch socket or changed unwritten paths
                paths = self._watch.routes | unwritten
                learner = Learner(config, paths, self._watch.published)
                learned, delta, changed = learner.learned(), None, True
            elif events:
                rejections = learner.rejections
                step = learner.update(_changes(events, unwritten))
                if step or learner.rejections != rejections:
                    learned = learner.learned()
                if step:
                    delta = delta.then(step) if delta is not None else None
            assert learned is not None
            in_sync, peers, detail = state
            waiting = hold.why(in_sync, _reflectors(config), peers, changed, time.monotonic())
            if in_sync and waiting:
                in_sync, detail = False, f"{detail}; {waiting}"
            update = self._update(learned, in_sync, peers, detail, delta)
            if update != last and self._publish is not None:
                self._log_update(last, update)
                self._publish(update)
                last, delta = update, DirectoryDelta()
            # after the publish: the agent's first apply (READY) needs no BIRD config, and
            # rendering it runs `bird --version` and `bird -p`
            if to_apply is not None and self._apply_config(to_apply):
                next_poll = 0.0  # read BIRD's state under its new config at once
            ready, _, _ = select.select(
                [self._watch, self._wake_r], [], [], max(0.0, next_poll - time.monotonic())
            )
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)

    def _apply_config(self, config: Config) -> bool:
        try:
            self._apply(config, config.directory.bird_config)
        except (BirdError, BirdConfigError, OSError) as exc:
            error = f"BIRD config not applied: {exc}"  # retried every poll, logged once
            if error != self._apply_error:
                self._log("directory.bird_config", ok=False, error=str(exc))
            self._apply_error = error
            return False
        self._apply_error = ""
        self._log("directory.bird_config", ok=True, path=str(config.directory.bird_config))
        with self._lock:
            if self._to_apply is config:  # not replaced by a reload meanwhile
                self._to_apply = None
        return True

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
        reflectors = _reflectors(config)
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


def _reflectors(config: Config) -> dict[str, str]:
    """The route-reflector sessions' BIRD protocol names and their addresses."""
    return {rr_protocol(i): str(rr) for i, rr in enumerate(config.directory.route_reflectors, 1)}


def _as_mirror(path: Route, table: int, asn: int) -> MirrorRoute:
    """A path BIRD did not write, as the mirror route it would have been (sequence and tenant
    count from its communities, as the mirror export sets them)."""
    tags = [(kind, value) for a, kind, value in path.large_communities if a == asn]
    sequence = max((v for k, v in tags if k == SEQUENCE_COMMUNITY), default=0)
    tenants = sum(1 for k, _ in tags if k == TENANT_COMMUNITY)
    prefix = ipaddress.ip_network(path.prefix)
    return MirrorRoute(table, prefix, path.next_hop, MIRROR_METRIC, sequence, tenants)
