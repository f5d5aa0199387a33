"""The reconcile loop with a fake datapath, a fake directory source and a fake clock."""

from __future__ import annotations

import io
import ipaddress
import threading

import pytest

from routed_nv.agent.events import EventLog
from routed_nv.agent.loop import Agent, Settings
from routed_nv.agent.snapshot import SaInfo, count
from routed_nv.agent.source import StaticSource, keep_known
from routed_nv.config.loader import ConfigError, Problem
from routed_nv.config.model import Config
from routed_nv.model.directory import Claim, DirectoryView, PeerHost, RemoteRoute
from routed_nv.model.directory_delta import DirectoryDelta
from routed_nv.model.directory_source import SourceUpdate
from tests.fakes import FakeDatapath, FakeSource

HOST2 = PeerHost("host2", 2, ipaddress.IPv6Network("2001:db8:0:2::/64"))
HOST3 = PeerHost("host3", 3, ipaddress.IPv6Network("2001:db8:0:3::/64"))


def config(**extra: object) -> Config:
    base: dict[str, object] = {
        "host": {
            "name": "host1",
            "id": 1,
            "underlay_prefix": "2001:db8:0:1::/64",
            "underlay_aggregate": "2001:db8::/48",
            "uplink": "eth0",
        },
        "tenants": {"blue": {"id": 100, "ipv4": ["10.0.0.0/24"], "ipv6": ["fd10::/64"]}},
        "endpoints": {"web": {"tenant": "blue", "addresses": ["10.0.0.1"], "interface": "tap0"}},
        "peers": {"host2": {"id": 2, "underlay_prefix": "2001:db8:0:2::/64"}},
        "remote_endpoints": {"app": {"tenant": "blue", "addresses": ["10.0.0.2"], "host": "host2"}},
    }
    base.update(extra)
    return Config.model_validate(base)


def route(addr: str, peer: PeerHost = HOST2) -> RemoteRoute:
    return RemoteRoute(100, ipaddress.ip_network(addr), peer)


def view(*routes: RemoteRoute) -> DirectoryView:
    return DirectoryView(frozenset(routes))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Notes:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def ready(self, status: str) -> None:
        self.sent.append("READY")

    def reloading(self, status: str) -> None:
        self.sent.append("RELOADING")

    def status(self, status: str) -> None:
        self.sent.append("STATUS")

    def stopping(self, status: str) -> None:
        self.sent.append("STOPPING")


class Harness:
    def __init__(
        self, settings: Settings | None = None, source: object = None, datapath: object = None
    ) -> None:
        self.config = config()
        self.datapath = datapath or FakeDatapath()
        self.source = source or FakeSource()
        self.clock = Clock()
        self.notes = Notes()
        self.log = io.StringIO()
        self.next_config: Config | ConfigError = self.config
        self.sas = [SaInfo(HOST2.tenant_address(100), HOST2.tenant_address(100), 7, 100)]
        self.agent = Agent(
            self.config,
            self.datapath,
            self.source,  # type: ignore[arg-type]
            self.load,
            read_sas=lambda: list(self.sas),
            settings=settings or Settings(min_interval_s=1, resync_interval_s=30),
            log=EventLog(stream=self.log),
            notifier=self.notes,  # type: ignore[arg-type]
            clock=self.clock,
        )

    def load(self) -> Config:
        if isinstance(self.next_config, ConfigError):
            raise self.next_config
        return self.next_config

    def publish(self, v: DirectoryView, in_sync: bool = True, **kw: object) -> None:
        # what a source does through the callback it was started with
        self.agent.publish(SourceUpdate(v, in_sync=in_sync, **kw))  # type: ignore[arg-type]

    def settle(self) -> float | None:
        """Steps until something is due later; returns how long the loop would sleep."""
        while (wait := self.agent.step()) == 0:
            pass
        return wait

    def lines(self, event: str) -> list[str]:
        return [x for x in self.log.getvalue().splitlines() if x.split(" ")[0] == event]


