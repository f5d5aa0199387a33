"""Who keeps an address that two hosts both hold: re-assertion and duplicate detection (pure).

calc/mobility.py alone trusts the newest sequence: any host announcing one of this host's
addresses with a higher sequence takes it, silently, although the endpoint is still attached
here (issue 14: a hijack black-holed blue2). This is RFC 7432 §15's answer, per local address,
on top of mobility.decide:
- *Re-assert.* A local address that lost to another host goes stale as before (so that a real,
  make-before-break move works: add on B, then del on A); if the endpoint is still configured
  here `reassert_after_s` later, the loss was no move: this host announces it again with one
  more than the winner's sequence. A live migration deletes the old endpoint well within that.
- *Duplicate detection.* Every change of the address's location (this host <-> another host,
  or between others) is a move; more than `duplicate_moves` within `duplicate_window_s` freezes
  it. Frozen, it stays at the location where it was before the flapping began, which is attached
  there: the host that held it then (the incumbent) takes it back at once whenever it loses it,
  any other host holding it stops re-asserting and stays stale. Both hosts see the same moves,
  so they agree on who the incumbent is without talking to each other.
- The freeze lasts until the conflict ends (no other host has announced the address for a whole
  window: a host that went stale withdraws between rounds, so "not announced right now" is no
  end; or it is no longer local here) or an operator clears it (`routed-nv directory
  clear-duplicate`).
The clock is passed in (`now`, monotonic seconds), so every rule is unit-tested without waiting.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field

from routed_nv.model.directory import Claim, IPNetwork, RemoteRoute
from routed_nv.model.mobility import MAX_SEQUENCE

Where = tuple[int, IPNetwork]
SELF = "self"  # the location "this host"; other locations are host addresses as text


@dataclass(frozen=True)
class Limits:
    moves: int = 5  # more location changes than this within `window_s` freeze an address
    window_s: float = 180.0
    reassert_after_s: float = 30.0  # a still-attached lost address is announced again then


@dataclass(frozen=True)
class Duplicate:
    """A local address another host announces too, which has come back here at least once
    (a move that was no move) or is frozen."""

    tenant_id: int
    prefix: IPNetwork
    other: str  # the other host's name (config.peers) or its /64
    other_address: str
    moves: int  # within the window
    frozen: bool
    holder: str  # SELF or the other host's address: where the address is now


@dataclass(frozen=True)
class Event:
    """Something the agent logs: `duplicate` (frozen), `cleared` (by the operator or because the
    conflict ended), `reassert` (a lost, still attached address announced again)."""

    kind: str
    tenant_id: int
    prefix: IPNetwork
    other: str = ""
    moves: int = 0
    sequence: int = 0
    why: str = ""


@dataclass
class _Record:
    holder: str  # where the address was at the last judgement
    moves: deque[float] = field(default_factory=deque)
    incumbent: bool = False  # this host held it when the current run of moves began
    frozen: bool = False
    lost_at: float | None = None  # when this host's claim went stale
    rival: RemoteRoute | None = None  # the other host's last announcement
    rival_seen: float = 0.0


class Guard:
    """Per-address memory across applies (the loop thread owns it). Not in the kernel: a
    restarted agent starts with no moves counted, which at worst delays a freeze."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._records: dict[Where, _Record] = {}
        self.events: list[Event] = []  # taken and logged by the agent after each pass

    def judge(
        self,
        where: Where,
        current: Claim | None,
        claim: Claim,
        best: RemoteRoute | None,
        now: float,
    ) -> Claim:
        """This host's claim on a local address, after re-assertion and freezing: `current` is
        its announcement in the kernel (None: none yet), `claim` mobility.decide's, `best` the
        best other host's announcement (None: none)."""
        record = self._records.get(where)
        if record is None:
            if best is None:
                return claim  # never contested: nothing to remember
            # first seen contested: held here before, unless this host is only taking it now
            held = current is not None and not current.stale
            record = self._records[where] = _Record(SELF if held else str(best.peer.address))
        if best is not None:
            record.rival, record.rival_seen = best, now
        elif now >= record.rival_seen + self.limits.window_s:  # nobody else for a whole window
            del self._records[where]
            if record.frozen:
                self.events.append(
                    Event("cleared", *where, _name(record.rival), why="conflict-ended")
                )
            return claim
        # stale only while another host announces it (mobility.decide), so best is set then
        holder = str(best.peer.address) if claim.stale and best is not None else SELF
        self._move(where, record, holder, now)
        if not claim.stale or best is None:
            record.lost_at = None
            return claim
        if record.lost_at is None:
            record.lost_at = now
        if record.frozen and not record.incumbent:
            return claim  # frozen elsewhere: stay stale
        if not record.frozen and now < record.lost_at + self.limits.reassert_after_s:
            return claim
        sequence = min(best.sequence + 1, MAX_SEQUENCE)
        self.events.append(Event("reassert", *where, _name(best), sequence=sequence))
        record.lost_at = None
        self._move(where, record, SELF, now)
        return Claim(claim.tenant_id, claim.prefix, sequence)

    def _move(self, where: Where, record: _Record, holder: str, now: float) -> None:
        moves = record.moves
        while moves and moves[0] <= now - self.limits.window_s:
            moves.popleft()
        if holder == record.holder:
            return
        if not moves:  # a new run of moves: whoever held it before it is the incumbent
            record.incumbent = record.holder == SELF
        moves.append(now)
        record.holder = holder
        if len(moves) > self.limits.moves and not record.frozen:
            record.frozen = True
            self.events.append(Event("duplicate", *where, _name(record.rival), moves=len(moves)))

    def due(self) -> float | None:
        """When a re-assertion falls due (monotonic seconds), for the agent's timer."""
        times = [
            r.lost_at + self.limits.reassert_after_s
            for r in self._records.values()
            if r.lost_at is not None and not r.frozen
        ]
        return min(times, default=None)

    def keep_only(self, local: set[Where]) -> None:
        """Forget addresses that are no longer local (deleted or moved away for good)."""
        for where in set(self._records) - local:
            record = self._records.pop(where)
            if record.frozen:
                self.events.append(Event("cleared", *where, _name(record.rival), why="not-local"))

    def clear(self, where: Where) -> bool:
        """The operator's clear: counting starts again, a stale claim re-asserts after the usual
        delay. False if the address is not known as a duplicate."""
        record = self._records.get(where)
        if record is None or not (record.frozen or len(record.moves) > 1):
            return False
        self._records[where] = _Record(
            record.holder, rival=record.rival, rival_seen=record.rival_seen
        )
        self.events.append(Event("cleared", *where, _name(record.rival), why="operator"))
        return True

    def duplicates(self) -> list[Duplicate]:
        rows = []
        for (tid, prefix), r in sorted(self._records.items(), key=lambda x: _order(x[0])):
            if r.rival is not None and (r.frozen or len(r.moves) > 1):
                peer = r.rival.peer
                n = len(r.moves)
                rows.append(
                    Duplicate(tid, prefix, peer.name, str(peer.address), n, r.frozen, r.holder)
                )
        return rows

    def take_events(self) -> list[Event]:
        events, self.events = self.events, []
        return events


def _name(route: RemoteRoute | None) -> str:
    return route.peer.name if route is not None else ""


def _order(where: Where) -> tuple[int, int, int]:
    tid, prefix = where
    return (tid, prefix.version, int(prefix.network_address))


def parse_address(text: str) -> IPNetwork:
    """An address as the CLI gives it, as the /32 or /128 the guard knows it by."""
    return ipaddress.ip_network(ipaddress.ip_address(text))
