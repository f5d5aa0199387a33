"""What a host keeps per remote route (issue 16: < 1 kB a route at 100,000): no per-event copy
of the view, one object per prefix and next hop shared from the watch to the routing cache,
no __dict__ on the per-route value types. Structure, not byte counts (`routed-nv bench events
--memory` measures those)."""

from __future__ import annotations

import dataclasses
import gc
import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from routed_nv.calc import mobility
from routed_nv.calc.routing import desired_routing, remote_route
from routed_nv.config.views import static_view
from routed_nv.directory.learn import Learner, MirrorRoute, PublishedRoute, _Candidate
from routed_nv.directory.netlink_watch import route_prefix
from routed_nv.model import markers
from routed_nv.model.directory import Claim, DirectoryView, PeerHost, RemoteRoute
from routed_nv.model.route_set import BUCKETS, SharedSet
from routed_nv.model.routing import Route
from routed_nv.routing.driver import RoutingDriver
from tests.fakes import FakeWorld
from tests.unit.test_learn import CONFIG, route
from tests.unit.test_mobility import peer
from tests.unit.test_routing_driver import config_with_remotes


def test_per_route_value_types_have_no_instance_dict() -> None:
    p = PeerHost("host2", 2, ipaddress.ip_network("2001:db8:0:2::/64"))
    remote = RemoteRoute(100, ipaddress.ip_network("10.0.0.2/32"), p)
    mirror = route("10.0.0.2/32")
    published = PublishedRoute(1, ipaddress.ip_network("10.0.0.2/32"), 0, 230)
    objects = (p, remote, Claim(100, remote.prefix), mirror, published,
               _Candidate(remote, mirror), remote_route(remote))  # fmt: skip
    assert [type(o).__name__ for o in objects if hasattr(o, "__dict__")] == []


def test_route_prefix_is_the_network_without_its_own_hosts_closure() -> None:
    for text in ("10.0.0.2/32", "fd10::2/128", "10.0.0.0/24"):
        plain = ipaddress.ip_network(text)
        lean = route_prefix(plain.network_address, plain.prefixlen)
        assert lean == plain and hash(lean) == hash(plain) and str(lean) == text
        assert "hosts" not in vars(lean)


def test_route_prefix_keeps_its_attributes_inline_without_a_dict_object() -> None:
    # asking for __dict__ (to pop `hosts`) turns the inline values into a dict (~64 B a prefix)
    for text in ("10.0.0.2/32", "fd10::2/128"):
        plain = ipaddress.ip_network(text)
        lean = route_prefix(plain.network_address, plain.prefixlen)
        assert not any(isinstance(o, dict) for o in gc.get_referents(lean))


@settings(max_examples=200, deadline=None)
@given(
    st.sets(st.integers(0, 300)),
    st.lists(st.tuples(st.booleans(), st.sets(st.integers(0, 300))), max_size=6),
)
def test_a_shared_set_is_the_set_of_its_changes(start: set[int], steps: list) -> None:
    shared, plain = SharedSet(start), frozenset(start)
    for add, items in steps:
        changed = shared.changed(items, ()) if add else shared.changed((), items)
        plain = plain | items if add else plain - items
        assert changed == plain and plain == changed and len(changed) == len(plain)
        assert set(changed) == plain and all(i in changed for i in plain)
        assert (changed == shared) == (plain == frozenset(shared))
        shared = changed
    assert (shared | {1000}) == plain | {1000} and isinstance(shared - {1}, frozenset)


def _shared_buckets(a: SharedSet, b: SharedSet) -> int:
    return sum(x is y for x, y in zip(a._buckets, b._buckets, strict=True))


def test_one_route_event_copies_one_bucket_of_the_view_not_the_view() -> None:
    routes = [route(f"fd10::{i + 2:x}/128") for i in range(2000)]
    learner = Learner(CONFIG, routes)
    before = learner.view
    moved = dataclasses.replace(routes[7], next_hop=ipaddress.ip_address("2001:db8:0:3::1"))
    learner.update([(False, routes[7]), (True, moved)])
    after = learner.view
    assert after.remote_routes != before.remote_routes and len(after.remote_routes) == 2000
    # the old and the new location of one address: at most two buckets are new objects
    assert _shared_buckets(before.remote_routes, after.remote_routes) >= BUCKETS - 2
    assert learner.view is after  # asking again builds nothing


