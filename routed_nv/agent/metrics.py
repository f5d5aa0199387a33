"""Prometheus metrics of the agent, served on a localhost port (default 127.0.0.1:9573).

Conventions: `routed_nv_` prefix, base units, `_total` counters, a `_build_info`, and no
per-endpoint or per-tenant labels (their number is unbounded). Gauges and counters are read from
the agent's Snapshot at scrape time, so they cannot disagree with `routed-nv status`; only the
reconcile-duration histogram is fed as applies finish. The kernel's XFRM error counters come
from /proc/net/xfrm_stat of the host's network namespace, one series per counter name.
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from routed_nv import __version__
from routed_nv.agent.snapshot import ApplyRecord, Snapshot
from routed_nv.config.types import parse_listen_address
from routed_nv.netns import NetnsError, run_in_netns

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

# thread-self, not self: the namespace is the calling thread's (run_in_netns enters it per read)
XFRM_STAT = Path("/proc/thread-self/net/xfrm_stat")
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def parse_xfrm_stat(text: str) -> dict[str, int]:
    """`XfrmInTmplMismatch   3` lines -> {"XfrmInTmplMismatch": 3}."""
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name and value.strip().isdigit():
            found[name] = int(value)
    return found


def xfrm_stat_reader(netns: str | None) -> Callable[[], dict[str, int]]:
    def read() -> dict[str, int]:
        try:
            return parse_xfrm_stat(run_in_netns(netns, XFRM_STAT.read_text))
        except (OSError, NetnsError):  # no XFRM statistics in this kernel, or no such netns
            return {}

    return read


class AgentCollector(Collector):
    def __init__(
        self, snapshot: Callable[[], Snapshot], xfrm_stat: Callable[[], dict[str, int]]
    ) -> None:
        self._snapshot = snapshot
        self._xfrm_stat = xfrm_stat

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        c = snap.counts
        info = GaugeMetricFamily(
            "routed_nv_build_info", "routed_nv version", labels=["version", "python"]
        )
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        yield _gauge("routed_nv_tenants", "Tenants configured on this host", c.tenants)
        endpoints = GaugeMetricFamily(
            "routed_nv_endpoints",
            "Endpoints: local workloads, and remote endpoint addresses from the directory",
            labels=["location"],
        )
        endpoints.add_metric(["local"], c.local_endpoints)
        endpoints.add_metric(["remote"], c.remote_addresses)
        yield endpoints
        yield _gauge("routed_nv_routes", "Routes routed_nv wants in the kernel", c.routes)
        yield _gauge("routed_nv_sas", "ESP SAs of routed_nv's tenants in the kernel", c.sas)
        yield _gauge(
            "routed_nv_stale_addresses",
            "Local endpoint addresses another host announced later (no longer announced here)",
            c.stale_addresses,
        )
        duplicates = GaugeMetricFamily(
            "routed_nv_duplicate_addresses",
            "Local endpoint addresses another host announces too: frozen (moved more than "
            "directory.duplicate_moves times within the window) or contested",
            labels=["state"],
        )
        frozen = sum(d.frozen for d in snap.duplicates)
        duplicates.add_metric(["frozen"], frozen)
        duplicates.add_metric(["contested"], len(snap.duplicates) - frozen)
        yield duplicates
        yield _gauge(
            "routed_nv_bgp_peers_up",
            "Directory sessions established (0 with the static source)",
            sum(p.up for p in snap.source.peers),
        )
        yield _gauge(
            "routed_nv_directory_in_sync",
            "1 when the directory source has told all it knows",
            int(snap.source.in_sync),
        )
        yield _gauge(
            "routed_nv_ready",
            "1 once an apply succeeded and the last one did too",
            int(snap.state == "ready"),
        )
        if snap.last_ok is not None:
            yield _gauge(
                "routed_nv_last_success_timestamp_seconds",
                "When the last apply without errors started",
                snap.last_ok,
            )
        yield _counter("routed_nv_reconcile", "Applies run", snap.reconciles)
        yield _counter(
            "routed_nv_reconcile_errors", "Applies with failed objects", snap.reconcile_errors
        )
        yield _counter(
            "routed_nv_config_reload_errors",
            "Reloads refused for an invalid configuration",
            snap.config_errors,
        )
        rejected = CounterMetricFamily(
            "routed_nv_rejected_routes",
            "Directory routes rejected, counted once when first seen",
            labels=["reason"],
        )
        for reason, n in sorted(snap.rejected_total.items()):
            rejected.add_metric([reason], n)
        yield rejected
        xfrm = CounterMetricFamily(
            "routed_nv_xfrm_errors",
            "The kernel's XFRM error counters (/proc/net/xfrm_stat) in the host namespace",
            labels=["counter"],
        )
        for name, value in sorted(self._xfrm_stat().items()):
            xfrm.add_metric([name], value)
        yield xfrm


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class Metrics:
    """The registry: the collector above plus the duration histogram applies feed."""

    def __init__(
        self, snapshot: Callable[[], Snapshot], xfrm_stat: Callable[[], dict[str, int]]
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(AgentCollector(snapshot, xfrm_stat))
        self._durations = Histogram(
            "routed_nv_reconcile_duration_seconds",
            "How long an apply took",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def observe(self, record: ApplyRecord) -> None:
        self._durations.observe(record.seconds)

    def serve(self, address: str) -> None:
        host, port = parse_address(address)
        self._server, self._thread = start_http_server(port, host, self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def parse_address(address: str) -> tuple[str, int]:
    """ "127.0.0.1:9573" or "[::1]:9573" -> (host, port); ValueError naming the value."""
    try:
        return parse_listen_address(address)
    except ValueError as exc:
        raise ValueError(f"{address!r} {exc}") from None
