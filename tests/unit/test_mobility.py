"""calc/mobility: which host announces an address that several hosts hold (RFC 7432 §15 style)."""

from __future__ import annotations

import ipaddress
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from routed_nv.calc import mobility
from routed_nv.config.model import Config
from routed_nv.model.directory import Claim, DirectoryView, PeerHost, RemoteRoute
from routed_nv.model.mobility import MAX_SEQUENCE
from tests.factories import HOST1

ADDRESS = ipaddress.ip_network("10.0.0.1/32")
WHERE = (100, ADDRESS)
OWN = ipaddress.ip_address("2001:db8:0:5::1")


def peer(i: int) -> PeerHost:
    return PeerHost(f"host{i}", i, ipaddress.ip_network(f"2001:db8:0:{i:x}::/64"))


def other(i: int, sequence: int, address: ipaddress.IPv4Network = ADDRESS) -> RemoteRoute:
    return RemoteRoute(100, address, peer(i), sequence)


def decide(current: Claim | None, best: RemoteRoute | None) -> Claim:
    return mobility.decide(current, best, OWN, WHERE)


def test_a_new_address_gets_one_more_than_the_other_hosts_sequence() -> None:
    assert decide(None, None) == Claim(100, ADDRESS, 0)
    assert decide(None, other(2, 0)) == Claim(100, ADDRESS, 1)
    assert decide(None, other(2, 6)) == Claim(100, ADDRESS, 7)
    assert decide(None, other(2, MAX_SEQUENCE)) == Claim(100, ADDRESS, MAX_SEQUENCE)


def test_an_announced_address_goes_stale_only_to_a_newer_or_tie_winning_announcement() -> None:
    mine = Claim(100, ADDRESS, 3)
    assert decide(mine, other(9, 2)) == mine
    assert decide(mine, other(2, 4)) == Claim(100, ADDRESS, 4, stale=True)
    # equal sequences: the lower host address wins (host 2 < host 5 < host 9)
    assert decide(mine, other(2, 3)) == Claim(100, ADDRESS, 3, stale=True)
    assert decide(mine, other(9, 3)) == mine


def test_a_stale_address_stays_stale_while_announced_elsewhere_and_returns_after() -> None:
    stale = Claim(100, ADDRESS, 4, stale=True)
    assert decide(stale, other(9, 4)) == stale
    assert decide(stale, other(9, 6)) == Claim(100, ADDRESS, 6, stale=True)
    assert decide(stale, None) == Claim(100, ADDRESS, 5)


CLAIMS = st.none() | st.builds(
    Claim, st.just(100), st.just(ADDRESS), st.integers(0, 5), st.booleans()
)
OTHERS = st.none() | st.builds(other, st.sampled_from([2, 5, 9]), st.integers(0, 5))


@given(CLAIMS, OTHERS)
def test_every_decision_is_a_fixed_point(current: Claim | None, best: RemoteRoute | None) -> None:
    """What the agent writes is what it reads back next time (and after a restart): the same
    inputs decide the same again, so nothing flaps."""
    decided = decide(current, best)
    assert decide(decided, best) == decided


Hosts = dict[int, Claim | None]


def best_other(hosts: Hosts, me: int) -> RemoteRoute | None:
    """What host `me`'s mirror table shows: the best active announcement of another host."""
    routes = [
        other(i, c.sequence) for i, c in hosts.items() if i != me and c is not None and not c.stale
    ]
    return max(routes, key=mobility.rank, default=None)


def settle(hosts: Hosts, rnd: random.Random) -> int:
    """Hosts decide one at a time, in random order, until none changes; returns the rounds."""
    for rounds in range(1, 20):
        changed = False
        for i in rnd.sample(sorted(hosts), len(hosts)):
            own = peer(i).address
            decided = mobility.decide(hosts[i], best_other(hosts, i), own, WHERE)
            changed |= decided != hosts[i]
            hosts[i] = decided
        if not changed:
            return rounds
    raise AssertionError(f"no fixed point: {hosts}")