def test_mobility_keeps_the_sources_set_when_no_local_address_is_concerned() -> None:
    remote = SharedSet([RemoteRoute(100, ipaddress.ip_network("10.0.9.9/32"), peer(2))])
    resolved = mobility.resolve(CONFIG, DirectoryView(remote))
    assert resolved.remote_routes is remote


def test_remote_routes_share_their_tenants_next_hop_table_and_tunnel_objects() -> None:
    a, b = (RemoteRoute(100, ipaddress.ip_network(f"10.0.0.{i}/32"), peer(2)) for i in (2, 3))
    ra, rb = remote_route(a), remote_route(b)
    assert ra.via is rb.via and ra.dev is rb.dev and ra.table is rb.table


def test_routes_read_back_by_a_resync_are_cached_as_the_calculations_objects() -> None:
    world = FakeWorld("w1", "w2")
    world.ns(None).plain_link("tap3", kind="tun")
    driver = RoutingDriver(world.ns)
    cfg = config_with_remotes(20)
    wanted = desired_routing(cfg, static_view(cfg))
    assert driver.reconcile(wanted).ok
    host = world.ns(None)
    # a netlink dump gives new objects with equal values
    host.routes_ = {k: _reparsed(r) for k, r in host.routes_.items()}
    assert driver.plan(wanted, resync=True).changes == ()
    objects = {id(r) for r in wanted.routes}
    cached = [r for r in driver._known[None].routes.values() if r.dst.prefixlen in (32, 128)]
    assert cached and all(id(r) in objects for r in cached)


def _reparsed(r: Route) -> Route:
    via = ipaddress.ip_address(r.via.packed) if r.via is not None else None
    dst = type(r.dst)((int(r.dst.network_address), r.dst.prefixlen))
    return dataclasses.replace(r, dst=dst, via=via)


HOST2 = "2001:db8:0:2::1"


def test_the_learner_keeps_mirror_routes_as_given() -> None:
    prefix = route_prefix(ipaddress.ip_address("10.0.0.2"), 32)
    mirror = MirrorRoute(markers.mirror_table(100), prefix, ipaddress.ip_address(HOST2), 0)
    learner = Learner(CONFIG, [mirror])
    (remote,) = learner.view.remote_routes
    assert remote.prefix is mirror.prefix


def test_the_learner_keeps_one_remote_route_per_path_and_no_candidate_wrapper() -> None:
    routes = [route(f"fd10::{i + 2:x}/128") for i in range(200)]
    routes.append(route("fd10::2/128", via="2001:db8:0:3::1"))  # a second location of one
    learner = Learner(CONFIG, routes)
    gc.collect()
    assert sum(isinstance(o, _Candidate) for o in gc.get_objects()) == 0
    assert len(learner.view.remote_routes) == 200 and len(learner.rejected) == 1


def test_a_host_route_read_back_that_is_not_wanted_is_cached_as_read_not_copied() -> None:
    # a resync reads 100,000s of routes: a copy of each (to set netns=None, which it has) left
    # the allocator's pools fragmented by the cache built among them (~190 B a route of RSS)
    world = FakeWorld("w1", "w2")
    world.ns(None).plain_link("tap3", kind="tun")
    driver = RoutingDriver(world.ns)
    cfg = config_with_remotes(20)
    assert driver.reconcile(desired_routing(cfg, static_view(cfg))).ok
    host = world.ns(None)
    host.routes_ = {k: _reparsed(r) for k, r in host.routes_.items()}
    read = {id(r) for r in host.routes_.values()}
    fewer = config_with_remotes(0)
    wanted = desired_routing(fewer, static_view(fewer))
    driver.plan(wanted, resync=True)
    keys = {r.key for r in wanted.routes}
    cached = [r for k, r in driver._known[None].routes.items() if k not in keys]
    assert len(cached) >= 20 and all(id(r) in read for r in cached)
