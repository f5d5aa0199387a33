"""The report for people: Markdown tables, readable in a terminal and pasteable into docs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from routed_nv.bench import parse
from routed_nv.bench.results import (
    DESCRIPTIONS,
    EventFlood,
    Flood,
    FrameCount,
    Report,
    Throughput,
    Variant,
    VariantResult,
)


def host_cpu_model() -> str:
    return parse.cpu_model(Path("/proc/cpuinfo").read_text())


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _by_streams(result: VariantResult, streams: int) -> Throughput | None:
    return next((t for t in result.throughput if t.streams == streams), None)


NONE = "-"
EVENTS = ("resolve", "unknown", "boot")


def _event(flood: Flood, name: str) -> EventFlood:
    return getattr(flood, name)  # type: ignore[no-any-return]


def _frames(counts: Sequence[FrameCount]) -> str:
    return ", ".join(f"{f.kind} {f.frames}x{f.copies}" for f in counts) or NONE


def _cell(value: float | None, floor: float | None, digits: int) -> str:
    """A figure with its ratio to the plain underlay's."""
    if value is None:
        return NONE
    ratio = f" ({value / floor:.2f}x)" if floor else ""
    return f"{value:.{digits}f}{ratio}"


def performance_rows(report: Report) -> list[list[object]]:
    base = next(v for v in report.variants if v.variant is Variant.UNDERLAY)
    rows: list[list[object]] = []
    for v in report.variants:
        row: list[object] = [v.variant]
        for streams in (1, 4):
            t, b = _by_streams(v, streams), _by_streams(base, streams)
            row.append(_cell(t and t.gbps, b and b.gbps, 3))
        t1, b1 = _by_streams(v, 1), _by_streams(base, 1)
        row.append(_cell(t1 and t1.cpu_s_per_gbit, b1 and b1.cpu_s_per_gbit, 2))
        for field in ("p50_us", "p99_us"):
            value = getattr(v.latency, field) if v.latency else None
            floor = getattr(base.latency, field) if base.latency else None
            row.append(_cell(value, floor, 0))
        rows.append(row)
    return rows


def tables(report: Report) -> str:
    env = report.environment
    crypto = "; ".join(f"{k}: {', '.join(v) or 'not instantiated'}" for k, v in env.crypto.items())
    sections = [
        f"routed-nv bench ({env.mode}) - kernel {env.kernel}"
        f"{' (UML guest)' if env.uml else ''}, {env.cpus} CPU, {env.cpu_model}, {env.iperf3}",
        f"crypto drivers: {crypto}",
        "\n".join(f"- {v}: {DESCRIPTIONS[v]}" for v in Variant),
        "Throughput (Gbit/s), CPU-seconds per Gbit (1 stream) and TCP request/response "
        "latency (µs); ratios to the plain underlay",
        _table(
            ["variant", "TCP 1 stream", "TCP 4 streams", "CPU-s/Gbit", "RR p50", "RR p99"],
            performance_rows(report),
        ),
        "Per-packet overhead and workload MTU (underlay MTU 1500)",
        _table(
            ["variant", "overhead (B)", "workload MTU", "DF ping of MTU arrives", "MTU+1 fails"],
            [
                [v.variant, v.mtu.overhead, v.mtu.computed, v.mtu.fits, v.mtu.next_fails]
                for v in report.variants
                if v.mtu
            ],
        ),
        "Packets crossing hosts on the underlay per event (background: other workloads' "
        "packets in the same windows)",
        _table(
            ["variant", "hosts", *EVENTS, "background"],
            [
                [
                    v.variant,
                    s.hosts,
                    *(_event(s.flood, e).crossings for e in EVENTS),
                    sum(f.crossings for e in EVENTS for f in _event(s.flood, e).background),
                ]
                for v in report.variants
                for s in v.scale
            ],
        ),
        "The same, frame by frame: kind frames x copies (copies: hosts reached by each frame)",
        _table(
            ["variant", "hosts", "event", "frames", "background"],
            [
                [
                    v.variant,
                    s.hosts,
                    e,
                    _frames(_event(s.flood, e).frames),
                    _frames(_event(s.flood, e).background),
                ]
                for v in report.variants
                if v.variant not in (Variant.UNDERLAY, Variant.ROUTED)
                for s in v.scale
                for e in EVENTS
            ],
        ),
        "Convergence after moving a workload to another host",
        _table(
            [
                "variant",
                "traffic again after (s)",
                "control plane for the path (s)",
                "datapath after that (s)",
                "all hosts done (s)",
                "method",
            ],
            [
                [
                    v.variant,
                    v.convergence.seconds if v.convergence.seconds is not None else "no",
                    v.convergence.path_seconds,
                    NONE
                    if v.convergence.datapath_seconds is None
                    else v.convergence.datapath_seconds,
                    v.convergence.move_seconds,
                    v.convergence.method
                    + (f" - {v.convergence.note}" if v.convergence.note else ""),
                ]
                if v.convergence
                else [v.variant, NONE, NONE, NONE, NONE, v.convergence_note]
                for v in report.variants
            ],
        ),
        "State on host1, measured (formula): routes, SAs, XFRM policies, VXLAN FDB entries",
        _table(
            ["variant", "hosts", "routes", "SAs", "policies", "FDB"],
            [
                [
                    v.variant,
                    s.hosts,
                    *(
                        f"{getattr(s.state, f)} ({getattr(s.formula, f)})"
                        for f in ("routes", "sas", "policies", "fdb")
                    ),
                ]
                for v in report.variants
                for s in v.scale
            ],
        ),
        "State per host by formula (tenants per host, workloads per tenant per host, hosts "
        "each tenant spans)",
        _table(
            [
                "variant",
                "hosts",
                "tenants",
                "workloads",
                "span",
                "routes",
                "SAs",
                "policies",
                "FDB",
            ],
            [
                [
                    p.variant,
                    p.hosts,
                    p.tenants,
                    p.endpoints,
                    p.span,
                    p.state.routes,
                    p.state.sas,
                    p.state.policies,
                    p.state.fdb,
                ]
                for p in report.projections
            ],
        ),
    ]
    return "\n\n".join(sections) + "\n"
