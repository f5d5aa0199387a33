"""PNG plots of a report (matplotlib, an optional dependency: only `--plots` needs it)."""

from __future__ import annotations

from pathlib import Path

from routed_nv.bench.report import PROTECTION_ORDER
from routed_nv.bench.results import Report, Variant


def plot(report: Report, directory: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no display
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plots needs matplotlib: pip install matplotlib") from exc
    directory.mkdir(parents=True, exist_ok=True)
    names = [str(v.variant) for v in report.variants]
    written = []

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, streams in zip(axes, (1, 4), strict=True):
        values = [
            next((t.gbps for t in v.throughput if t.streams == streams), 0) for v in report.variants
        ]
        ax.bar(names, values, color="tab:blue")
        ax.set_title(f"TCP throughput, {streams} stream(s)")
        ax.set_ylabel("Gbit/s (UML guest)")
        ax.tick_params(axis="x", labelrotation=60, labelsize="small")
    written.append(_save(fig, directory / "bench-throughput.png"))

    written.append(_protection(report, directory, plt))

    fig, ax = plt.subplots(figsize=(6, 3.8))
    width = 0.4
    xs = range(len(names))
    for offset, (label, field) in zip(
        (-width / 2, width / 2), (("p50", "p50_us"), ("p99", "p99_us")), strict=True
    ):
        values = [getattr(v.latency, field) if v.latency else 0 for v in report.variants]
        ax.bar([x + offset for x in xs], values, width, label=label)
    ax.set_xticks(list(xs), names, rotation=60, fontsize="small")
    ax.set_ylabel("µs (UML guest)")
    ax.set_title("TCP request/response, 64 B")
    ax.legend()
    written.append(_save(fig, directory / "bench-latency.png"))

    fig, ax = plt.subplots(figsize=(6, 3.8))
    for v in (v for v in report.variants if v.scale):
        hosts = [s.hosts for s in v.scale]
        total = [
            s.flood.resolve.crossings + s.flood.unknown.crossings + s.flood.boot.crossings
            for s in v.scale
        ]
        ax.plot(hosts, total, marker="o", label=str(v.variant))
    ax.set_xlabel("hosts in the overlay")
    ax.set_ylabel("packets crossing hosts")
    ax.set_title("Resolve + unknown address + boot of one workload")
    ax.legend()
    written.append(_save(fig, directory / "bench-flood.png"))

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    dense = [p for p in report.projections if p.span == p.hosts]
    for ax, field in zip(axes, ("routes", "sas", "fdb"), strict=True):
        for variant in dict.fromkeys(p.variant for p in dense):
            rows = [p for p in dense if p.variant is variant]
            ax.plot(
                [p.hosts for p in rows],
                [max(getattr(p.state, field), 0.5) for p in rows],
                marker="o",
                label=str(variant),
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("hosts (every tenant on every host)")
        ax.set_title(f"{field} per host")
    axes[0].legend(fontsize="small")
    written.append(_save(fig, directory / "bench-state.png"))
    return written


def _protection(report: Report, directory: Path, plt: object) -> Path:
    """Throughput and CPU per Gbit (1 stream) per protection mode, routed_nv beside
    vxlan+ipsec for each cipher."""
    rows = [
        (v, t)
        for variant in PROTECTION_ORDER
        for v in report.variants
        if v.variant is variant
        for t in v.throughput
        if t.streams == 1
    ]
    colours = {
        Variant.UNDERLAY: "tab:gray",
        Variant.VXLAN: "tab:gray",
        Variant.VXLAN_IPSEC: "tab:orange",
        Variant.VXLAN_IPSEC_CHACHA: "tab:orange",
    }
    fig, axes = plt.subplots(1, 2, figsize=(11, 5))  # type: ignore[attr-defined]
    aes_gcm = (Variant.ROUTED, Variant.VXLAN_IPSEC)  # name the mode where the variant does not
    names = [f"{v.variant}{' aes-gcm' if v.variant in aes_gcm else ''}" for v, _ in rows]
    colour = [colours.get(v.variant, "tab:blue") for v, _ in rows]
    for ax, field, label in zip(
        axes,
        ("gbps", "cpu_s_per_gbit"),
        ("Gbit/s, 1 TCP stream (UML guest)", "CPU-s per Gbit"),
        strict=True,
    ):
        ax.bar(range(len(rows)), [getattr(t, field) for _, t in rows], color=colour)
        ax.set_xticks(range(len(rows)), names, rotation=50, ha="right", fontsize="small")
        ax.set_ylabel(label)
        ax.set_yscale("log")
    axes[0].set_title("What encryption costs: throughput")
    axes[1].set_title("CPU per Gbit (blue: routed_nv, orange: vxlan+ipsec)")
    return _save(fig, directory / "bench-protection.png")


def _save(fig: object, path: Path) -> Path:
    fig.tight_layout()  # type: ignore[attr-defined]
    fig.savefig(path, dpi=100)  # type: ignore[attr-defined]
    import matplotlib.pyplot as plt

    plt.close(fig)  # type: ignore[arg-type]
    return path
