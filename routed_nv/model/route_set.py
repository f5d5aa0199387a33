"""An immutable set that is cheap to change: the directory view's remote routes.

The BGP source publishes a new view for every batch of route events, and the agent keeps the
view it last applied: with a frozenset, each event copied all 100,000 remote routes (~4 ms) and
two such copies lived at once. A SharedSet is its items split by hash into BUCKETS frozensets;
`changed` copies only the buckets a change touches (and the tuple of bucket references), so two
versions share every other bucket, a change costs O(changed * bucket size), and comparing two
versions of one set compares only the buckets that differ (identical buckets are skipped by
reference).

Anything derived from it by set operators (`|`, `-`, ...) is a plain frozenset: the full-apply
paths that do that are O(routes) anyway.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Set
from typing import Any, TypeVar

T = TypeVar("T", bound=Hashable)
BUCKETS = 1024  # ~100 items a bucket at 100,000: a change copies ~100 references, not 100,000
_EMPTY: frozenset[Any] = frozenset()


class SharedSet(Set[T]):
    __slots__ = ("_buckets", "_len")

    def __init__(self, items: Iterable[T] = ()) -> None:
        grouped: list[set[T]] = [set() for _ in range(BUCKETS)]
        for item in items:
            grouped[hash(item) % BUCKETS].add(item)
        self._buckets = tuple(frozenset(g) if g else _EMPTY for g in grouped)
        self._len = sum(len(b) for b in self._buckets)

    @classmethod
    def _from_iterable(cls, it: Iterable[Any]) -> frozenset[Any]:
        return frozenset(it)

    def changed(self, added: Iterable[T], removed: Iterable[T]) -> SharedSet[T]:
        """This set less `removed`, plus `added` (removed first); self when nothing changes."""
        touched: dict[int, tuple[set[T], set[T]]] = {}
        for item in removed:
            touched.setdefault(hash(item) % BUCKETS, (set(), set()))[1].add(item)
        for item in added:
            touched.setdefault(hash(item) % BUCKETS, (set(), set()))[0].add(item)
        if not touched:
            return self
        buckets = list(self._buckets)
        size = self._len
        for i, (plus, minus) in touched.items():
            old = buckets[i]
            new = (old - minus) | plus
            size += len(new) - len(old)
            buckets[i] = new if new else _EMPTY
        result = SharedSet.__new__(SharedSet)
        result._buckets, result._len = tuple(buckets), size
        return result

    def __contains__(self, item: object) -> bool:
        try:
            return item in self._buckets[hash(item) % BUCKETS]
        except TypeError:  # unhashable: not in a set
            return False

    def __iter__(self) -> Iterator[T]:
        for bucket in self._buckets:
            yield from bucket

    def __len__(self) -> int:
        return self._len

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SharedSet):
            # a bucket shared by both versions compares by reference, in C
            return self._len == other._len and self._buckets == other._buckets
        if isinstance(other, Set):
            return len(self) == len(other) and all(item in self for item in other)
        return NotImplemented

    def __hash__(self) -> int:
        return self._hash()

    def __repr__(self) -> str:
        return f"SharedSet({len(self)} items)"
