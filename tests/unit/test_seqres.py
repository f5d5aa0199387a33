"""Outbound sequence reservations: the arithmetic (esp/seqres.py)."""

from __future__ import annotations

from routed_nv.esp.seqres import FLOOR, SEQ_LIMIT, Sample, extend, headroom, rate


def test_rate_between_two_readings() -> None:
    assert rate(Sample(1000, 10.0), Sample(4000, 40.0)) == 100.0
    # no earlier reading, no time passed, or a counter that went back (a re-created SA)
    assert rate(None, Sample(4000, 40.0)) == 0.0
    assert rate(Sample(1000, 40.0), Sample(4000, 40.0)) == 0.0
    assert rate(Sample(5000, 10.0), Sample(4000, 40.0)) == 0.0


def test_headroom_covers_twice_the_rate_over_the_interval_with_a_floor() -> None:
    assert headroom(0.0, 30) == FLOOR
    assert headroom(100.0, 30) == FLOOR
    assert headroom(1_000_000.0, 30) == 60_000_000


def test_a_new_sa_reserves_ahead_of_its_start() -> None:
    assert extend(0, 0, 0.0, 30).reserved == 2 * FLOOR
    # the start is the reservation held: whatever the old SA sent was below it
    assert extend(5 * FLOOR, 5 * FLOOR, 0.0, 30).reserved == 7 * FLOOR


def test_no_write_while_the_reservation_covers_the_next_interval() -> None:
    assert extend(2 * FLOOR, FLOOR - 1, 0.0, 30).reserved == 2 * FLOOR
    assert extend(2 * FLOOR, FLOOR + 1, 0.0, 30).reserved == FLOOR + 1 + 2 * FLOOR


def test_a_fast_sender_gets_a_reservation_sized_by_its_rate() -> None:
    pps, held, oseq = 1_000_000.0, 2 * FLOOR, FLOOR
    reserved = extend(held, oseq, pps, 30).reserved
    assert reserved == oseq + 2 * 60_000_000
    # at that rate, the next check (one interval later) still finds the counter below it
    assert oseq + pps * 30 < reserved


def test_never_lower_than_held() -> None:
    for oseq in (0, 10, FLOOR, 3 * FLOOR):
        assert extend(10 * FLOOR, oseq, 0.0, 30).reserved >= 10 * FLOOR
    # a counter above the reservation (an SA from before reservations existed) is overtaken
    assert extend(0, 9 * FLOOR, 0.0, 30).reserved == 11 * FLOOR


def test_exhaustion_is_capped_and_reported() -> None:
    near = SEQ_LIMIT - FLOOR // 2
    result = extend(near, near - 10, 0.0, 30)
    assert result.reserved == SEQ_LIMIT
    assert result.problem is not None and "rotate the tenant's static key" in result.problem
    assert extend(2 * FLOOR, FLOOR, 0.0, 30).problem is None
    # a fast SA is reported while there is still a whole interval of room left at its rate
    assert extend(0, SEQ_LIMIT - 50_000_000, 1_000_000.0, 30).problem is not None
