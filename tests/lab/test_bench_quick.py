"""`routed-nv bench --quick` on a real kernel: every variant produces figures, MTUs are exactly
the arithmetic's and verified on the wire, routed_nv floods nothing across hosts while the
bridged variants' crossings are exactly frames x copies, state matches the formulas, every
move converges, every protection mode's SAs use its own algorithm, and 1 vs 4 tenants both
carry traffic."""

from __future__ import annotations

import pytest

from routed_nv.bench import overhead
from routed_nv.bench.results import (
    PROTECTION,
    EventFlood,
    Report,
    Scale,
    Variant,
    VariantResult,
)
from routed_nv.bench.run import MODES, QUICK, SETUPS, run
from routed_nv.model.protection import SUITES, suite

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def report() -> Report:
    return run(QUICK, lambda line: print(line))


def _variant(report: Report, variant: Variant) -> VariantResult:
    return next(v for v in report.variants if v.variant is variant)


EVENTS = ("resolve", "unknown", "boot")


def _event(s: Scale, event: str) -> EventFlood:
    return getattr(s.flood, event)  # type: ignore[no-any-return]


def test_every_variant_moves_data(report: Report) -> None:
    assert [v.variant for v in report.variants] == list(Variant)
    for v in report.variants:
        streams = [1, 4] if v.variant in SETUPS else list(QUICK.mode_streams)
        assert sorted(t.streams for t in v.throughput) == streams, v.variant
        assert all(t.gbps > 0 for t in v.throughput), v.variant
        assert v.latency is not None and 0 < v.latency.p50_us <= v.latency.p99_us


def test_mtu_is_exactly_the_arithmetic_and_holds_on_the_wire(report: Report) -> None:
    for v in report.variants:
        assert v.mtu is not None
        assert v.mtu.computed == overhead.workload_mtu(v.variant)
        assert v.mtu.overhead == overhead.overhead(v.variant)
        assert v.mtu.fits and v.mtu.next_fails, v.variant


def test_routed_nv_puts_nothing_on_the_underlay_for_any_event(report: Report) -> None:
    assert [s.hosts for s in _variant(report, Variant.ROUTED).scale] == list(QUICK.hosts)
    for s in _variant(report, Variant.ROUTED).scale:
        for event in EVENTS:
            assert _event(s, event).frames == [] and _event(s, event).background == [], event


def _frames(s: Scale, event: str) -> dict[str, tuple[int, int]]:
    return {f.kind: (f.frames, f.copies) for f in _event(s, event).frames}


@pytest.mark.parametrize("variant", [Variant.VXLAN, Variant.VXLAN_IPSEC])
def test_bridged_crossings_are_frames_times_copies(report: Report, variant: Variant) -> None:
    """Head-end replication: every broadcast/multicast frame reaches the other N-1 hosts,
    every reply to a learned MAC crosses once; the probes are one per request."""
    scale = _variant(report, variant).scale
    for s in scale:
        flooded = s.hosts - 1
        assert _frames(s, "resolve") == {
            "ARP request": (1, flooded),
            "ARP reply": (1, 1),
            "NS": (1, flooded),
            "NA": (1, 1),
        }, s.hosts
        assert _event(s, "resolve").crossings == 2 * s.hosts
        assert _frames(s, "unknown") == {"ARP request": (1, flooded), "NS": (1, flooded)}
        boot = _frames(s, "boot")
        assert boot["gratuitous ARP"] == (1, flooded) and boot["DAD NS"][0] >= 2, boot
        assert all(copies == flooded for _, copies in boot.values()), boot
    for event in EVENTS:
        counts = [_event(s, event).crossings for s in scale]
        assert counts == sorted(set(counts)), (event, counts)  # grows with hosts


def test_measured_state_matches_the_formulas(report: Report) -> None:
    for v in report.variants:
        for s in v.scale:
            assert s.state == s.formula, (v.variant, s.hosts)


def test_every_move_converges(report: Report) -> None:
    for v in report.variants:
        if v.variant is Variant.UNDERLAY or v.variant in MODES:
            continue
        moved = v.convergence
        assert moved is not None and moved.seconds is not None and moved.seconds > 0, v.variant
        assert moved.datapath_seconds is not None and moved.path_seconds <= moved.move_seconds


def test_every_protection_mode_runs_its_own_algorithm(report: Report) -> None:
    """The kernel's SAs on host1 carry the mode's algorithm (and only that one)."""
    for v in report.variants:
        protection = PROTECTION[v.variant]
        if protection is None:
            assert v.esp == [], v.variant
            continue
        mode = suite(protection)
        assert v.esp == [f"{'aead' if mode.aead else 'enc'} {mode.algorithm}"], v.variant


def test_environment_names_the_crypto(report: Report) -> None:
    for mode in SUITES.values():  # every algorithm the run used has a kernel driver named
        assert report.environment.crypto[mode.algorithm], mode.algorithm
    assert report.environment.kernel


def test_one_tenant_and_four_tenants_both_carry_traffic(report: Report) -> None:
    one, four = report.tenants
    assert (one.tenants, one.streams, four.tenants, four.streams) == (1, 4, 4, 4)
    for row in (one, four):
        assert len(row.per_stream_gbps) == row.tenants and all(g > 0 for g in row.per_stream_gbps)
        assert row.gbps > 0 and len(row.cpu_busy) == report.environment.cpus
