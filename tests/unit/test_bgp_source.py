"""BgpSource with a fake mirror watch and a fake BIRD: when it is in sync, what it publishes."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from routed_nv.agent.events import EventLog
from routed_nv.agent.source import StaticSource
from routed_nv.cli import agent as agent_cli
from routed_nv.config.model import Config, Directory
from routed_nv.directory import bgp_source, bird_config
from routed_nv.directory.bgp_source import BgpSource
from routed_nv.directory.birdc import (
    BirdError,
    Route,
)
from routed_nv.directory.learn import MirrorRoute, PublishedRoute, Reason
from routed_nv.model import markers
from routed_nv.model.directory import Claim
from routed_nv.model.directory_source import SourceUpdate
from tests.fakes import FakeBirdClient, FakeWatch

CONFIG = Config.model_validate(
    {
        "host": {
            "name": "host1",
            "id": 1,
            "underlay_prefix": "2001:db8:0:1::/64",
            "underlay_aggregate": "2001:db8::/48",
            "uplink": "uplink",
        },
        "tenants": {"blue": {"id": 100, "ipv4": ["10.0.0.0/24"]}},
        "directory": {
            "source": "bgp",
            "route_reflectors": ["2001:db8:0:f1::1", "2001:db8:0:f2::1"],
        },
    }
)
TIMEOUT_S = 5.0


def mirror(prefix: str) -> MirrorRoute:
    net = ipaddress.ip_network(prefix)
    return MirrorRoute(markers.mirror_table(100), net, ipaddress.ip_address("2001:db8:0:2::1"), 0)


@pytest.fixture
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bgp_source, "POLL_S", 0.01)
    monkeypatch.setattr(bgp_source, "QUIET_S", 0.05)
    monkeypatch.setattr(bgp_source, "RECONNECT_S", 0.05)
    monkeypatch.setattr(bgp_source, "DOWN_WAIT_S", 0.05)


class Run:
    def __init__(self, apply: Callable[[Config, Path], object] = lambda c, p: None) -> None:
        self.watch, self.bird = FakeWatch(), FakeBirdClient()
        self.updates: queue.Queue[SourceUpdate] = queue.Queue()
        self.log = io.StringIO()
        self.source = BgpSource(None, EventLog(stream=self.log), self.watch, self.bird, apply)  # type: ignore[arg-type]

    def logged(self, event: str) -> list[str]:
        return [x for x in self.log.getvalue().splitlines() if x.split(" ")[0] == event]

    def until(self, check: Callable[[SourceUpdate], bool]) -> SourceUpdate:
        while True:
            update = self.updates.get(timeout=TIMEOUT_S)
            if check(update):
                return update


@contextlib.contextmanager
def running(r: Run) -> Iterator[Run]:
    r.source.start(CONFIG, r.updates.put)
    try:
        yield r
    finally:
        r.source.stop()


@pytest.fixture
def run(fast_poll: None) -> Iterator[Run]:
    r = Run()
    r.source.start(CONFIG, r.updates.put)
    yield r
    r.source.stop()


def test_routes_become_the_view_and_bad_ones_rejections(run: Run) -> None:
    run.watch.set(mirror("10.0.0.2/32"), mirror("10.9.0.2/32"))
    update = run.until(lambda u: bool(u.view.remote_routes) and u.in_sync)  # once settled
    assert {str(r.prefix) for r in update.view.remote_routes} == {"10.0.0.2/32"}
    assert [r.reason for r in update.rejected] == [Reason.OUTSIDE_SUBNETS]
    assert update.detail == "1 of 2 route reflector sessions established"
    rr1 = next(p for p in update.peers if p.name == "rr1")
    assert (rr1.address, rr1.up, rr1.info) == ("2001:db8:0:f1::1", True, "Established")


def test_routes_are_learned_in_full_once_then_as_deltas(
    fast_poll: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Learning every route is O(routes): done at start; each route event after that changes
    the view by a delta, and the update carries that delta from the update before it."""
    full: list[frozenset[MirrorRoute]] = []

    class Counting(bgp_source.Learner):
        def __init__(self, config: Config, routes: frozenset[MirrorRoute], *rest: object):
            full.append(routes)
            super().__init__(config, routes, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(bgp_source, "Learner", Counting)
    r = Run()
    r.source.start(CONFIG, r.updates.put)
    try:
        r.watch.set(mirror("10.0.0.2/32"))
        before = r.until(lambda u: u.in_sync and bool(u.view.remote_routes))
        passes = len(full)
        time.sleep(30 * bgp_source.POLL_S)  # ~30 polls of BIRD's state, no route change
        r.watch.set(mirror("10.0.0.3/32"))
        update = r.until(lambda u: {str(x.prefix) for x in u.view.remote_routes} == {"10.0.0.3/32"})
        assert len(full) == passes and update.in_sync
        assert update.delta is not None and update.delta.apply(before.view) == update.view
        assert {str(x.prefix) for x in update.delta.remote_removed} == {"10.0.0.2/32"}
        # a refused route changes no view, but the rejections: published too
        r.watch.set(mirror("10.0.0.3/32"), mirror("10.9.0.2/32"))
        update = r.until(lambda u: bool(u.rejected))
        assert [x.reason for x in update.rejected] == [Reason.OUTSIDE_SUBNETS] and not update.delta
        r.watch.set(mirror("10.0.0.3/32"))
        assert r.until(lambda u: not u.rejected).view == update.view
        assert len(full) == passes
    finally:
        r.source.stop()


def test_routes_flushed_with_their_sessions_are_never_a_view_in_sync(
    fast_poll: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = Run()
    r.source.start(CONFIG, r.updates.put)
    try:
        r.watch.set(mirror("10.0.0.2/32"))
        r.until(lambda u: u.in_sync and bool(u.view.remote_routes))
        # BIRD's state is next read in a minute, but both sessions are disabled now and BIRD
        # flushes their routes at once: that flush must not be published as in sync
        monkeypatch.setattr(bgp_source, "POLL_S", 60.0)
        time.sleep(0.05)  # the source is past its last fast poll
        r.bird.sessions = {"rr1": "", "rr2": ""}
        r.watch.set()
        update = r.until(lambda u: not u.view.remote_routes)
        assert not update.in_sync and update.detail.startswith("0 of 2")
    finally:
        r.source.stop()


def test_this_hosts_publish_routes_become_its_published_claims(run: Run) -> None:
    net = ipaddress.ip_network("10.0.0.7/32")
    table = markers.publish_table(100)
    run.watch.set(published=(PublishedRoute(table, net, 3, markers.RTPROT_ENDPOINT),))
    update = run.until(lambda u: bool(u.view.published))
    assert update.view.published == frozenset({Claim(100, net, 3)})


def test_not_in_sync_without_a_route_reflector(run: Run) -> None:
    run.until(lambda u: u.in_sync)
    run.bird.sessions = {"rr1": "Active", "rr2": "Connect"}
    update = run.until(lambda u: not u.in_sync)
    assert update.detail.startswith("0 of 2")
    run.bird.sessions["rr2"] = "Established"
    run.until(lambda u: u.in_sync)


def test_a_session_that_comes_back_holds_the_view_while_its_rrs_clients_reconnect(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a reset session (a password change, or its RR restarted: that RR learns the other hosts'
    # routes only as they reconnect) has sent no route yet when it is Established
    run.watch.set(mirror("10.0.0.2/32"))
    run.until(lambda u: u.in_sync and bool(u.view.remote_routes))
    monkeypatch.setattr(bgp_source, "RECONNECT_S", 0.8)
    monkeypatch.setattr(bgp_source, "QUIET_S", 0.5)
    run.bird.sessions["rr1"] = "Active"
    run.until(lambda u: not u.in_sync)
    run.watch.set()  # BIRD flushed what the session had brought
    run.bird.sessions["rr1"] = "Established"
    came_up = time.monotonic()
    update = run.until(lambda u: "waiting for the route reflectors' clients" in u.detail)
    assert not update.in_sync and not update.view.remote_routes
    time.sleep(0.6)
    run.watch.set(mirror("10.0.0.2/32"))  # the table arrives: quiet is measured from here
    arrived = time.monotonic()
    update = run.until(lambda u: u.in_sync)
    assert time.monotonic() - arrived >= 0.5 and time.monotonic() - came_up >= 0.8
    assert [str(r.prefix) for r in update.view.remote_routes] == ["10.0.0.2/32"]


def test_in_sync_soon_after_start_without_the_reconnect_hold(
    fast_poll: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the agent starts with BIRD's sessions up and its mirror tables full: the view is complete
    # once the table is quiet, with no fixed wait (the old rule held SETTLE_S, 10 s, here)
    monkeypatch.setattr(bgp_source, "RECONNECT_S", 3600.0)
    monkeypatch.setattr(bgp_source, "QUIET_S", 0.3)
    r = Run()
    r.bird.sessions["rr2"] = "Established"
    r.watch.set(mirror("10.0.0.2/32"))
    started = time.monotonic()
    with running(r):
        first = r.until(lambda u: True)
        assert not first.in_sync and first.detail.endswith("; waiting for the new sessions' routes")
        update = r.until(lambda u: u.in_sync)
        assert time.monotonic() - started >= 0.3
        assert update.detail == "2 of 2 route reflector sessions established"
        assert [str(x.prefix) for x in update.view.remote_routes] == ["10.0.0.2/32"]


def test_not_in_sync_until_every_route_reflector_session_is_up(
    fast_poll: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rr2 connects a retry later than rr1 (lab: 5 s): rr1's table alone may be a reflector's
    # that has not heard from every host yet
    monkeypatch.setattr(bgp_source, "DOWN_WAIT_S", 3600.0)
    r = Run()
    with running(r):
        update = r.until(lambda u: "waiting for the rr2 session" in u.detail)
        assert not update.in_sync and update.detail.startswith("1 of 2")
        time.sleep(0.3)
        assert r.updates.empty() or not any(u.in_sync for u in list(r.updates.queue))
        r.bird.sessions["rr2"] = "Established"
        update = r.until(lambda u: u.in_sync)
        assert update.detail == "2 of 2 route reflector sessions established"


def test_a_route_reflector_that_stays_down_is_given_up_on(
    fast_poll: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each RR holds the whole picture: one that is down must not stop deletions for good
    monkeypatch.setattr(bgp_source, "DOWN_WAIT_S", 0.4)
    r = Run()
    started = time.monotonic()
    with running(r):
        update = r.until(lambda u: u.in_sync)
        assert time.monotonic() - started >= 0.4
        assert update.detail == "1 of 2 route reflector sessions established"


def test_a_mirror_table_still_filling_holds_the_view(
    fast_poll: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bgp_source, "QUIET_S", 0.3)
    r = Run()
    r.bird.sessions["rr2"] = "Established"
    with running(r):
        routes = []
        for i in range(2, 12):  # a table arriving in pieces, 0.1 s apart
            routes.append(mirror(f"10.0.0.{i}/32"))
            r.watch.set(*routes)
            time.sleep(0.1)
        seen: list[SourceUpdate] = []  # every update since the start, in order
        update = r.until(lambda u: seen.append(u) or u.in_sync)
        assert len(update.view.remote_routes) == 10  # the first view in sync is the whole table
        assert not any(u.in_sync for u in seen[:-1])  # no partial table was ever in sync


def test_never_in_sync_during_graceful_restart_recovery(run: Run) -> None:
    run.until(lambda u: u.in_sync)
    run.bird.recovering = True
    update = run.until(lambda u: not u.in_sync)
    assert "graceful-restart recovery" in update.detail
    run.bird.recovering = False
    run.until(lambda u: u.in_sync)


def test_bird_gone_is_not_in_sync_and_keeps_publishing_routes(run: Run) -> None:
    run.until(lambda u: u.in_sync)
    run.bird.running = False
    run.watch.set(mirror("10.0.0.2/32"))
    update = run.until(lambda u: not u.in_sync and bool(u.view.remote_routes))
    assert update.peers == ()
    assert "cannot connect" in update.detail


def test_config_applied_at_start_retried_after_failure_and_on_reload(fast_poll: None) -> None:
    applied: list[Config] = []

    def apply(config: Config, path: Path) -> None:
        applied.append(config)
        if len(applied) == 1:
            raise BirdError("BIRD refused it")

    r = Run(apply)
    r.source.start(CONFIG, r.updates.put)
    try:
        r.until(lambda u: "BIRD config not applied: BIRD refused it" in u.detail)
        r.until(lambda u: "not applied" not in u.detail)
        assert len(applied) == 2
        reloaded = CONFIG.model_copy(update={"endpoints": {}})
        r.source.reload(reloaded)
        deadline = time.monotonic() + TIMEOUT_S
        while len(applied) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert applied[-1] is reloaded
    finally:
        r.source.stop()


def test_sessions_sync_and_bird_config_are_logged_when_they_change(fast_poll: None) -> None:
    refusals = 3

    def apply(config: Config, path: Path) -> None:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise BirdError("BIRD refused it")

    r = Run(apply)
    r.source.start(CONFIG, r.updates.put)
    try:
        r.until(lambda u: u.in_sync)
        r.bird.sessions["rr1"] = "Active"
        r.until(lambda u: not u.in_sync)
    finally:
        r.source.stop()
    # refused three times, said once; then applied
    assert r.logged("directory.bird_config") == [
        'directory.bird_config ok=false error="BIRD refused it"',
        f"directory.bird_config ok=true path={CONFIG.directory.bird_config}",
    ]
    assert r.logged("directory.peer")[:2] == [
        "directory.peer name=rr1 address=2001:db8:0:f1::1 state=up info=Established",
        "directory.peer name=rr2 address=2001:db8:0:f2::1 state=start info=Active",
    ]
    assert r.logged("directory.peer")[-1] == (
        "directory.peer name=rr1 address=2001:db8:0:f1::1 state=start info=Active"
    )
    sync = r.logged("directory.sync")
    assert any(line.startswith("directory.sync in_sync=true ") for line in sync)
    assert sync[-1] == (
        'directory.sync in_sync=false detail="0 of 2 route reflector sessions established"'
    )


def test_each_route_reflector_session_is_named_for_the_status_it_reports() -> None:
    # the source reports a session's address by its BIRD name: the name must be that RR's
    text = bird_config.render_host(CONFIG, None, version=bird_config.BirdVersion(2, 0, 12))
    for i, rr in enumerate(CONFIG.directory.route_reflectors, 1):
        head = f"protocol bgp {bird_config.rr_protocol(i)} {{\n"
        block = text.split(head, 1)[1].split("\n}", 1)[0]
        assert f"neighbor {rr} as" in block


def test_the_daemon_picks_the_source_the_config_names() -> None:
    bgp = agent_cli._source(CONFIG, "rnv-host1")
    assert isinstance(bgp, BgpSource)
    bgp.stop()  # never started: only its wake-up pipe to close
    static = CONFIG.model_copy(update={"directory": Directory()})
    assert isinstance(agent_cli._source(static, None), StaticSource)


NOEXPORT = "table mt4_100 noexport m4_100"


def unwritten(prefix: str, next_hop: str) -> Route:
    """A path as BIRD lists it under `show route noexport` of a mirror kernel protocol."""
    hop = ipaddress.ip_address(next_hop)
    return Route("mt4_100", prefix, "rr1", True, hop, [(65000, 1, 100), (65000, 2, 3)])


def test_paths_bird_could_not_write_are_refused_for_a_foreign_next_hop_else_kept(
    fast_poll: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BIRD's mirror export drops a path whose next hop the underlay cannot reach: not in the
    mirror table, so not in the watch. The source asks BIRD what that export refused: a foreign
    next hop is reported (bad-next-hop); a host address inside the aggregate, merely unreachable
    now (this host's uplink is down), is a location like any other."""
    monkeypatch.setattr(bgp_source, "REFUSED_POLL_S", 0.01, raising=False)
    r = Run()
    r.bird.unwritten[NOEXPORT] = [
        unwritten("10.0.0.78/32", "2001:db9:0:7::1"),
        unwritten("10.0.0.79/32", "2001:db8:0:7::1"),
    ]
    r.source.start(CONFIG, r.updates.put)
    try:
        r.watch.set(mirror("10.0.0.2/32"))
        update = r.until(lambda u: u.in_sync and bool(u.rejected))
        assert [(str(x.route.prefix), x.reason) for x in update.rejected] == [  # type: ignore[attr-defined]
            ("10.0.0.78/32", Reason.BAD_NEXT_HOP)
        ]
        assert str(update.rejected[0]).startswith(
            f"10.0.0.78/32 via 2001:db9:0:7::1 (table {markers.mirror_table(100)}): bad-next-hop"
        )
        routes = {
            (str(x.prefix), str(x.peer.address), x.sequence) for x in update.view.remote_routes
        }
        assert routes == {
            ("10.0.0.2/32", "2001:db8:0:2::1", 0),
            ("10.0.0.79/32", "2001:db8:0:7::1", 3),
        }
        r.bird.unwritten[NOEXPORT] = []  # both withdrawn
        update = r.until(lambda u: not u.rejected)
        assert {str(x.prefix) for x in update.view.remote_routes} == {"10.0.0.2/32"}
    finally:
        r.source.stop()
    assert NOEXPORT in r.bird.asked


def test_a_mirror_route_bird_withdraws_as_unreachable_stays_in_the_view(
    fast_poll: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This host's uplink goes down: its underlay routes go, BIRD's mirror export can no longer
    write any path and withdraws every mirror route, while the route-reflector sessions are
    still up. Before, the source published a view without them, in sync, and the agent deleted
    the routes and the peers' SAs; made anew when the uplink returned, those SAs start at
    sequence 1 and the peers dropped them as replays. Now the withdrawal is checked against
    BIRD's refused paths at once (not at the next periodic check): the view never loses it."""
    monkeypatch.setattr(bgp_source, "REFUSED_POLL_S", 3600.0, raising=False)
    r = Run()
    r.source.start(CONFIG, r.updates.put)
    try:
        r.watch.set(mirror("10.0.0.2/32"))
        r.until(lambda u: u.in_sync and bool(u.view.remote_routes))
        r.bird.unwritten[NOEXPORT] = [unwritten("10.0.0.2/32", "2001:db8:0:2::1")]
        r.watch.set()
        time.sleep(50 * bgp_source.POLL_S)
        seen = []
        with contextlib.suppress(queue.Empty):
            while True:
                seen.append(r.updates.get_nowait())
        assert [u for u in seen if not u.view.remote_routes] == []
    finally:
        r.source.stop()


def test_the_first_view_is_published_before_birds_config_is_applied(fast_poll: None) -> None:
    """The agent's first apply (READY) needs no BIRD config: rendering it runs `bird --version`
    and `bird -p`, and BIRD itself may start only after the agent's first apply."""
    applying = threading.Event()
    release = threading.Event()

    def apply(config: Config, path: Path) -> None:
        applying.set()
        release.wait(2 * TIMEOUT_S)  # the old order published only once this returned

    r = Run(apply)
    with running(r):
        r.updates.get(timeout=TIMEOUT_S)  # while apply() still waits for release
        assert applying.wait(TIMEOUT_S)
        release.set()
        r.until(lambda u: u.in_sync)
