"""Where the agent's view of other hosts comes from: a pluggable directory source.

A source pushes *whole views* (level-triggered) through the `publish` callback it is started
with, from whatever thread it runs, each with its delta from the view it published before when
it knows it (the BGP source); the agent only records the latest update and marks itself dirty,
so bursts of updates coalesce into one apply (and their deltas into one). Each update says
whether the source is in sync (it has told everything it knows: static config at once, BGP once
the route reflectors' End-of-RIB is in and the mirror tables are read). Until then the agent
deletes no remote route (see `keep_known`): a route it was not told about yet is not a route
that is gone.

The static source reads `peers` and `remote_endpoints` from the config. The BGP source (the
mirror-table watch + learn) implements the same protocol; `peers` and `rejected` carry its
sessions and the routes it refused, for `routed-nv status` and the metrics.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from routed_nv.config.model import Config
from routed_nv.config.views import static_view
from routed_nv.model.directory import DirectoryView, RemoteRoute
from routed_nv.model.directory_source import Publish, SourceUpdate


class DirectorySource(Protocol):
    name: str  # "static", "bgp": shown in status and logs

    def start(self, config: Config, publish: Publish) -> None:
        """Begin delivering updates through publish (may call it before returning)."""

    def reload(self, config: Config) -> None:
        """The agent's config changed (SIGHUP): re-validate and publish again."""

    def stop(self) -> None:
        """Stop delivering; leave whatever the source feeds from (BIRD, kernel tables) alone."""


class StaticSource:
    """The config's static peers and remote endpoints: in sync as soon as it is read."""

    name = "static"

    def __init__(self) -> None:
        self._publish: Publish | None = None

    def start(self, config: Config, publish: Publish) -> None:
        self._publish = publish
        self.reload(config)

    def reload(self, config: Config) -> None:
        if self._publish is not None:
            self._publish(SourceUpdate(static_view(config), in_sync=True, detail="from config"))

    def stop(self) -> None:
        self._publish = None


def keep_known(known: DirectoryView, update: DirectoryView) -> DirectoryView:
    """The view to apply while the source is not in sync: everything it says now, plus every
    remote address it has not mentioned yet at its last known location (no deletions; a
    location the source does mention replaces the old one, so an address never has two).
    Other hosts' announcements of local addresses (`contested`) are kept the same way, so that
    a stale local address does not look abandoned; this host's own (`published`) are the
    kernel's, always current."""
    told = {_where(r) for r in (*update.remote_routes, *update.contested)}
    kept = {r for r in known.remote_routes if _where(r) not in told}
    # known.remote_routes may hold a stale address's winner (mobility.resolve put it there)
    kept_contested = {r for r in known.contested if _where(r) not in told}
    return dataclasses.replace(
        update,
        remote_routes=update.remote_routes | kept,
        contested=update.contested | kept_contested,
    )


def _where(route: RemoteRoute) -> tuple[int, object]:
    return (route.tenant_id, route.prefix)
