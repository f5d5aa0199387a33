"""`routed-nv lab`: the multi-host lab in network namespaces, inside UML when the kernel needs it.

Commands that need the datapath re-run themselves in a user-mode-linux guest when this kernel
lacks it (`python -m routed_nv.lab.commands ...`); in the guest they run directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from routed_nv.lab import uml
from routed_nv.lab.builder import Lab, LabError, remove_leftovers
from routed_nv.lab.checks import tenant_matrix, underlay_capture, underlay_pings
from routed_nv.lab.datapath import LabDatapath
from routed_nv.lab.topology import Topology, default_topology


def _uml_options(command: Callable[..., Any]) -> Callable[..., Any]:
    command = click.option(
        "--mem",
        default=uml.DEFAULT_MEM,
        show_default=True,
        help="Guest memory when the lab runs inside user-mode-linux.",
    )(command)
    return click.option(
        "--timeout",
        type=float,
        default=uml.DEFAULT_TIMEOUT,
        show_default=True,
        help="Seconds before the UML guest is killed (exit status 124).",
    )(command)


def _reexec_in_uml(args: list[str], mem: str, timeout: float, **kwargs: Any) -> None:
    argv = [sys.executable, "-m", "routed_nv.lab.commands", *args]
    raise SystemExit(uml.run_in_uml(argv, mem=mem, timeout=timeout, **kwargs))


def _describe(topology: Topology) -> None:
    click.echo(f"underlay {topology.aggregate}, router namespace {topology.router_namespace}")
    for host in topology.hosts:
        workloads = ", ".join(f"{w.name} ({w.tenant})" for w in topology.workloads_on(host.name))
        click.echo(f"  {host.namespace:<16} {host.uplink_address!s:<24} workloads: {workloads}")


@click.group(name="lab")
def lab_group() -> None:
    """A multi-host lab: hosts, an underlay router and workloads as network namespaces.

    When this kernel lacks the datapath features (see `routed-nv doctor`), lab commands boot a
    user-mode-linux guest that has them and run inside it. Lab namespaces are named `rnv-lab-*`.

    \b
    Examples:
      routed-nv lab demo
      routed-nv lab shell
      echo 'ip -n rnv-lab-router -6 route' | routed-nv lab shell
    """


@lab_group.command(name="demo")
@_uml_options
def demo_command(mem: str, timeout: float) -> None:
    """Build the default lab, run routed_nv on every host, prove it works, tear it down.

    Proves, in order: every host reaches every other host over the IPv6 underlay; routed_nv
    programs each host from its own config (static keying); every workload reaches every other
    workload of its tenant over IPv4 and IPv6, and the echo counters show that only the intended
    workload (never the other tenant's workload with the same address) received it; the underlay
    router saw nothing but ESP between hosts.

    \b
    Exit status:
      0    all of that holds
      1    something does not (each failure is listed)
      124  the UML guest timed out
      125  the UML guest did not report

    \b
    Examples:
      routed-nv lab demo
      routed-nv lab demo --mem 256M --timeout 120
    """
    if uml.needs_uml():
        click.echo(
            "routed-nv: this kernel lacks datapath features; running the lab in UML", err=True
        )
        _reexec_in_uml(["demo"], mem, timeout)
    started = time.monotonic()
    topology = default_topology()
    with Lab(topology) as lab, tempfile.TemporaryDirectory() as workdir:
        click.echo(
            f"built {len(topology.namespaces)} namespaces in {time.monotonic() - started:.2f} s"
        )
        _describe(topology)
        pings = underlay_pings(lab)
        for p in pings:
            click.echo(
                f"  {'ok  ' if p.ok else 'FAIL'} {p.source} -> {p.target} {p.address}: {p.detail}"
            )
        problems = [f"underlay {p.source} -> {p.target}" for p in pings if not p.ok]
        click.echo(f"underlay: {len(pings) - len(problems)}/{len(pings)} host pairs reachable")
        problems += _demo_datapath(lab, Path(workdir))
    verdict = "FAILED: " + "; ".join(problems) if problems else "ok"
    click.echo(f"lab torn down; demo {verdict} ({time.monotonic() - started:.1f} s)")
    raise SystemExit(1 if problems else 0)


def _demo_datapath(lab: Lab, workdir: Path) -> list[str]:
    started = time.monotonic()
    datapath = LabDatapath(lab, workdir)
    datapath.configure_workloads()
    try:
        outcomes = datapath.apply_all()
    except LabError as exc:
        return [f"apply: {exc}"]
    changes = sum(len(s.lines) for o in outcomes.values() for s in o.stages)
    click.echo(
        f"routed_nv applied on {len(outcomes)} hosts ({changes} kernel changes) in "
        f"{time.monotonic() - started:.2f} s"
    )
    with underlay_capture(lab) as reports:
        reaches = tenant_matrix(lab)
    for r in reaches:
        mark = "ok  " if r.ok else "FAIL"
        click.echo(
            f"  {mark} {r.source:>6} -> {r.target:<6} {r.address:<9} answered={r.answered} "
            f"target got {r.target_echoes}, other tenant got {r.twin_echoes}"
        )
    bad = [f"tenant {r.source} -> {r.target} {r.address}" for r in reaches if not r.ok]
    click.echo(f"tenants: {len(reaches) - len(bad)}/{len(reaches)} same-tenant probes isolated")
    (wire,) = reports
    spis = ", ".join(f"0x{s:08x}" for s in sorted(wire.esp_spis))
    click.echo(
        f"underlay wire: {wire.esp_packets} ESP packets (SPIs {spis}), "
        f"{wire.link_local} link-local ND/MLD on router links, {len(wire.leaks)} other packets"
    )
    return bad + [f"wire: {leak}" for leak in wire.leaks[:5]]


@lab_group.command(name="shell")
@_uml_options
def shell_command(mem: str, timeout: float) -> None:
    """Open a shell in the default lab (built first, torn down when the shell exits).

    The shell runs in the root namespace of the lab's kernel; use `ip netns exec rnv-lab-host1
    ...` or `ip -n rnv-lab-host1 ...` to act inside a host. Without a terminal, commands are read
    from stdin.

    \b
    Exit status:
      the shell's own status (that of its last command)
      124  the UML guest ran out of --timeout

    \b
    Examples:
      routed-nv lab shell
      echo 'ip netns exec rnv-lab-host1 ping -6 -c1 2001:db8:0:2:ffff::1' | routed-nv lab shell
      echo 'ip netns exec rnv-lab-blue1 ping -c1 10.0.0.2' | routed-nv lab shell
    """
    interactive = sys.stdin.isatty()
    if uml.needs_uml():
        stdin_data = None if interactive else sys.stdin.buffer.read()
        _reexec_in_uml(["shell"], mem, timeout, stdin_data=stdin_data, interactive=interactive)
    topology = default_topology()
    with Lab(topology) as lab, tempfile.TemporaryDirectory() as workdir:
        datapath = LabDatapath(lab, Path(workdir))
        datapath.configure_workloads()
        datapath.apply_all()
        click.echo(
            "lab built, routed_nv applied; namespaces: " + " ".join(topology.namespaces), err=True
        )
        shell = [os.environ.get("SHELL", "/bin/sh")] if interactive else ["/bin/sh"]
        status = subprocess.run(shell, env={**os.environ, "PS1": "rnv-lab# "}, check=False)
    click.echo("lab torn down", err=True)
    raise SystemExit(status.returncode)


@lab_group.command(name="up")
def up_command() -> None:
    """Build the default lab and leave it running (only on a kernel with the datapath features).

    \b
    Exit status:
      0  built
      1  this kernel lacks the datapath features, or the lab could not be built

    \b
    Examples:
      routed-nv lab up && ip netns exec rnv-lab-host1 ping -6 -c1 2001:db8:0:2:ffff::1
      routed-nv lab down
    """
    if uml.needs_uml():
        raise click.ClickException(
            "this kernel lacks datapath features and a UML lab ends with its command: "
            "use `routed-nv lab shell`"
        )
    topology = default_topology()
    try:
        Lab(topology).build()
    except LabError as e:
        raise click.ClickException(str(e)) from e
    _describe(topology)


@lab_group.command(name="down")
def down_command() -> None:
    """Remove every `rnv-lab-*` namespace (and what runs in it) left by `lab up` or a crash.

    \b
    Exit status:
      0  removed (possibly nothing)

    \b
    Examples:
      routed-nv lab down
    """
    removed = remove_leftovers()
    click.echo(
        f"removed {len(removed)} lab namespaces" + (": " + " ".join(removed) if removed else "")
    )


if __name__ == "__main__":
    lab_group()
