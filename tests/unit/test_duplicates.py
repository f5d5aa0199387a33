"""calc/duplicates: a still-attached address is re-asserted, a flapping one frozen at the host that
held it before (RFC 7432 §15), a real move is no duplicate. Clock injected: no waiting."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from routed_nv.calc import mobility
from routed_nv.calc.duplicates import Guard, Limits
from routed_nv.config import crosscheck
from routed_nv.config.model import Config
from routed_nv.model.directory import Claim, DirectoryView, PeerHost, RemoteRoute

ADDRESS = ipaddress.ip_network("10.0.0.2/32")
WHERE = (100, ADDRESS)
LIMITS = Limits(moves=5, window_s=180, reassert_after_s=10)


def peer(i: int) -> PeerHost:
    return PeerHost(f"host{i}", i, ipaddress.ip_network(f"2001:db8:0:{i:x}::/64"))


def config(i: int, holds: bool = True) -> Config:
    endpoints = {"ep": {"tenant": "blue", "addresses": [str(ADDRESS.network_address)]}}
    return Config.model_validate(
        {
            "host": {
                "name": f"host{i}",
                "id": i,
                "underlay_prefix": f"2001:db8:0:{i:x}::/64",
                "underlay_aggregate": "2001:db8::/48",
                "uplink": "eth0",
            },
            "tenants": {"blue": {"id": 100, "ipv4": ["10.0.0.0/24"]}},
            "endpoints": endpoints if holds else {},
        }
    )


class Host:
    """One host's agent as far as mobility goes: its publish route (the kernel's, read back),
    its guard, and resolve on each apply."""

    def __init__(self, i: int, guard: Guard | None = None) -> None:
        self.i = i
        self.config = config(i)
        self.guard = guard if guard is not None else Guard(LIMITS)
        self.published: Claim | None = None

    def announcing(self) -> RemoteRoute | None:
        p = self.published
        if p is None or p.stale:
            return None
        return RemoteRoute(100, ADDRESS, peer(self.i), p.sequence)

    def apply(self, others: list[RemoteRoute], now: float) -> Claim | None:
        best = [r for r in others if r is not None]
        view = DirectoryView(
            frozenset(),
            contested=frozenset(best[:1]) if best else frozenset(),
            published=frozenset({self.published}) if self.published else frozenset(),
        )
        resolved = mobility.resolve(self.config, view, self.guard, now)
        self.published = next(iter(resolved.claims), None)  # None: no longer held here
        return self.published


def best_of(*routes: RemoteRoute | None) -> list[RemoteRoute]:
    found = [r for r in routes if r is not None]
    return sorted(found, key=mobility.rank, reverse=True)[:1]


def test_a_lost_address_still_attached_is_re_asserted_after_the_delay() -> None:
    h2 = Host(2)
    assert h2.apply([], 0) == Claim(100, ADDRESS, 0)
    hijack = RemoteRoute(100, ADDRESS, peer(1), 5)  # host1 announces it, sequence 5
    assert h2.apply([hijack], 1) == Claim(100, ADDRESS, 5, stale=True)
    assert h2.guard.due() == 11
    assert h2.apply([hijack], 10.9).stale
    assert h2.apply([hijack], 11) == Claim(100, ADDRESS, 6)  # back, above the hijacker
    assert h2.apply([hijack], 12) == Claim(100, ADDRESS, 6)  # a fixed point
    events = [(e.kind, e.other, e.sequence) for e in h2.guard.take_events()]
    assert events == [("reassert", "host1", 6)]
    (dup,) = h2.guard.duplicates()  # it came back while host1 still announces it
    assert (dup.other, dup.other_address, dup.moves, dup.frozen, dup.holder) == (
        "host1", "2001:db8:0:1::1", 2, False, "self"
    )  # fmt: skip


def test_a_real_move_deleted_within_the_delay_is_no_duplicate() -> None:
    a, b = Host(1), Host(3)
    a.apply([], 0)
    b.apply(best_of(a.announcing()), 5)  # add on B: one more than A
    assert b.published == Claim(100, ADDRESS, 1)
    a.apply(best_of(b.announcing()), 6)
    assert a.published == Claim(100, ADDRESS, 1, stale=True)
    # del on A, 8 s later (within the delay): A's config no longer holds it
    a.config = config(1, holds=False)
    a.apply(best_of(b.announcing()), 14)
    assert b.apply([], 15) == Claim(100, ADDRESS, 1)
    assert a.guard.duplicates() == b.guard.duplicates() == []
    assert [e.kind for e in a.guard.take_events() + b.guard.take_events()] == []
    assert a.guard.due() is None


def test_two_attached_hosts_flap_then_freeze_at_the_host_that_held_it_first() -> None:
    old, new = Host(2), Host(1)  # host1 (lower address: it would win every tie) adds later
    old.apply([], 0)
    now = 1.0
    for _ in range(40):
        new.apply(best_of(old.announcing()), now)
        old.apply(best_of(new.announcing()), now + 0.5)
        now += 6
    assert old.published is not None and not old.published.stale
    assert new.published is not None and new.published.stale
    assert new.announcing() is None  # the newcomer withdrew: only the incumbent announces
    frozen = [d for d in new.guard.duplicates() if d.frozen]
    assert [(d.other, d.holder) for d in frozen] == [("host2", "2001:db8:0:2::1")]
    kinds = [e.kind for e in new.guard.take_events()]
    assert kinds.count("duplicate") == 1 and "reassert" in kinds
    # it stays put: no more re-assertions, nothing due
    new.guard.take_events()
    for _ in range(10):
        new.apply(best_of(old.announcing()), now)
        old.apply(best_of(new.announcing()), now)
        now += 30
    assert new.published.stale and not old.published.stale
    assert [e.kind for e in new.guard.take_events()] == []
    assert new.guard.due() is None


def test_a_frozen_incumbent_takes_its_address_back_at_once() -> None:
    h2 = Host(2)
    h2.apply([], 0)
    sequence, now = 1, 1.0
    while not any(d.frozen for d in h2.guard.duplicates()):
        hijack = RemoteRoute(100, ADDRESS, peer(1), (h2.published or Claim(*WHERE)).sequence + 1)
        assert h2.apply([hijack], now).stale
        h2.apply([hijack], now + 10)  # re-asserted after the delay
        now += 11
        sequence += 1
        assert sequence < 10, "never frozen"
    assert not h2.published.stale  # type: ignore[union-attr]
    (dup,) = h2.guard.duplicates()
    assert dup.frozen and dup.other == "host1" and dup.moves == 6
    # frozen: the next hijack is answered in the same apply, no delay
    hijack = RemoteRoute(100, ADDRESS, peer(1), h2.published.sequence + 1)  # type: ignore[union-attr]
    assert h2.apply([hijack], now) == Claim(100, ADDRESS, hijack.sequence + 1)


def test_the_freeze_ends_with_the_conflict_or_by_the_operator() -> None:
    h2 = Host(2, Guard(Limits(moves=1, window_s=180, reassert_after_s=10)))
    h2.apply([], 0)
    hijack = RemoteRoute(100, ADDRESS, peer(1), 5)
    h2.apply([hijack], 1)
    h2.apply([hijack], 11)  # second move: frozen (more than 1)
    assert [d.frozen for d in h2.guard.duplicates()] == [True]
    assert h2.guard.clear(WHERE) is True
    assert h2.guard.duplicates() == []
    assert h2.guard.clear(WHERE) is False  # nothing to clear any more
    h2.apply([RemoteRoute(100, ADDRESS, peer(1), 9)], 20)
    h2.apply([RemoteRoute(100, ADDRESS, peer(1), 9)], 30)
    assert [d.frozen for d in h2.guard.duplicates()] == [True]
    h2.apply([], 31)  # host1 stopped announcing it: between two rounds of a flap, that is
    assert [d.frozen for d in h2.guard.duplicates()] == [True]  # no end of the conflict yet
    h2.apply([], 209)
    assert [d.frozen for d in h2.guard.duplicates()] == [True]
    h2.apply([], 210)  # nobody else for a whole window (180 s): over
    assert h2.guard.duplicates() == []
    kinds = [(e.kind, e.why) for e in h2.guard.take_events() if e.kind == "cleared"]
    assert kinds == [("cleared", "operator"), ("cleared", "conflict-ended")]


def test_moves_older_than_the_window_do_not_count() -> None:
    h2 = Host(2, Guard(Limits(moves=3, window_s=50, reassert_after_s=10)))
    h2.apply([], 0)
    now, sequence = 1.0, 1
    for _ in range(6):  # one hijack + re-assertion every 60 s: 2 moves per minute
        hijack = RemoteRoute(100, ADDRESS, peer(1), sequence)
        h2.apply([hijack], now)
        h2.apply([hijack], now + 10)
        sequence += 2
        now += 60
    assert [d.frozen for d in h2.guard.duplicates()] == [False]


def test_an_address_no_longer_local_is_forgotten() -> None:
    h2 = Host(2, Guard(Limits(moves=1, window_s=180, reassert_after_s=10)))
    h2.apply([], 0)
    hijack = RemoteRoute(100, ADDRESS, peer(1), 5)
    h2.apply([hijack], 1)
    h2.apply([hijack], 11)
    h2.config = config(2, holds=False)
    h2.guard.take_events()
    mobility.resolve(h2.config, DirectoryView(frozenset(), frozenset({hijack})), h2.guard, 12)
    assert h2.guard.duplicates() == []
    assert [(e.kind, e.why) for e in h2.guard.take_events()] == [("cleared", "not-local")]


def test_the_limits_are_configurable_and_checked() -> None:
    base = config(2).model_dump(mode="json")
    directory = {"duplicate_moves": 3, "duplicate_window_s": 60, "reassert_after_s": 5}
    tuned = Config.model_validate(base | {"directory": directory}).directory
    assert (tuned.duplicate_moves, tuned.duplicate_window_s, tuned.reassert_after_s) == (3, 60, 5)
    with pytest.raises(ValidationError, match=r"duplicate_moves\n  Value error, is out of range"):
        Config.model_validate(base | {"directory": {"duplicate_moves": 0}})
    slow = Config.model_validate(base | {"directory": {"reassert_after_s": 180}})
    ours = [p for p in crosscheck.problems(slow) if p[0][0] == "directory"]
    assert ours == [
        (("directory", "reassert_after_s"), 180, "is not below directory.duplicate_window_s = 180")
    ]
    assert [p for p in crosscheck.problems(config(2)) if p[0][0] == "directory"] == []