def test_nothing_is_applied_before_the_source_has_said_anything() -> None:
    h = Harness()
    assert h.settle() is None  # sleeps until an input arrives
    assert h.datapath.applied == []


def test_a_burst_of_updates_is_one_apply_of_the_latest_view_after_the_throttle() -> None:
    h = Harness()
    h.publish(view(route("10.0.0.2")))
    h.settle()
    assert len(h.datapath.applied) == 1
    h.publish(view(route("10.0.0.2"), route("10.0.0.3")))
    h.publish(view(route("10.0.0.2"), route("10.0.0.3"), route("10.0.0.4")))
    assert h.settle() == pytest.approx(1.0)  # throttled: the first apply was just now
    assert len(h.datapath.applied) == 1
    h.clock.now += 1
    h.settle()
    assert len(h.datapath.applied) == 2
    assert len(h.datapath.applied[-1][1].remote_routes) == 3
    assert h.lines("agent.apply")[-1].startswith("agent.apply ok=true changes=1 seconds=")
    assert "trigger=directory" in h.lines("agent.apply")[-1]


def test_a_periodic_resync_applies_without_any_update() -> None:
    h = Harness()
    h.publish(view(route("10.0.0.2")))
    assert h.settle() == pytest.approx(30)
    h.clock.now += 30
    h.settle()
    assert len(h.datapath.applied) == 2
    assert "trigger=resync" in h.lines("agent.apply")[-1]
    h.publish(view(route("10.0.0.3")))
    h.clock.now += 1
    h.settle()
    # the first apply and the resync read the whole kernel again; an update trusts the caches
    assert h.datapath.resyncs == [True, True, False]


def test_no_remote_route_is_deleted_before_the_source_is_in_sync() -> None:
    h = Harness()
    h.publish(view(route("10.0.0.2"), route("10.0.0.3")))
    h.settle()
    # the source restarts: it knows less for now, and one address has moved to host3
    h.publish(view(route("10.0.0.3", HOST3)), in_sync=False)
    h.clock.now += 1
    h.settle()
    applied = h.datapath.applied[-1][1].remote_routes
    assert applied == {route("10.0.0.2"), route("10.0.0.3", HOST3)}  # kept, moved, none doubled
    assert "in_sync=false" in h.lines("agent.apply")[-1]
    h.publish(view(route("10.0.0.3", HOST3)), in_sync=True)
    h.clock.now += 1
    h.settle()
    assert h.datapath.applied[-1][1].remote_routes == {route("10.0.0.3", HOST3)}


def test_keep_known_prefers_the_new_location_and_keeps_the_unmentioned() -> None:
    known = view(route("10.0.0.2"), route("10.0.0.3"))
    new = view(route("10.0.0.3", HOST3), route("10.0.0.4"))
    assert keep_known(known, new).remote_routes == {
        route("10.0.0.2"),
        route("10.0.0.3", HOST3),
        route("10.0.0.4"),
    }


def test_keep_known_keeps_unmentioned_rivals_of_local_addresses() -> None:
    rival, local = route("10.0.0.1", HOST3), Claim(100, ipaddress.ip_network("10.0.0.1/32"))
    known = DirectoryView(frozenset(), contested=frozenset({rival}))
    new = DirectoryView(frozenset({route("10.0.0.4")}), published=frozenset({local}))
    kept = keep_known(known, new)
    assert (kept.contested, kept.published) == ({rival}, {local})
    assert keep_known(known, DirectoryView(frozenset({route("10.0.0.1")}))).contested == set()


HERE = ipaddress.ip_network("10.0.0.1/32")  # the harness config's local endpoint


def lose_to_host3(h: Harness) -> RemoteRoute:
    """host3 announces this host's announced 10.0.0.1 with sequence 1; returns its route."""
    newer = RemoteRoute(100, HERE, HOST3, sequence=1)
    h.publish(
        DirectoryView(
            frozenset({route("10.0.0.2")}),
            contested=frozenset({newer}),
            published=frozenset({Claim(100, HERE, 0)}),
        )
    )
    h.settle()
    return newer


