"""`routed-nv bench --quick` on a real kernel: every variant produces figures, MTUs are exactly
the arithmetic's and verified on the wire, and routed_nv floods nothing across hosts."""

from __future__ import annotations

import pytest

from routed_nv.bench import overhead
from routed_nv.bench.results import Report, Variant, VariantResult
from routed_nv.bench.run import QUICK, run

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def report() -> Report:
    return run(QUICK, lambda line: print(line))


def _variant(report: Report, variant: Variant) -> VariantResult:
    return next(v for v in report.variants if v.variant is variant)


def test_every_variant_moves_data(report: Report) -> None:
    assert [v.variant for v in report.variants] == list(Variant)
    for v in report.variants:
        assert sorted(t.streams for t in v.throughput) == [1, 4]
        assert all(t.gbps > 0 for t in v.throughput), v.variant
        assert v.latency is not None and 0 < v.latency.p50_us <= v.latency.p99_us


def test_mtu_is_exactly_the_arithmetic_and_holds_on_the_wire(report: Report) -> None:
    for v in report.variants:
        assert v.mtu is not None
        assert v.mtu.computed == overhead.workload_mtu(v.variant)
        assert v.mtu.overhead == overhead.overhead(v.variant)
        assert v.mtu.fits and v.mtu.next_fails, v.variant


def test_routed_nv_floods_nothing_across_hosts_and_bridges_do(report: Report) -> None:
    assert [s.hosts for s in _variant(report, Variant.ROUTED).scale] == list(QUICK.hosts)
    for s in _variant(report, Variant.ROUTED).scale:
        assert (s.flood.resolve, s.flood.unknown, s.flood.boot) == (0, 0, 0)
    for variant in (Variant.VXLAN, Variant.VXLAN_IPSEC):
        for s in _variant(report, variant).scale:
            assert s.flood.resolve > 0 and s.flood.unknown > 0 and s.flood.boot > 0, variant


def test_measured_state_matches_the_formulas(report: Report) -> None:
    for v in report.variants:
        for s in v.scale:
            measured, formula = s.state, s.formula
            assert (measured.routes, measured.sas, measured.policies) == (
                formula.routes,
                formula.sas,
                formula.policies,
            ), (v.variant, s.hosts)
            # Learned entries come and go with traffic (and remote bridges' own MACs leak in,
            # see docs/benchmarks.md): the flood list and workload MACs are a lower bound.
            assert measured.fdb >= formula.fdb, (v.variant, s.hosts)


def test_routed_nv_and_bridged_moves_converge(report: Report) -> None:
    for variant in (Variant.ROUTED, Variant.VXLAN):
        moved = _variant(report, variant).convergence
        assert moved is not None and moved.seconds is not None and moved.seconds > 0


def test_environment_names_the_crypto(report: Report) -> None:
    assert report.environment.crypto["rfc4106(gcm(aes))"]
    assert report.environment.kernel