def active(hosts: Hosts) -> list[int]:
    return [i for i, c in hosts.items() if c is not None and not c.stale]


# Simulations of several hosts: slow on a loaded machine, and none of it is about time.
SIMULATION = settings(deadline=None)


@SIMULATION
@given(st.lists(st.integers(1, 12), min_size=1, max_size=8), st.randoms())
def test_each_move_goes_to_the_newest_host_and_every_other_goes_stale(
    joins: list[int], rnd: random.Random
) -> None:
    """Hosts add the address one after the other (make-before-break: nobody deletes it)."""
    hosts: Hosts = {}
    for host in joins:
        if host in hosts:
            continue  # already holds it
        hosts[host] = None
        settle(hosts, rnd)
        assert active(hosts) == [host]
        winner = hosts[host]
        assert winner is not None and winner.sequence == len(hosts) - 1
        assert all(c == Claim(100, ADDRESS, winner.sequence, True) for i, c in hosts.items()
                   if i != host)  # fmt: skip


@SIMULATION
@given(st.sets(st.integers(1, 12), min_size=2, max_size=6), st.randoms())
def test_simultaneous_claims_settle_on_one_host_that_everyone_agrees_on(
    claimants: set[int], rnd: random.Random
) -> None:
    """Several hosts already announce it (each added it before seeing the others)."""
    hosts: Hosts = {i: Claim(100, ADDRESS, rnd.randint(0, 2)) for i in claimants}
    top = max(c.sequence for c in hosts.values() if c is not None)
    expected = min(i for i, c in hosts.items() if c is not None and c.sequence == top)
    settle(hosts, rnd)
    # the highest sequence wins, ties to the lowest host address, whatever the order
    assert active(hosts) == [expected]
    assert all(c == Claim(100, ADDRESS, top, True) for i, c in hosts.items() if i != expected)


def test_a_stale_host_takes_the_address_back_when_nobody_else_announces_it() -> None:
    hosts: Hosts = {1: None}
    settle(hosts, random.Random(1))
    hosts[2] = None
    settle(hosts, random.Random(1))
    del hosts[2]  # the new host deleted it
    settle(hosts, random.Random(1))
    assert hosts == {1: Claim(100, ADDRESS, 2)}


CONFIG = Config.model_validate(
    {
        "host": HOST1 | {"underlay_prefix": "2001:db8:0:5::/64"},
        "tenants": {"blue": {"id": 100, "ipv4": ["10.0.0.0/24"], "ipv6": ["fd10::/64"]}},
        "endpoints": {"b1": {"tenant": "blue", "addresses": ["10.0.0.1"], "interface": "tap1"}},
    }
)


def test_resolve_makes_the_winner_of_a_stale_address_a_remote_route() -> None:
    elsewhere = other(2, 0, ipaddress.ip_network("10.0.0.9/32"))
    view = DirectoryView(
        frozenset({elsewhere}),
        contested=frozenset({other(3, 1), other(9, 2)}),
        published=frozenset({Claim(100, ADDRESS, 0)}),
    )
    resolved = mobility.resolve(CONFIG, view)
    assert resolved.claims == {Claim(100, ADDRESS, 2, stale=True)}
    assert resolved.remote_routes == {elsewhere, other(9, 2)}
    assert mobility.stale(resolved) == resolved.claims
    assert mobility.resolve(CONFIG, resolved) == resolved


def test_resolve_keeps_a_local_address_out_of_the_remote_routes_while_it_wins() -> None:
    # a remote route for a local address (kept while out of sync) only counts as a rival
    view = DirectoryView(frozenset({other(9, 0)}), published=frozenset({Claim(100, ADDRESS, 1)}))
    resolved = mobility.resolve(CONFIG, view)
    assert resolved.claims == {Claim(100, ADDRESS, 1)}
    assert resolved.remote_routes == frozenset()


def test_resolve_without_mobility_inputs_announces_everything_with_sequence_0() -> None:
    resolved = mobility.resolve(CONFIG, DirectoryView(frozenset()))
    assert resolved.claims == {Claim(100, ADDRESS, 0)}