def test_the_applied_view_is_resolved_and_a_lost_address_is_logged_stale() -> None:
    h = Harness()
    here = HERE
    newer = lose_to_host3(h)
    applied = h.datapath.applied[-1][1]
    assert applied.claims == {Claim(100, here, 1, stale=True)}
    assert applied.remote_routes == {route("10.0.0.2"), newer}
    (line,) = h.lines("mobility.stale")
    assert "address=10.0.0.1/32" in line and "sequence=1" in line
    assert "winner=2001:db8:0:3::1" in line
    assert h.agent.snapshot().counts.stale_addresses == 1
    h.clock.now += 1
    h.publish(DirectoryView(frozenset(), contested=frozenset({newer}),
                            published=frozenset({Claim(100, here, 1, stale=True)})))  # fmt: skip
    h.settle()
    assert len(h.lines("mobility.stale")) == 1  # said once, when it happened


def test_a_moved_address_is_announced_with_the_next_sequence_and_logged() -> None:
    h = Harness()
    here = ipaddress.ip_network("10.0.0.1/32")
    h.publish(DirectoryView(frozenset(), contested=frozenset({RemoteRoute(100, here, HOST2, 4)})))
    h.settle()
    assert h.datapath.applied[-1][1].claims == {Claim(100, here, 5)}
    (line,) = h.lines("mobility.announce")
    assert "sequence=5" in line


def test_failures_stay_dirty_and_are_retried_with_exponential_backoff() -> None:
    h = Harness(Settings(min_interval_s=0.1, resync_interval_s=30, backoff_min_s=1))
    h.datapath.errors = ["route 10.0.0.2/32: File exists"]
    h.publish(view(route("10.0.0.2")))
    assert h.settle() == pytest.approx(1)
    h.clock.now += 1
    assert h.settle() == pytest.approx(2)
    h.clock.now += 2
    assert h.settle() == pytest.approx(4)
    assert len(h.datapath.applied) == 3
    assert 'error="routing: route 10.0.0.2/32: File exists"' in h.lines("agent.apply.error")[0]
    snap = h.agent.snapshot()
    assert (snap.state, snap.reconcile_errors, snap.last_ok) == ("starting", 3, None)
    assert "trigger=retry" in h.lines("agent.apply")[-1]
    assert h.datapath.resyncs[-1] is True  # a failure may mean a cache is wrong
    h.datapath.errors = []
    h.clock.now += 4
    assert h.settle() == pytest.approx(30)  # recovered: back to the resync period
    assert h.agent.snapshot().state == "ready"


def test_an_exception_in_apply_is_a_failure_not_the_end_of_the_agent() -> None:
    h = Harness()
    h.datapath.raises = FileNotFoundError("/run/netns/host1")
    h.publish(view())
    assert h.settle() == pytest.approx(1)
    assert "FileNotFoundError" in h.lines("agent.apply.error")[0]
    assert h.agent.snapshot().last_apply.ok is False  # type: ignore[union-attr]


def test_ready_is_sent_after_the_first_successful_apply_only() -> None:
    h = Harness(Settings(min_interval_s=0, backoff_min_s=1))
    h.datapath.errors = ["boom"]
    h.publish(view())
    h.settle()
    assert h.notes.sent == ["STATUS"]
    h.datapath.errors = []
    h.clock.now += 1
    h.settle()
    h.publish(view())
    h.settle()
    assert h.notes.sent == ["STATUS", "READY", "STATUS"]


def test_reload_applies_the_new_config_and_reports_ready_after_it() -> None:
    h = Harness()
    h.publish(view())
    h.settle()
    bigger = config(
        endpoints={
            "web": {"tenant": "blue", "addresses": ["10.0.0.1"], "interface": "tap0"},
            "db": {"tenant": "blue", "addresses": ["10.0.0.9"], "interface": "tap1"},
        }
    )
    h.next_config = bigger
    h.agent.request_reload()
    h.clock.now += 1
    h.settle()
    assert h.datapath.applied[-1][0] is bigger
    assert h.source.reloaded == [bigger]  # type: ignore[union-attr]
    assert h.notes.sent == ["READY", "RELOADING", "READY"]
    assert "trigger=reload" in h.lines("agent.apply")[-1]
    assert h.agent.snapshot().counts.local_endpoints == 2


