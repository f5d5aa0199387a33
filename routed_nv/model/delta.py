"""Desired-versus-actual bookkeeping shared by every driver (after Calico Felix's DeltaTracker).

A driver states what it wants (`desired`), reads back what the kernel has (`actual`, filtered to
the objects it owns) and asks for the delta. The delta is the minimal change: objects to add or
replace, and objects to delete. Drivers apply it object by object so one failure stays local.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class Delta(Generic[K, V]):
    upserts: dict[K, V] = field(default_factory=dict)  # missing, or present with other values
    deletes: dict[K, V] = field(default_factory=dict)  # ours in the kernel, no longer desired

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes)

    def __len__(self) -> int:
        return len(self.upserts) + len(self.deletes)


def delta(desired: Mapping[K, V], actual: Mapping[K, V]) -> Delta[K, V]:
    upserts = {k: v for k, v in desired.items() if actual.get(k, _MISSING) != v}
    deletes = {k: v for k, v in actual.items() if k not in desired}
    return Delta(upserts=upserts, deletes=deletes)


_MISSING = object()
