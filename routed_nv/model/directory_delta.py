"""What changed between two directory views: the unit a directory event costs.

A delta is four pairs of sets (added, removed) over a DirectoryView's remote routes, contested
routes and published claims, plus the (tenant, peer host) pairs that appeared or went (a tenant
gained or lost its last route via a host: its SAs and IKE connections change). Within a pair the
sets are disjoint: a route that moved is its old location removed and its new one added.
`then` composes two deltas in order, so a burst of events coalesces into the net change.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypeVar

from routed_nv.model.directory import Claim, DirectoryView, PeerHost, RemoteRoute

T = TypeVar("T")
TenantPeer = tuple[int, PeerHost]


@dataclass(frozen=True)
class DirectoryDelta:
    remote_added: frozenset[RemoteRoute] = frozenset()
    remote_removed: frozenset[RemoteRoute] = frozenset()
    contested_added: frozenset[RemoteRoute] = frozenset()
    contested_removed: frozenset[RemoteRoute] = frozenset()
    published_added: frozenset[Claim] = frozenset()
    published_removed: frozenset[Claim] = frozenset()
    peers: frozenset[TenantPeer] = frozenset()  # appeared or gone

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in dataclasses.fields(self))

    @property
    def remote_only(self) -> bool:
        """Only other hosts' addresses changed: no local address's mobility decision moves."""
        return not (
            self.contested_added
            or self.contested_removed
            or self.published_added
            or self.published_removed
        )

    def apply(self, view: DirectoryView) -> DirectoryView:
        """`view` with this delta applied (claims are the agent's decision: kept)."""
        return DirectoryView(
            (view.remote_routes - self.remote_removed) | self.remote_added,
            (view.contested - self.contested_removed) | self.contested_added,
            (view.published - self.published_removed) | self.published_added,
            view.claims,
        )

    def then(self, later: DirectoryDelta) -> DirectoryDelta:
        """This delta followed by `later`, as one."""
        remote = _compose(self.remote_added, self.remote_removed, later.remote_added,
                          later.remote_removed)  # fmt: skip
        contested = _compose(self.contested_added, self.contested_removed,
                             later.contested_added, later.contested_removed)  # fmt: skip
        published = _compose(self.published_added, self.published_removed,
                             later.published_added, later.published_removed)  # fmt: skip
        return DirectoryDelta(*remote, *contested, *published, self.peers ^ later.peers)


def _compose(
    added: frozenset[T], removed: frozenset[T], then_added: frozenset[T], then_removed: frozenset[T]
) -> tuple[frozenset[T], frozenset[T]]:
    # removed first and added back (or the reverse) is no change at all
    return (added - then_removed) | (then_added - removed), (removed - then_added) | (
        then_removed - added
    )


class Marks(dict[T, bool]):
    """Net change of one set over a batch of single-item changes, O(1) each: an item maps to
    whether it was in the set before the batch; an item back where it started is dropped."""

    def change(self, item: T, present: bool) -> None:
        was = self.get(item)
        if was is None:
            self[item] = not present
        elif was == present:
            del self[item]

    def net(self) -> tuple[frozenset[T], frozenset[T]]:
        """(added, removed)."""
        return (
            frozenset(i for i, was in self.items() if not was),
            frozenset(i for i, was in self.items() if was),
        )
