"""The Prometheus exposition: names, units, labels and values from the agent's snapshot."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_agent_loop import Harness, lose_to_host3, route, view

from routed_nv.agent.metrics import Metrics, parse_address, parse_xfrm_stat
from routed_nv.model.directory_source import PeerStatus

XFRM_STAT = """XfrmInError             \t0
XfrmInTmplMismatch      \t7
XfrmOutPolBlock         \t2
"""


class Rejection:
    def __init__(self, reason: str) -> None:
        self.reason = reason


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def metrics() -> tuple[Harness, Metrics]:
    h = Harness()
    m = Metrics(h.agent.snapshot, lambda: parse_xfrm_stat(XFRM_STAT))
    h.agent.on_apply.append(m.observe)
    h.publish(
        view(route("10.0.0.2"), route("fd10::2")),
        peers=(
            PeerStatus("rr1", "2001:db8:ff::1", "up"),
            PeerStatus("rr2", "2001:db8:ff::2", "start"),
        ),
        rejected=(Rejection("bad-next-hop"), Rejection("bad-next-hop")),
    )
    h.settle()
    return h, m


def test_gauges_counters_and_histogram_follow_the_agent(metrics: tuple[Harness, Metrics]) -> None:
    _, m = metrics
    got = scrape(m)
    assert got[("routed_nv_endpoints", (("location", "local"),))] == 1
    assert got[("routed_nv_endpoints", (("location", "remote"),))] == 2
    assert got[("routed_nv_sas", ())] == 1
    assert got[("routed_nv_stale_addresses", ())] == 0
    assert got[("routed_nv_tenants", ())] == 1
    assert got[("routed_nv_routes", ())] > 2
    assert got[("routed_nv_bgp_peers_up", ())] == 1
    assert got[("routed_nv_directory_in_sync", ())] == 1
    assert got[("routed_nv_ready", ())] == 1
    assert got[("routed_nv_reconcile_total", ())] == 1
    assert got[("routed_nv_reconcile_errors_total", ())] == 0
    assert got[("routed_nv_config_reload_errors_total", ())] == 0
    assert got[("routed_nv_rejected_routes_total", (("reason", "bad-next-hop"),))] == 2
    assert got[("routed_nv_reconcile_duration_seconds_count", ())] == 1
    assert got[("routed_nv_xfrm_errors_total", (("counter", "XfrmInTmplMismatch"),))] == 7
    assert ("routed_nv_last_success_timestamp_seconds", ()) in got
    (build,) = [k for k in got if k[0] == "routed_nv_build_info"]
    assert dict(build[1])["version"]


def test_stale_addresses_are_counted() -> None:
    h = Harness()
    lose_to_host3(h)
    m = Metrics(h.agent.snapshot, dict)
    assert scrape(m)[("routed_nv_stale_addresses", ())] == 1


def test_no_metric_has_a_per_endpoint_label(metrics: tuple[Harness, Metrics]) -> None:
    _, m = metrics
    labels = {name for _, items in scrape(m) for name, _ in items}
    assert labels <= {"location", "reason", "counter", "version", "python", "le", "state"}


def test_failed_applies_and_refused_reloads_are_counted(metrics: tuple[Harness, Metrics]) -> None:
    h, m = metrics
    h.datapath.errors = ["boom"]
    h.publish(view())
    h.clock.now += 1
    h.settle()
    h.next_config = h.config.model_copy(
        update={"host": h.config.host.model_copy(update={"underlay_prefix": "2001:db8:9::/64"})}
    )
    h.agent.request_reload()
    h.settle()
    got = scrape(m)
    assert got[("routed_nv_reconcile_errors_total", ())] == 1
    assert got[("routed_nv_config_reload_errors_total", ())] == 1
    assert got[("routed_nv_ready", ())] == 0


def test_served_over_http_on_the_given_address(metrics: tuple[Harness, Metrics]) -> None:
    _, m = metrics
    with socket.socket() as probe:  # a port that is free right now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    m.serve(f"127.0.0.1:{port}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            body = reply.read().decode()
    finally:
        m.close()
    assert "routed_nv_reconcile_total 1.0" in body


def test_xfrm_stat_and_address_parsing() -> None:
    assert parse_xfrm_stat(XFRM_STAT) == {
        "XfrmInError": 0,
        "XfrmInTmplMismatch": 7,
        "XfrmOutPolBlock": 2,
    }
    assert parse_address("127.0.0.1:9573") == ("127.0.0.1", 9573)
    assert parse_address("[::1]:9573") == ("::1", 9573)
    for bad in ("9573", "localhost", ":9573", "[::1]:0", "host:99999"):
        with pytest.raises(ValueError):
            parse_address(bad)
