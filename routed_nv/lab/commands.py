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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from routed_nv.lab import uml
from routed_nv.lab.bgp_agents import BgpAgents, expected_remote_addresses
from routed_nv.lab.builder import Lab, LabError, remove_leftovers
from routed_nv.lab.checks import tenant_matrix, underlay_capture, underlay_pings
from routed_nv.lab.datapath import LabDatapath
from routed_nv.lab.topology import Topology, default_topology, directory_topology

DIRECTORIES = ("bgp", "static")


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


def _directory_option(command: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--directory",
        type=click.Choice(DIRECTORIES),
        default="bgp",
        show_default=True,
        help="How hosts learn where the other hosts' workloads are: 'bgp' runs `routed-nv agent`"
        " on every host, BIRD on every host and two route reflectors; 'static' puts them in each"
        " host's config and applies it once per host (no agents, no BGP).",
    )(command)


@contextmanager
def _routed_nv(
    lab: Lab, workdir: Path, directory: str, echo: Callable[[str], None]
) -> Iterator[None]:
    """routed_nv on every host of a built lab while the block runs. Raises LabError."""
    started = time.monotonic()
    if directory == "static":
        datapath = LabDatapath(lab, workdir)
        datapath.configure_workloads()
        outcomes = datapath.apply_all()
        changes = sum(len(s.lines) for o in outcomes.values() for s in o.stages)
        echo(
            f"routed_nv applied on {len(outcomes)} hosts ({changes} kernel changes) in "
            f"{time.monotonic() - started:.2f} s"
        )
        yield
        return
    env = BgpAgents(lab, workdir)
    try:
        ready = env.start()
        reflectors = ", ".join(rr.name for rr in lab.topology.route_reflectors)
        echo(
            f"BIRD on {reflectors} (route reflectors) and every host; `routed-nv agent` READY on "
            + ", ".join(f"{host} in {seconds:.1f} s" for host, seconds in ready.items())
        )
        converged = env.wait_converged()
        learned = sum(expected_remote_addresses(lab.topology).values())
        echo(
            f"BGP directory: every host learned its tenants' remote workloads ({learned} addresses"
            f" in all) {converged:.2f} s after the BGP sessions came up; "
            f"{time.monotonic() - started:.1f} s after starting the route reflectors"
        )
        for host in lab.topology.hosts:
            echo(f"  {host.name}: agent run dir {env.agents[host.name].run_dir}")
        yield
    finally:
        codes = env.agents.stop_all()
        echo(f"agents stopped by SIGTERM (exit status {codes}); their dataplane stays")


@lab_group.command(name="demo")
@_directory_option
@_uml_options
def demo_command(directory: str, mem: str, timeout: float) -> None:
    """Build the default lab, run routed_nv on every host, prove it works, tear it down.

    Proves, in order: routed_nv runs on each host from its own config (static keying): by
    default an agent per host that learns the other hosts' workloads from BGP (BIRD on every
    host, two route reflectors and the top-of-rack router started with the lab, the underlay
    routes learned from it too); every host reaches every other host over the IPv6 underlay;
    every workload reaches every other workload of its tenant over IPv4 and IPv6,
    and the echo counters show that only the intended workload (never the other tenant's
    workload with the same address) received it; the underlay router saw nothing between hosts
    but ESP (and BGP with the route reflectors).

    \b
    Exit status:
      0    all of that holds
      1    something does not (each failure is listed)
      124  the UML guest timed out
      125  the UML guest did not report

    \b
    Examples:
      routed-nv lab demo
      routed-nv lab demo --directory static
      routed-nv lab demo --mem 256M --timeout 120
    """
    if uml.needs_uml():
        click.echo(
            "routed-nv: this kernel lacks datapath features; running the lab in UML", err=True
        )
        _reexec_in_uml(["demo", "--directory", directory], mem, timeout)
    started = time.monotonic()
    topology = _topology(directory)
    with Lab(topology) as lab, tempfile.TemporaryDirectory() as workdir:
        click.echo(
            f"built {len(topology.namespaces)} namespaces in {time.monotonic() - started:.2f} s"
        )
        _describe(topology)
        problems: list[str] = []
        try:
            with _routed_nv(lab, Path(workdir), directory, click.echo):
                problems += _demo_underlay(lab)  # with BGP, the underlay routes come from BIRD
                problems += _demo_checks(lab)
        except LabError as exc:
            problems.append(f"routed_nv: {exc}")
    verdict = "FAILED: " + "; ".join(problems) if problems else "ok"
    click.echo(f"lab torn down; demo {verdict} ({time.monotonic() - started:.1f} s)")
    raise SystemExit(1 if problems else 0)