def test_reload_with_an_invalid_config_keeps_the_old_one_and_counts_an_error() -> None:
    h = Harness()
    h.publish(view())
    h.settle()
    h.next_config = ConfigError(
        [Problem("conf.d/10-tenants.toml", "tenants.blue.id", 70000, "is out of range 1..65535")]
    )
    h.agent.request_reload()
    h.clock.now += 1
    assert h.settle() == pytest.approx(29)  # nothing dirty: the next thing is the resync
    assert len(h.datapath.applied) == 1
    assert h.agent.config is h.config
    assert h.agent.snapshot().config_errors == 1
    assert h.lines("agent.reload") == ["agent.reload ok=false problems=1 kept=previous"]
    assert h.lines("agent.reload.problem") == [
        'agent.reload.problem problem="conf.d/10-tenants.toml: tenants.blue.id: 70000 is out '
        'of range 1..65535"'
    ]
    assert h.notes.sent == ["READY", "RELOADING", "READY"]  # systemctl reload must not hang


def test_reload_that_changes_the_host_prefix_is_refused() -> None:
    h = Harness()
    h.publish(view())
    h.settle()
    moved = config()
    h.next_config = moved.model_copy(
        update={"host": moved.host.model_copy(update={"underlay_prefix": HOST3.underlay_prefix})}
    )
    h.agent.request_reload()
    h.settle()
    assert h.agent.config is h.config
    assert "only on restart" in h.lines("agent.reload.problem")[0]


def test_stop_leaves_the_dataplane_and_stops_the_source() -> None:
    source = StaticSource()  # the real one: it publishes the config's view when started
    h = Harness(source=source)
    thread = threading.Thread(target=h.agent.run)
    thread.start()
    for _ in range(200):
        if h.datapath.applied:
            break
        threading.Event().wait(0.01)
    h.agent.stop_requested = True  # exactly what the SIGTERM handler does
    h.agent.waker.wake()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert len(h.datapath.applied) == 1  # no flush, no "cleanup" apply on the way out
    assert h.notes.sent[-1] == "STOPPING"
    assert h.agent.snapshot().state == "stopping"
    assert h.lines("agent.stop") == ["agent.stop dataplane=left-in-place"]
    assert source._publish is None  # stopped: it publishes nothing more


def test_rejected_routes_are_counted_once_each_by_reason() -> None:
    class Rejection:
        def __init__(self, reason: str, text: str) -> None:
            self.reason, self.text = reason, text

        def __eq__(self, other: object) -> bool:
            return isinstance(other, Rejection) and (self.reason, self.text) == (
                other.reason,
                other.text,
            )

        def __hash__(self) -> int:
            return hash((self.reason, self.text))

    h = Harness()
    a, b = Rejection("bad-next-hop", "a"), Rejection("unknown-tenant", "b")
    h.publish(view(), rejected=(a,))
    h.publish(view(), rejected=(a, b))
    h.publish(view(), rejected=(a, b))
    assert h.agent.snapshot().rejected_total == {"bad-next-hop": 1, "unknown-tenant": 1}
    h.settle()
    logged = h.lines("directory.rejected")
    assert [x.split(" ")[1] for x in logged] == ["reason=bad-next-hop", "reason=unknown-tenant"]
    h.publish(view(), rejected=(a, b))
    h.clock.now += 1
    h.settle()
    assert len(h.lines("directory.rejected")) == 2  # logged once, when first seen


