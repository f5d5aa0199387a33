"""What every driver plans and what its apply did, in one shape.

A driver (routing, XFRM, IKE, netfilter) has two calls:
- `plan(desired) -> Plan`: reads the kernel (or charon) once and says which changes it would
  make, as the driver's own objects; it changes nothing.
- `apply(plan) -> Result`: makes those changes without reading again to plan; the result lists
  the changes the kernel took and every problem, each with the object it concerns.
A problem is transient (trying again later may succeed: the agent retries it with backoff) or
permanent (someone must change something first: the agent reports it once and does not retry).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from routed_nv.errors import RoutedNvError


class Change(Protocol):
    """One planned change as the driver describes it for humans (`apply --dry-run`)."""

    def lines(self) -> list[str]: ...


C = TypeVar("C", bound=Change)


@dataclass(frozen=True)
class Problem:
    message: str  # one line naming what failed
    transient: bool
    obj: object = None  # the object it concerns; None: the stage as a whole (a read, the input)

    def __str__(self) -> str:
        return self.message


def problem_of(exc: Exception, obj: object = None, message: str | None = None) -> Problem:
    """An error as a problem of its kind. Errors not (yet) based on RoutedNvError count as
    transient: they are retried, as every failure was before kinds existed."""
    transient = exc.transient if isinstance(exc, RoutedNvError) else True
    return Problem(str(exc) if message is None else message, transient, obj)


def permanent(messages: Iterable[str]) -> list[Problem]:
    """Problems of the input (a bad config value, a missing key file): retrying cannot fix them."""
    return [Problem(m, transient=False) for m in messages]


@dataclass(frozen=True)
class Plan(Generic[C]):
    changes: tuple[C, ...] = ()
    # what could not be planned (an unreadable table, a bad input): left as it is
    problems: tuple[Problem, ...] = ()
    # left alone this time because it is mid-change (IKE exchanges in flight): not settled
    pending: tuple[str, ...] = ()

    @property
    def errors(self) -> list[str]:
        return [p.message for p in self.problems]

    def lines(self) -> list[str]:
        return [line for change in self.changes for line in change.lines()]

    def __bool__(self) -> bool:
        return bool(self.changes)


@dataclass
class Result(Generic[C]):
    done: list[C] = field(default_factory=list)  # the changes the kernel took, in order
    problems: list[Problem] = field(default_factory=list)  # the plan's, then the apply's
    pending: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def errors(self) -> list[str]:
        return [p.message for p in self.problems]

    def lines(self) -> list[str]:
        return [line for change in self.done for line in change.lines()]
