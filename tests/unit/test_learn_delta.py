"""Learner: learn() kept current route by route; each update's delta, applied to the view before
it, gives exactly the view (and rejections) learn() computes over all routes again."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from routed_nv.directory.learn import Learner, MirrorRoute, PublishedRoute, learn
from routed_nv.model import markers
from routed_nv.model.directory import DirectoryView
from routed_nv.model.directory_delta import DirectoryDelta
from tests.unit.test_learn import CONFIG, route

HOST2, HOST3 = "2001:db8:0:2::1", "2001:db8:0:3::1"


def published(prefix: str, tenant: int = 100, sequence: int = 0) -> PublishedRoute:
    return PublishedRoute(markers.publish_table(tenant), ipaddress.ip_network(prefix),
                          sequence, markers.RTPROT_ENDPOINT)  # fmt: skip


def check_step(learner: Learner, paths: set, before: DirectoryView, delta: DirectoryDelta) -> None:
    full = learn(CONFIG, (p for p in paths if isinstance(p, MirrorRoute)),
                 (p for p in paths if isinstance(p, PublishedRoute)))  # fmt: skip
    assert learner.view == full.view
    assert set(learner.rejected) == set(full.rejected)
    assert delta.apply(before) == full.view
    peers = {(r.tenant_id, r.peer) for r in full.view.remote_routes}
    was = {(r.tenant_id, r.peer) for r in before.remote_routes}
    assert delta.peers == peers ^ was


def run(steps: list[tuple[bool, MirrorRoute | PublishedRoute]]) -> list[DirectoryDelta]:
    learner, paths, deltas = Learner(CONFIG), set(), []
    for added, path in steps:
        before, refused, count = learner.view, set(learner.rejected), learner.rejections
        delta = learner.update([(added, path)])
        if set(learner.rejected) != refused:  # the source publishes again only then
            assert learner.rejections != count
        paths = paths | {path} if added else paths - {path}
        check_step(learner, paths, before, delta)
        deltas.append(delta)
    return deltas


def test_add_change_and_withdraw_touch_only_that_address() -> None:
    a, a_moved, b = route("10.0.0.2/32"), route("10.0.0.2/32", via=HOST3), route("10.0.0.3/32")
    added, other, second_path, changed, withdrawn = run(
        [(True, a), (True, b), (True, a_moved), (False, a), (False, a_moved)]
    )
    (new,) = added.remote_added
    assert str(new.prefix) == "10.0.0.2/32" and not added.remote_removed
    assert {(t, p.name) for t, p in added.peers} == {(100, "host2")}
    assert {str(r.prefix) for r in other.remote_added} == {"10.0.0.3/32"} and not other.peers
    assert not second_path  # equal rank: the lower host address (host2) stays the winner
    (gone,), (moved,) = changed.remote_removed, changed.remote_added
    assert (str(gone.peer.address), str(moved.peer.address)) == (HOST2, HOST3)
    # host2 still carries 10.0.0.3: only host3 appears as a peer of tenant 100
    assert {p.name for _, p in changed.peers} == {"2001:db8:0:3::/64"}
    assert withdrawn.remote_removed == {moved} and not withdrawn.remote_added


def test_mobility_winner_change_on_a_lower_metric() -> None:
    _, better = run(
        [(True, route("10.0.0.2/32", metric=5)), (True, route("10.0.0.2/32", 100, HOST3, 0))]
    )
    assert {str(r.peer.address) for r in better.remote_added} == {HOST3}
    assert {str(r.peer.address) for r in better.remote_removed} == {HOST2}


def test_duplicate_claim_of_a_local_address_is_contested_not_remote() -> None:
    # 10.0.0.1 is b1's, local: another host's claim goes to contested, twice counted once
    one, two = route("10.0.0.1/32", sequence=3), route("10.0.0.1/32", metric=7, sequence=3)
    d1, d2, d3 = run([(True, one), (True, two), (False, one)])
    assert d1.contested_added and not d1.remote_added and not d1.remote_only
    assert not d2 and not d3  # the same RemoteRoute from two mirror routes: still there


def test_published_routes_become_claims() -> None:
    (delta,) = run([(True, published("10.0.0.1/32"))])
    assert {str(c.prefix) for c in delta.published_added} == {"10.0.0.1/32"}


def test_a_batch_that_ends_where_it_began_is_no_change() -> None:
    learner = Learner(CONFIG, [route("10.0.0.2/32")])
    a = route("10.0.0.3/32")
    assert not learner.update([(True, a), (False, a), (False, route("10.0.0.9/32"))])


def test_deltas_compose_to_the_net_change() -> None:
    a, b = route("10.0.0.2/32"), route("10.0.0.2/32", via=HOST3, metric=0)
    learner = Learner(CONFIG)
    start = learner.view
    total = learner.update([(True, a)]).then(learner.update([(False, a), (True, b)]))
    assert total.apply(start) == learner.view
    assert {str(r.peer.address) for r in total.remote_added} == {HOST3}


PREFIXES = ["10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32", "fd10::2/128", "10.1.0.2/32"]
paths = st.one_of(
    st.builds(
        route,
        st.sampled_from(PREFIXES),
        st.sampled_from([100, 200, 300]),
        st.sampled_from([HOST2, HOST3, "2001:db8:0:1::1", "2001:db9::1"]),
        st.sampled_from([0, 5, 1024]),
        st.integers(0, 2),
    ),
    st.builds(published, st.sampled_from(PREFIXES[:2]), st.just(100), st.integers(0, 2)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), paths), max_size=30))
def test_any_sequence_of_route_events_matches_a_full_learn(
    steps: list[tuple[bool, MirrorRoute | PublishedRoute]],
) -> None:
    run(steps)
