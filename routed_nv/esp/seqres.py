"""Outbound sequence-number reservations for static-key SAs: the arithmetic, pure.

A static-key SA has the same SPI and key after the host loses its kernel state (a reboot, a wipe);
the peers keep their inbound SA and its anti-replay window. A re-created outbound SA that counted
from 1 again would have its packets dropped as replays until it passed the old counter, which at
a low rate is never. So, as strongSwan's HA plugin does for failover, sequence numbers are
reserved ahead and persisted: the kernel's oseq of an outbound SA always stays below its persisted
reservation, and an SA is created at its reservation (`replay-oseq`), above anything it ever sent.

The reservation is extended when the SA's counter comes within `headroom` of it, to twice the
headroom ahead; the headroom covers twice the observed rate over the check interval (the periodic
resync; a failed apply can wait up to twice as long in backoff), never less than FLOOR.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Our SAs use a 64-packet window, so iproute2 sends the ESN replay attribute, but without the ESN
# flag: sequence numbers are 32 bits and the kernel refuses to send past 0xffffffff.
SEQ_LIMIT = 2**32 - 1
# The least headroom: a creation reserves twice it (2^21), so an SA can be re-created 2,048 times
# before the reservations alone use up its space; it covers 35,000 packets/s over a 30 s resync
# before any rate is known.
FLOOR = 1 << 20
SAFETY = 2


@dataclass(frozen=True)
class Sample:
    """An outbound SA's counter as read from the kernel, and when (monotonic seconds)."""

    oseq: int
    at: float


def rate(before: Sample | None, now: Sample) -> float:
    """Packets per second between two readings; 0 without a usable earlier one (a re-created SA
    counts from a new start)."""
    if before is None or now.at <= before.at or now.oseq < before.oseq:
        return 0.0
    return (now.oseq - before.oseq) / (now.at - before.at)


def headroom(pps: float, interval_s: float) -> int:
    """Sequence numbers an SA may use before its reservation is checked again."""
    return max(FLOOR, math.ceil(pps * interval_s * SAFETY))


@dataclass(frozen=True)
class Reservation:
    """What to hold for one SA: `reserved` (persist it if it grew) and a problem, if any."""

    reserved: int
    problem: str | None = None


def extend(held: int, oseq: int, pps: float, interval_s: float) -> Reservation:
    """The reservation for an SA whose kernel counter is `oseq` (for an SA about to be created:
    its start, the reservation held). Never lower than `held`; capped at SEQ_LIMIT, with a problem
    when the SA cannot run through the next interval without exhausting its sequence space."""
    room = headroom(pps, interval_s)
    reserved = held
    if held - oseq < room:
        reserved = max(held, min(SEQ_LIMIT, oseq + 2 * room))
    problem = None
    if SEQ_LIMIT - oseq < room:
        problem = (
            f"has sent {oseq} of its {SEQ_LIMIT} sequence numbers (about {room} more expected "
            "before the next check): rotate the tenant's static key (a new generation) so a "
            "fresh SA takes over"
        )
    return Reservation(reserved, problem)
