"""learn: mirror routes -> DirectoryView, with every rejection reasoned and one location chosen."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from routed_nv.config.model import Config
from routed_nv.directory.learn import (
    UNKNOWN_HOST_ID,
    MirrorRoute,
    PublishedRoute,
    Reason,
    learn,
)
from routed_nv.model import markers
from routed_nv.model.directory import Claim

CONFIG = Config.model_validate(
    {
        "host": {
            "name": "host1",
            "id": 1,
            "underlay_prefix": "2001:db8:0:1::/64",
            "underlay_aggregate": "2001:db8::/48",
            "uplink": "uplink",
        },
        "tenants": {
            "blue": {"id": 100, "ipv4": ["10.0.0.0/24"], "ipv6": ["fd10::/64"]},
            "red": {"id": 200, "ipv4": ["10.0.0.0/24"]},
        },
        "endpoints": {"b1": {"tenant": "blue", "addresses": ["10.0.0.1"]}},
        "peers": {"host2": {"id": 2, "underlay_prefix": "2001:db8:0:2::/64"}},
    }
)


def route(
    prefix: str,
    tenant: int = 100,
    via: str = "2001:db8:0:2::1",
    metric: int = -1,
    sequence: int = 0,
) -> MirrorRoute:
    net = ipaddress.ip_network(prefix)
    if metric == -1:
        metric = 0 if net.version == 4 else 1024
    hop = ipaddress.ip_address("2001:db8:0:2::7" if via == "x" else via)
    return MirrorRoute(markers.mirror_table(tenant), net, hop, metric, sequence)


def test_a_valid_route_names_the_configured_peer() -> None:
    learned = learn(CONFIG, [route("10.0.0.2/32"), route("fd10::2/128")])
    assert learned.rejected == ()
    (peer,) = {r.peer for r in learned.view.remote_routes}
    assert (peer.name, peer.id, str(peer.underlay_prefix)) == ("host2", 2, "2001:db8:0:2::/64")
    assert {str(r.prefix) for r in learned.view.remote_routes} == {"10.0.0.2/32", "fd10::2/128"}


def test_an_unconfigured_peer_is_known_by_its_prefix() -> None:
    learned = learn(CONFIG, [route("10.0.0.3/32", via="2001:db8:0:3::1")])
    (remote,) = learned.view.remote_routes
    assert (remote.peer.name, remote.peer.id) == ("2001:db8:0:3::/64", UNKNOWN_HOST_ID)
    assert str(remote.peer.tenant_address(100)) == "2001:db8:0:3::1:64"


def test_same_prefix_in_two_tenants_both_survive() -> None:
    learned = learn(CONFIG, [route("10.0.0.2/32", 100), route("10.0.0.2/32", 200)])
    assert {r.tenant_id for r in learned.view.remote_routes} == {100, 200}


def reasons(*routes: MirrorRoute) -> list[Reason]:
    learned = learn(CONFIG, routes)
    assert learned.view.remote_routes == frozenset()
    return [r.reason for r in learned.rejected]


def test_rejections_carry_their_reason() -> None:
    assert reasons(route("10.0.0.2/32", tenant=300)) == [Reason.UNKNOWN_TENANT]
    assert reasons(route("10.9.0.2/32")) == [Reason.OUTSIDE_SUBNETS]
    assert reasons(route("fd10::2/128", tenant=200)) == [Reason.OUTSIDE_SUBNETS]
    assert reasons(route("10.0.0.0/30")) == [Reason.NOT_ONE_ADDRESS]
    assert reasons(route("10.0.0.2/32", via="2001:db8:0:1::1")) == [Reason.SELF]
    assert reasons(route("10.0.0.2/32", via="2001:db9:0:2::1")) == [Reason.BAD_NEXT_HOP]
    assert reasons(route("10.0.0.2/32", via="2001:db8:0:2::7")) == [Reason.BAD_NEXT_HOP]
    assert reasons(route("10.0.0.2/32", via="192.0.2.1")) == [Reason.BAD_NEXT_HOP]
    assert reasons(
        MirrorRoute(
            100, ipaddress.ip_network("10.0.0.2/32"), ipaddress.ip_address("2001:db8:0:2::1"), 0
        )
    ) == [Reason.NOT_MIRROR]


def test_a_route_for_several_tenants_is_refused_in_every_tenant() -> None:
    both = [
        MirrorRoute(markers.mirror_table(t), ipaddress.ip_network("10.0.0.2/32"),
                    ipaddress.ip_address("2001:db8:0:2::1"), 0, tenants=2)
        for t in (100, 200)
    ]  # fmt: skip
    learned = learn(CONFIG, both)
    assert learned.view.remote_routes == frozenset() and learned.view.contested == frozenset()
    assert [r.reason for r in learned.rejected] == [Reason.MULTIPLE_TENANTS] * 2
    assert str(learned.rejected[0]).endswith(
        "multiple-tenants: tagged for 2 tenants; a route belongs to one"
    )
    # not even a rival for a local address: it must not make this host's endpoint look moved
    local = MirrorRoute(
        markers.mirror_table(100),
        ipaddress.ip_network("10.0.0.1/32"),
        ipaddress.ip_address("2001:db8:0:2::1"),
        0,
        sequence=9,
        tenants=2,
    )
    assert learn(CONFIG, [local]).view.contested == frozenset()


def test_a_mirror_route_without_a_gateway_is_refused_and_reported() -> None:
    bare = MirrorRoute(markers.mirror_table(100), ipaddress.ip_network("10.0.0.2/32"), None, 0)
    (rejection,) = learn(CONFIG, [bare, route("10.0.0.3/32")]).rejected
    assert rejection.reason is Reason.BAD_NEXT_HOP
    assert str(rejection).startswith("10.0.0.2/32 via no gateway (table")


def test_valid_routes_for_a_local_address_are_contested_not_remote() -> None:
    learned = learn(CONFIG, [route("10.0.0.1/32", sequence=4), route("10.0.0.1/32", via="x")])
    assert learned.view.remote_routes == frozenset()
    (contested,) = learned.view.contested
    assert (str(contested.prefix), contested.sequence, contested.peer.name) == (
        "10.0.0.1/32", 4, "host2"
    )  # fmt: skip
    assert [r.reason for r in learned.rejected] == [Reason.BAD_NEXT_HOP]


def test_publish_routes_become_this_hosts_claims() -> None:
    table = markers.publish_table(100)
    v4, v6 = ipaddress.ip_network("10.0.0.1/32"), ipaddress.ip_network("fd10::1/128")
    published = [
        PublishedRoute(table, v4, 3, markers.RTPROT_ENDPOINT),
        PublishedRoute(table, v6, 1024 + 5, markers.RTPROT_STALE),
        PublishedRoute(table, ipaddress.ip_network("10.0.0.9/32"), 0, markers.RTPROT_REMOTE),
        PublishedRoute(table, ipaddress.ip_network("fd10::9/128"), 7, markers.RTPROT_ENDPOINT),
        PublishedRoute(100, ipaddress.ip_network("10.0.0.8/32"), 0, markers.RTPROT_ENDPOINT),
    ]
    assert learn(CONFIG, [], published).view.published == {
        Claim(100, v4, 3), Claim(100, v6, 5, stale=True)
    }  # fmt: skip


def test_rejection_text_says_what_and_why() -> None:
    (rejection,) = learn(CONFIG, [route("10.9.0.2/32")]).rejected
    assert str(rejection) == (
        f"10.9.0.2/32 via 2001:db8:0:2::1 (table {markers.mirror_table(100)}): "
        "outside-tenant-subnets: not in tenant 100's subnets"
    )


def test_of_duplicates_the_lowest_metric_wins_and_the_other_is_reported_superseded() -> None:
    stale = route("10.0.0.5/32", via="2001:db8:0:2::1", metric=40)
    current = route("10.0.0.5/32", via="2001:db8:0:3::1", metric=32)
    learned = learn(CONFIG, [stale, current])
    (remote,) = learned.view.remote_routes
    assert str(remote.peer.address) == "2001:db8:0:3::1"
    (rejection,) = learned.rejected
    assert rejection.route == stale and rejection.reason is Reason.SUPERSEDED
    assert "2001:db8:0:3::1 (metric 32) wins" in rejection.detail


HOSTS = st.integers(2, 40).map(lambda i: f"2001:db8:0:{i:x}::1")
CANDIDATES = st.lists(
    st.builds(
        lambda host, tenant, last, metric: route(f"10.0.0.{last}/32", tenant, host, metric),
        HOSTS,
        st.sampled_from([100, 200]),
        st.integers(2, 6),
        st.integers(0, 3),
    ),
    max_size=30,
)


@given(CANDIDATES, st.randoms())
def test_choice_is_deterministic_and_order_independent(routes: list[MirrorRoute], rnd) -> None:  # type: ignore[no-untyped-def]
    shuffled = list(routes)
    rnd.shuffle(shuffled)
    assert learn(CONFIG, routes) == learn(CONFIG, shuffled)


@given(CANDIDATES)
def test_one_location_per_tenant_address_with_the_lowest_metric(
    routes: list[MirrorRoute],
) -> None:
    learned = learn(CONFIG, routes)
    keys = [(r.tenant_id, r.prefix) for r in learned.view.remote_routes]
    assert len(keys) == len(set(keys)) == len({(r.table, r.prefix) for r in routes})
    for remote in learned.view.remote_routes:
        rivals = [
            r
            for r in routes
            if r.table == markers.mirror_table(remote.tenant_id) and r.prefix == remote.prefix
        ]
        top = min(r.metric for r in rivals)
        winners = sorted(int(r.next_hop) for r in rivals if r.metric == top)
        assert int(remote.peer.address) == winners[0]
    assert len(learned.rejected) == len(set(routes)) - len(keys)  # the rest: superseded


def test_next_hops_are_checked_once_per_host_and_still_judge_every_route() -> None:
    good = [route(f"10.0.0.{i}/32") for i in range(2, 40)]
    bad = [route(f"10.0.0.{i}/32", via="2001:db8:0:2::7") for i in range(40, 45)]
    own = [route(f"10.0.0.{i}/32", via="2001:db8:0:1::1") for i in range(45, 48)]
    learned = learn(CONFIG, [*good, *bad, *own])
    assert len({id(r.peer) for r in learned.view.remote_routes}) == 1  # one PeerHost shared
    assert len(learned.view.remote_routes) == len(good)
    reasons = sorted((str(r.route.prefix), r.reason) for r in learned.rejected)
    assert reasons == sorted(
        [(str(r.prefix), Reason.BAD_NEXT_HOP) for r in bad]
        + [(str(r.prefix), Reason.SELF) for r in own]
    )
