"""What a directory source publishes (moved here from agent/source.py so that the BGP source in
directory/ does not import the agent): whole views, whether the source is in sync, its sessions
and the routes it refused."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from routed_nv.model.directory import DirectoryView
from routed_nv.model.directory_delta import DirectoryDelta


@dataclass(frozen=True)
class PeerStatus:
    """One directory session (a BGP neighbour), as `birdc show protocols` shows it."""

    name: str
    address: str
    state: str  # "up", "down", "start", ...
    since: str = ""
    info: str = ""  # BGP: Established, Active, ...

    @property
    def up(self) -> bool:
        return self.state == "up"


class RejectedRoute(Protocol):
    """A route the source refused (directory.learn.Rejection fits): a bounded reason for
    metrics labels, and a sentence (str()) for people."""

    @property
    def reason(self) -> str: ...


@dataclass(frozen=True)
class SourceUpdate:
    view: DirectoryView
    in_sync: bool
    peers: tuple[PeerStatus, ...] = ()
    rejected: tuple[RejectedRoute, ...] = ()
    detail: str = ""  # one line on the source's state, for status ("2 of 2 sessions up")
    # how `view` differs from the view of the update published before (None: not known, the
    # whole view is new): lets the agent apply only what changed
    delta: DirectoryDelta | None = field(default=None, compare=False)


Publish = Callable[[SourceUpdate], None]
# The agent's event log (agent.events.EventLog fits): a dotted event name and key=value fields.
Log = Callable[..., None]
