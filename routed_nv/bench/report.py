"""The report for people: Markdown tables, readable in a terminal and pasteable into docs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from routed_nv.bench import parse
from routed_nv.bench.results import (
    DESCRIPTIONS,
    PROTECTION,
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


# The protection table's order: from no protection to the costliest, each cipher's routed_nv
# row beside its vxlan+ipsec row.
PROTECTION_ORDER = (
    Variant.UNDERLAY,
    Variant.VXLAN,
    Variant.ROUTED_NONE,
    Variant.ROUTED_INTEGRITY,
    Variant.ROUTED,
    Variant.VXLAN_IPSEC,
    Variant.ROUTED_CHACHA,
    Variant.VXLAN_IPSEC_CHACHA,
)


def _variant(report: Report, variant: Variant) -> VariantResult | None:
    return next((v for v in report.variants if v.variant is variant), None)


def protection_rows(report: Report) -> list[list[object]]:
    """Per variant, 1 TCP stream: throughput with its ratio to the plain underlay and to
    routed_nv with AES-GCM, CPU per Gbit and RR p50 with ratios to plain, bytes added, MTU."""
    base, gcm = _variant(report, Variant.UNDERLAY), _variant(report, Variant.ROUTED)
    floor = base and _by_streams(base, 1)
    reference = gcm and _by_streams(gcm, 1)
    rows: list[list[object]] = []
    for variant in PROTECTION_ORDER:
        v = _variant(report, variant)
        if v is None:
            continue
        t = _by_streams(v, 1)
        gbps = t and t.gbps
        rows.append(
            [
                v.variant,
                PROTECTION[v.variant] or "no ESP",
                ", ".join(v.esp) or NONE,
                _cell(gbps, floor and floor.gbps, 3),
                f"{gbps / reference.gbps:.2f}x" if gbps and reference else NONE,
                _cell(t and t.cpu_s_per_gbit, floor and floor.cpu_s_per_gbit, 2),
                _cell(
                    v.latency and v.latency.p50_us,
                    base and base.latency and base.latency.p50_us,
                    0,
                ),
                v.mtu.overhead if v.mtu else NONE,
                v.mtu.computed if v.mtu else NONE,
            ]
        )
    return rows


def tenants_rows(report: Report) -> list[list[object]]:
    return [
        [
            r.tenants,
            r.streams,
            f"{r.gbps:.3f}",
            ", ".join(f"{g:.3f}" for g in r.per_stream_gbps),
            ", ".join(f"{b:.0%}" for b in r.cpu_busy),
            f"{r.cpu_s_per_gbit:.2f}",
        ]
        for r in report.tenants
    ]


def aead_rows(report: Report) -> list[list[object]]:
    speeds = report.environment.openssl
    sizes = sorted({s.size for s in speeds})
    return [
        [
            algorithm,
            *(
                f"{s.bytes_per_second * 8 / 1e9:.2f}"
                for size in sizes
                for s in speeds
                if s.algorithm == algorithm and s.size == size
            ),
        ]
        for algorithm in dict.fromkeys(s.algorithm for s in speeds)
    ]


def tables(report: Report) -> str:
    env = report.environment
    crypto = "; ".join(f"{k}: {', '.join(v) or 'not instantiated'}" for k, v in env.crypto.items())
    sizes = sorted({s.size for s in env.openssl})
    sections = [
        f"routed-nv bench ({env.mode}) - kernel {env.kernel}"
        f"{' (UML guest)' if env.uml else ''}, {env.cpus} CPU, {env.cpu_model}, {env.iperf3}",
        f"machine load when the run started: {env.host_load or 'not read'}; "
        f"{env.uml_processes} linux.uml processes (UML guests share the machine's CPUs)",
        f"crypto drivers (kernel, /proc/crypto): {crypto}",
        "\n".join(f"- {v}: {DESCRIPTIONS[v]}" for v in Variant),
        "Throughput (Gbit/s), CPU-seconds per Gbit (1 stream) and TCP request/response "
        "latency (µs); ratios to the plain underlay",
        _table(
            ["variant", "TCP 1 stream", "TCP 4 streams", "CPU-s/Gbit", "RR p50", "RR p99"],
            performance_rows(report),
        ),
        "What encryption costs: 1 TCP stream per protection mode, ratios to the plain underlay "
        "(and throughput to routed_nv with AES-GCM); ESP as host1's kernel reports its SAs",
        _table(
            [
                "variant",
                "protection",
                "ESP (kernel)",
                "Gbit/s",
                "x AES-GCM",
                "CPU-s/Gbit",
                "RR p50 (µs)",
                "overhead (B)",
                "workload MTU",
            ],
            protection_rows(report),
        ),
        f"routed_nv (AES-GCM), 1 tenant vs {max((r.tenants for r in report.tenants), default=0)} "
        f"tenants between the same two hosts, the same number of TCP streams "
        f"({env.cpus} CPU in this kernel)",
        _table(
            ["tenants", "streams", "Gbit/s", "per tenant", "CPU busy (per CPU)", "CPU-s/Gbit"],
            tenants_rows(report),
        ),
        f"User-space AEAD on the machine's CPU (`openssl speed -evp`, {env.openssl_version}): "
        "Gbit/s per size in bytes. A reference for hardware crypto, NOT ESP: no kernel, no "
        "packets",
        _table(["algorithm", *(f"{s} B" for s in sizes)], aead_rows(report))
        if env.openssl
        else "not measured (openssl missing, or the report was made inside the guest)",
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
