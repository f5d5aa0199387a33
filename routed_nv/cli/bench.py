"""`routed-nv bench`: the comparative benchmark, inside UML when this kernel lacks the datapath;
`routed-nv bench directory|endpoints|routing|events ...`: the directory, local-endpoint,
routing-programming and per-event CPU benchmarks.

Like `routed-nv lab`, the command re-runs itself in a user-mode-linux guest
(`python -m routed_nv.cli.bench --guest-report FILE`); the guest writes the JSON report to
a file the caller can read, and the caller renders it (so plotting never runs in the guest).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import click

from routed_nv.lab import uml
from routed_nv.options import output_option

if TYPE_CHECKING:
    from routed_nv.bench.results import Report

DEFAULT_TIMEOUT_S = 3600.0  # --full at 30 hosts takes a while in the guest


def _log(line: str) -> None:
    click.echo(line, err=True)


def _in_uml(quick: bool, mem: str, timeout: float) -> Report:
    from routed_nv.bench import report
    from routed_nv.bench.results import Report

    # /var/tmp is the machine's own in the guest too (only /tmp, /run, /dev/shm are private).
    with tempfile.TemporaryDirectory(prefix="rnvb-", dir="/var/tmp") as workdir:
        path = Path(workdir) / "report.json"
        argv = [sys.executable, "-m", "routed_nv.cli.bench", "--guest-report", str(path)]
        rc = uml.run_in_uml([*argv, "--quick" if quick else "--full"], mem=mem, timeout=timeout)
        if rc != 0 or not path.exists():
            raise click.ClickException(f"the benchmark in the UML guest failed (exit status {rc})")
        result = Report.model_validate_json(path.read_text())
    # The guest sees its own virtual CPU: name the machine's.
    result.environment.cpu_model = report.host_cpu_model()
    return result


@click.group(name="bench", invoke_without_command=True)
@click.option(
    "--quick/--full",
    default=False,
    help="--quick: 2 s iperf3 runs, 3 and 10 hosts, one run each (CI, a few minutes). "
    "--full (default): 10 s runs, median of 3, 3/10/30 hosts.",
)
@output_option
@click.option(
    "--save",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Also write the JSON report to this file.",
)
@click.option(
    "--plots",
    "plot_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write PNG plots into this directory (needs matplotlib).",
)
@click.option("--mem", default=uml.DEFAULT_MEM, show_default=True, help="UML guest memory.")
@click.option(
    "--timeout",
    type=float,
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    help="Seconds before the UML guest is killed.",
)
@click.option("--guest-report", type=click.Path(path_type=Path), hidden=True)
@click.pass_context
def bench_command(
    ctx: click.Context,
    quick: bool,
    output: str,
    save: Path | None,
    plot_dir: Path | None,
    mem: str,
    timeout: float,
    guest_report: Path | None,
) -> None:
    """Compare routed_nv with bridged VXLAN overlays (plain and IPsec) and the plain underlay.

    Builds the lab's 3-host, 2-tenant workload set once per variant and measures, between
    workloads on different hosts: TCP throughput (iperf3, 1 and 4 streams) with CPU per Gbit,
    TCP request/response latency (p50/p99), per-packet overhead and the workload MTU (checked
    with DF pings), packets that cross hosts when a workload resolves a neighbour, boots or
    probes an unknown address (as the lab grows), convergence after moving a workload, and
    kernel state per host (measured, and by formula up to 1,000 hosts). What encryption costs:
    routed_nv in each protection mode (aes-gcm, chacha20-poly1305, integrity, none) beside
    vxlan+ipsec with AES-GCM and ChaCha20-Poly1305, 1 vs 4 tenants between two hosts, the
    kernel's crypto drivers, and this machine's user-space AEAD speeds (openssl speed, not
    ESP). Absolute figures from a UML guest are not a machine's: compare the ratios. Method:
    docs/benchmarks.md.

    \b
    Exit status:
      0  measured and reported
      1  the benchmark failed (in the UML guest or on this kernel)
      2  usage error

    The directory and routing benchmarks are its subcommands (their own options follow them).

    \b
    Examples:
      routed-nv bench --quick
      routed-nv bench --quick -o json > bench.json
      routed-nv bench --full --save docs/benchmarks.json --plots docs/img
      routed-nv bench directory --quick -o json
      routed-nv bench routing --routes 1000 10000
    """
    if ctx.invoked_subcommand is not None:
        return
    # the benchmark (and the lab it builds) loads only when it runs, not for `--help`
    from routed_nv.bench import plots, report
    from routed_nv.bench.run import FULL, QUICK, machine, machine_load, run

    plan = QUICK if quick else FULL
    if guest_report is not None:
        guest_report.write_text(run(plan, _log).model_dump_json(indent=2))
        return
    load = machine_load()
    result = _in_uml(quick, mem, timeout) if uml.needs_uml() else run(plan, _log)
    machine(result.environment, plan, load)
    if save is not None:
        save.write_text(result.model_dump_json(indent=2) + "\n")
    if plot_dir is not None:
        for path in plots.plot(result, plot_dir):
            _log(f"wrote {path}")
    click.echo(result.model_dump_json(indent=2) if output == "json" else report.tables(result))


_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}


@bench_command.command("directory", context_settings=_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_directory_command(args: tuple[str, ...]) -> None:
    """The BGP directory against issue 16's goals, each figure beside its floor.

    Agent start -> READY -> in sync; N routes published on host1 -> in host2's VRF against
    the `ip -batch` floor (both timed by a C netlink reader); agent CPU per route change and
    RSS per remote route; `routed-nv endpoint add` -> first ping reply from a peer host (IPv4,
    IPv6); a make-before-break move under a 10 ms ping. The header records the host's load and
    the other UML guests running. Its own options follow it: --quick, --full, --size N[:REPS],
    --hosts 2|3, -o json. Runs in a UML guest when this kernel lacks the datapath.
    Method and JSON schema: docs/directory.md "Measurements".

    \b
    Exit status:
      0  measured and reported
      1  the benchmark failed (in the UML guest or on this kernel)
      2  usage error

    \b
    Examples:
      routed-nv bench directory --quick --hosts 2 -o json
      routed-nv bench directory --full -o json > directory.json
      routed-nv bench directory --size 10000:3
    """
    from routed_nv.bench import directory

    sys.exit(directory.main(list(args)))


@bench_command.command("endpoints", context_settings=_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_endpoints_command(args: tuple[str, ...]) -> None:
    """Local endpoints at scale: a burst of API adds and deletes, no-op resyncs, a restore.

    Its own options follow it: --quick, -o json. Runs in the BGP lab, in a UML guest when
    this kernel lacks the datapath. Method: docs/agent.md, "Local endpoints at scale".

    \b
    Exit status:
      0  measured and reported
      1  the benchmark failed (in the UML guest or on this kernel)
      2  usage error

    \b
    Examples:
      routed-nv bench endpoints --quick
      routed-nv bench endpoints -o json
    """
    from routed_nv.bench import endpoints

    sys.exit(endpoints.main(list(args)))


@bench_command.command("routing", context_settings=_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_routing_command(args: tuple[str, ...]) -> None:
    """Program N routes into a VRF through the routing driver, beside the `ip -batch` floor.

    Its own options follow it: --routes N..., --full. Runs in a UML guest
    when this kernel lacks the datapath.

    \b
    Exit status:
      0  measured and reported
      1  the benchmark failed (in the UML guest or on this kernel)
      2  usage error

    \b
    Examples:
      routed-nv bench routing
      routed-nv bench routing --routes 1000 10000
    """
    from routed_nv.bench import routing

    sys.exit(routing.main(list(args)))


@bench_command.command("events", context_settings=_PASS_THROUGH)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench_events_command(args: tuple[str, ...]) -> None:
    """Agent CPU per directory event, full recalculation against delta, on this host.

    Its own options follow it: --routes N..., --trials N, --full-trials N, --memory (bytes
    per remote route instead), -o json. In-memory kernel, no UML guest. Method:
    docs/directory.md.

    \b
    Exit status:
      0  measured and reported
      2  usage error

    \b
    Examples:
      routed-nv bench events
      routed-nv bench events --routes 100000 -o json
      routed-nv bench events --memory --routes 10000 100000
    """
    from routed_nv.bench import events

    sys.exit(events.main(list(args)))


if __name__ == "__main__":
    bench_command()
