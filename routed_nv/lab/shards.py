"""Kernel tests spread over several UML guests (tests/conftest.py).

A UML kernel runs one guest process at a time: one guest keeps one CPU busy, however many the
machine has. Several guests run side by side, each a pytest session over whole modules (a
module's tests share its module-scoped lab and run in written order, in one guest). Modules go
heaviest first to the guest with the least work so far, by the seconds a run measured per module
(tests/lab/guest_seconds.json); a module not listed counts DEFAULT_TEST_S per test. Each guest
runs its modules in collection order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

GUESTS_ENV = "ROUTED_NV_UML_GUESTS"
DEFAULT_TEST_S = 10.0


def guest_count(environ: Mapping[str, str], cpus: int | None) -> int:
    """ROUTED_NV_UML_GUESTS, else one guest per CPU but at most two (each guest needs ~1 GB, and
    the host keeps some CPU for its own side of the tests). Raises ValueError on a bad value."""
    given = environ.get(GUESTS_ENV, "")
    if not given:
        return max(1, min(2, cpus or 1))
    if not given.isdigit() or int(given) < 1:
        raise ValueError(f"{GUESTS_ENV}={given!r}: not a number of guests (1 or more)")
    return int(given)


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def shards(nodeids: Sequence[str], count: int, seconds: Mapping[str, float]) -> list[list[str]]:
    """`nodeids` (in collection order) as at most `count` non-empty lists, whole modules each,
    balanced by `seconds` per module; every list keeps the collection order."""
    modules: dict[str, list[str]] = {}
    for nodeid in nodeids:
        modules.setdefault(module_of(nodeid), []).append(nodeid)
    cost = {m: seconds.get(m, DEFAULT_TEST_S * len(ids)) for m, ids in modules.items()}
    loads = [0.0] * max(1, min(count, len(modules)))
    placed: dict[str, int] = {}
    for module in sorted(modules, key=lambda m: -cost[m]):  # stable: ties keep their order
        guest = loads.index(min(loads))
        placed[module] = guest
        loads[guest] += cost[module]
    return [[n for n in nodeids if placed[module_of(n)] == g] for g in range(len(loads))]


def load_seconds(path: Path) -> dict[str, float]:
    """The per-module seconds file; empty when it is missing or unreadable (only the balance
    suffers)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def measured_seconds(results: Mapping[str, Sequence[Mapping[str, object]]]) -> dict[str, float]:
    """Seconds per module from the guests' reports (every phase of every test)."""
    total: dict[str, float] = {}
    for nodeid, phases in results.items():
        spent = sum(float(p.get("duration") or 0.0) for p in phases)  # type: ignore[arg-type]
        total[module_of(nodeid)] = total.get(module_of(nodeid), 0.0) + spent
    return {m: round(s, 1) for m, s in sorted(total.items())}


def cpus() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