def _topology(directory: str) -> Topology:
    return directory_topology() if directory == "bgp" else default_topology()


def _demo_underlay(lab: Lab) -> list[str]:
    pings = underlay_pings(lab)
    for p in pings:
        click.echo(
            f"  {'ok  ' if p.ok else 'FAIL'} {p.source} -> {p.target} {p.address}: {p.detail}"
        )
    problems = [f"underlay {p.source} -> {p.target}" for p in pings if not p.ok]
    click.echo(f"underlay: {len(pings) - len(problems)}/{len(pings)} host pairs reachable")
    return problems


def _demo_checks(lab: Lab) -> list[str]:
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
    control = ", ".join(f"{n} {kind.upper()}" for kind, n in sorted(wire.control.items()))
    click.echo(
        f"underlay wire: {wire.esp_packets} ESP packets between hosts (SPIs {spis}), "
        f"control plane: {control or 'none'}, {wire.link_local} link-local ND/MLD on router "
        f"links, {len(wire.leaks)} other packets"
    )
    return bad + [f"wire: {leak}" for leak in wire.leaks[:5]]


@lab_group.command(name="shell")
@_directory_option
@_uml_options
def shell_command(directory: str, mem: str, timeout: float) -> None:
    """Open a shell in the default lab (built first, torn down when the shell exits).

    routed_nv runs on every host as in `lab demo` (by default an agent per host and the BGP
    directory, so `routed-nv status --run-dir DIR` and `birdc -s SOCKET` work in the shell).
    The shell runs in the root namespace of the lab's kernel; use `ip netns exec rnv-lab-host1
    ...` or `ip -n rnv-lab-host1 ...` to act inside a host. Without a terminal, commands are read
    from stdin.

    \b
    Exit status:
      the shell's own status (that of its last command)
      1    routed_nv could not be started in the lab
      124  the UML guest ran out of --timeout

    \b
    Examples:
      routed-nv lab shell
      echo 'ip netns exec rnv-lab-host1 ping -6 -c1 2001:db8:0:2:ffff::1' | routed-nv lab shell
      echo 'ip netns exec rnv-lab-blue1 ping -c1 10.0.0.2' | routed-nv lab shell
      routed-nv lab shell --directory static
    """
    interactive = sys.stdin.isatty()
    if uml.needs_uml():
        stdin_data = None if interactive else sys.stdin.buffer.read()
        _reexec_in_uml(
            ["shell", "--directory", directory],
            mem,
            timeout,
            stdin_data=stdin_data,
            interactive=interactive,
        )
    topology = _topology(directory)
    with Lab(topology) as lab, tempfile.TemporaryDirectory() as workdir:
        try:
            with _routed_nv(lab, Path(workdir), directory, lambda line: click.echo(line, err=True)):
                click.echo("lab built; namespaces: " + " ".join(topology.namespaces), err=True)
                shell = [os.environ.get("SHELL", "/bin/sh")] if interactive else ["/bin/sh"]
                env = {**os.environ, "PS1": "rnv-lab# "}
                status = subprocess.run(shell, env=env, check=False).returncode
        except LabError as exc:
            click.echo(f"routed-nv: lab: {exc}", err=True)
            status = 1
    click.echo("lab torn down", err=True)
    raise SystemExit(status)


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