def test_a_flood_of_rejected_routes_is_logged_in_part_and_counted() -> None:
    class Rejection(str):
        reason = "multiple-tenants"

    h = Harness()
    h.publish(view(), rejected=tuple(Rejection(f"r{i}") for i in range(50)))
    h.settle()
    assert len(h.lines("directory.rejected")) == 20
    assert h.lines("directory.rejected.more") == ["directory.rejected.more count=30"]


def test_snapshot_counts_what_was_applied() -> None:
    h = Harness()
    h.publish(view(route("10.0.0.2"), route("fd10::2")))
    h.settle()
    c = h.agent.snapshot().counts
    assert (c.tenants, c.local_endpoints, c.remote_addresses, c.sas) == (1, 1, 2, 1)
    assert c.routes > 2


class Deltas:
    """A source publishing views with their deltas, as the BGP source does."""

    def __init__(self, h: Harness, *routes: RemoteRoute) -> None:
        self.h, self.routes = h, set(routes)
        h.publish(view(*routes))  # the first view: whole

    def step(self, add: tuple[RemoteRoute, ...] = (), remove: tuple[RemoteRoute, ...] = (),
             in_sync: bool = True) -> DirectoryDelta:  # fmt: skip
        old = {(r.tenant_id, r.peer) for r in self.routes}
        self.routes = (self.routes - set(remove)) | set(add)
        peers = old ^ {(r.tenant_id, r.peer) for r in self.routes}
        delta = DirectoryDelta(frozenset(add), frozenset(remove), peers=frozenset(peers))
        self.h.publish(view(*self.routes), in_sync=in_sync, delta=delta)
        return delta

    def apply(self) -> None:
        self.h.clock.now += 1
        self.h.settle()


def test_updates_with_deltas_are_applied_as_their_composed_delta() -> None:
    h = Harness()
    source = Deltas(h, route("10.0.0.2"), route("10.0.0.3"))
    h.settle()
    assert h.datapath.deltas == [None]  # the first apply: everything
    source.step(add=(route("10.0.0.4"),))
    source.step(add=(route("10.0.0.5", HOST3),), remove=(route("10.0.0.2"),))
    source.step(remove=(route("10.0.0.4"),))  # added and gone before the apply: no change
    source.apply()
    (delta,) = h.datapath.deltas[1:]
    assert delta is not None
    assert (delta.remote_added, delta.remote_removed) == ({route("10.0.0.5", HOST3)},
                                                          {route("10.0.0.2")})  # fmt: skip
    assert {p.name for _, p in delta.peers} == {"host3"}
    applied = h.datapath.applied[-1][1]
    assert applied.remote_routes == {route("10.0.0.3"), route("10.0.0.5", HOST3)}
    assert applied.claims == h.datapath.applied[0][1].claims  # the claims stand
    # what status shows follows the delta as a full count would
    snap = h.agent.snapshot()
    full = count(h.config, applied, h.sas)
    assert snap.counts == full
    assert set(snap.withdrawn) == {(100, ipaddress.ip_network("10.0.0.2/32"))}


def test_anything_but_other_hosts_addresses_goes_the_full_way() -> None:
    h = Harness()
    source = Deltas(h, route("10.0.0.2"))
    h.settle()
    source.step(add=(route("10.0.0.1", HOST3),))  # 10.0.0.1 is this host's (web)
    source.apply()
    # not in sync (and the local address gone again)
    source.step(add=(route("10.0.0.6"),), remove=(route("10.0.0.1", HOST3),), in_sync=False)
    source.apply()
    source.step(add=(route("10.0.0.7"),))  # the one before was not in sync: not a base
    source.apply()
    source.step(add=(route("10.0.0.8"),))  # now it is
    source.apply()
    h.agent.change_config(config(endpoints={}))  # an endpoint API change
    source.step(add=(route("10.0.0.9"),))
    source.apply()
    h.publish(view(*source.routes, route("10.0.0.10")))  # a whole view, no delta
    source.apply()
    assert [d is not None for d in h.datapath.deltas] == [False, False, False, False, True,
                                                          False, False]  # fmt: skip
