"""`routed-nv lab`: the multi-host lab in network namespaces, inside UML when the kernel needs it.

Commands that need the datapath re-run themselves in a user-mode-linux guest when this kernel
lacks it (`python -m routed_nv.cli.lab ...`); in the guest they run directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from routed_nv.cli.agent_client import table
from routed_nv.lab import uml
from routed_nv.lab.builder import Lab, LabError, remove_leftovers
from routed_nv.lab.checks import (
    WireReport,
    reported_spi_problems,
    tenant_matrix,
    underlay_capture,
    underlay_pings,
)
from routed_nv.lab.topology import Topology, default_topology, directory_topology

# The modules that run routed_nv in the lab import the product's drivers (pyroute2, vici): they
# load when a lab is built, not for `--help`.
if TYPE_CHECKING:
    from routed_nv.config.model import Config
    from routed_nv.lab.charon import LabCharon

DIRECTORIES = ("bgp", "static")
KEYINGS = ("static", "ike")
LAB_ENV = "RNV_LAB"  # the lab's run directory, in `lab shell`


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
    argv = [sys.executable, "-m", "routed_nv.cli.lab", *args]
    raise SystemExit(uml.run_in_uml(argv, mem=mem, timeout=timeout, **kwargs))


def _describe(topology: Topology) -> None:
    click.echo(f"underlay {topology.aggregate}, router namespace {topology.router_namespace}")
    rows = [
        [
            host.namespace,
            str(host.uplink_address),
            ", ".join(f"{w.name} ({w.tenant})" for w in topology.workloads_on(host.name)),
        ]
        for host in topology.hosts
    ]
    click.echo(table(["NAMESPACE", "UPLINK ADDRESS", "WORKLOADS"], rows))


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


def _choice_option(
    name: str, choices: tuple[str, ...], default: str, help_text: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        name, type=click.Choice(choices), default=default, show_default=True, help=help_text
    )


_directory_option = _choice_option(
    "--directory",
    DIRECTORIES,
    "bgp",
    "How hosts learn where the other hosts' workloads are: 'bgp' runs `routed-nv agent` on every"
    " host, BIRD on every host and two route reflectors; 'static' puts them in each host's"
    " config and applies it once per host (no agents, no BGP).",
)
_keying_option = _choice_option(
    "--keying",
    KEYINGS,
    "static",
    "Where the SAs come from: 'static' derives them from per-tenant key files; 'ike' runs"
    " strongSwan's charon on every host, which negotiates them with IKEv2 (pre-shared key), and"
    ' an agent per host with keying.mode = "ike" (with --directory static too). The demo then'
    " checks that the ESP on the wire uses exactly the SPIs `routed-nv sa list` reports.",
)


@dataclass
class Running:
    """routed_nv as it runs in the lab: each host's config file, and the charons with IKE."""

    config_files: dict[str, Path]
    charons: LabCharon | None


@contextmanager
def _routed_nv(
    lab: Lab, workdir: Path, directory: str, keying: str, echo: Callable[[str], None]
) -> Iterator[Running]:
    """routed_nv on every host of a built lab while the block runs. Raises LabError."""
    from routed_nv.lab.charon import LabCharon

    if keying == "static":
        with _hosts(lab, workdir, directory, None, echo) as config_files:
            yield Running(config_files, None)
        return
    charons = LabCharon(lab, workdir)
    try:
        charons.start_all()
        pids = {host: node.pid for host, node in charons.nodes.items()}
        echo(f"charon on every host (pids {pids})")
        with _hosts(lab, workdir, directory, charons.with_psk, echo) as config_files:
            took = charons.wait_keyed(lab.topology)
            rows = sum(len(charons.listing(h).children) for h in charons.nodes)
            echo(
                "IKE: one IKE_SA per host pair and one CHILD_SA per peer and shared tenant, "
                f"both ends with the same SPIs ({rows} listed on {len(charons.nodes)} hosts) "
                f"{took:.1f} s later"
            )
            yield Running(config_files, charons)
    finally:
        stopped = charons.stop_all()
        echo(f"charons stopped by SIGTERM (pids {stopped}); their files and the PSK files removed")


@contextmanager
def _hosts(
    lab: Lab,
    workdir: Path,
    directory: str,
    adapt: Callable[[str, Config], Config] | None,
    echo: Callable[[str], None],
) -> Iterator[dict[str, Path]]:
    """Each host configured (`adapt` changes its config) and routed_nv running on it, while the
    block runs: one apply per host with static keying and directory, else an agent per host.
    Yields the hosts' config files."""
    from routed_nv.lab.agents import LabAgents
    from routed_nv.lab.bgp_agents import BgpAgents, expected_remote_addresses
    from routed_nv.lab.datapath import LabDatapath

    started = time.monotonic()
    if directory == "static" and adapt is None:
        datapath = LabDatapath(lab, workdir)
        datapath.configure_workloads()
        outcomes = datapath.apply_all()
        changes = sum(len(s.lines) for o in outcomes.values() for s in o.stages)
        echo(
            f"routed_nv applied on {len(outcomes)} hosts ({changes} kernel changes) in "
            f"{time.monotonic() - started:.2f} s"
        )
        yield datapath.config_files
        return
    bgp = BgpAgents(lab, workdir, adapt) if directory == "bgp" else None
    # IKE needs a reconcile loop (initiate, resolve duplicates, re-assert after a charon
    # restart), so with the static directory too every host runs an agent
    datapath = bgp.datapath if bgp else LabDatapath(lab, workdir, adapt)
    agents = bgp.agents if bgp else LabAgents(datapath, workdir)
    try:
        if bgp is None:
            datapath.configure_workloads()
            echo("`routed-nv agent` READY on " + _ready(agents.start_all()))
        else:
            ready = bgp.start()
            reflectors = ", ".join(rr.name for rr in lab.topology.route_reflectors)
            echo(
                f"BIRD on {reflectors} (route reflectors) and every host; `routed-nv agent` "
                "READY on " + _ready(ready)
            )
            converged = bgp.wait_converged()
            learned = sum(expected_remote_addresses(lab.topology).values())
            echo(
                f"BGP directory: every host learned its tenants' remote workloads ({learned} "
                f"addresses in all) {converged:.2f} s after the BGP sessions came up; "
                f"{time.monotonic() - started:.1f} s after starting the route reflectors"
            )
        for host in lab.topology.hosts:
            echo(f"  {host.name}: agent run dir {agents[host.name].run_dir}")
        yield datapath.config_files
    finally:
        codes = agents.stop_all()
        echo(f"agents stopped by SIGTERM (exit status {codes}); their dataplane stays")


def _ready(seconds: dict[str, float]) -> str:
    return ", ".join(f"{host} in {s:.1f} s" for host, s in seconds.items())


@lab_group.command(name="demo")
@_directory_option
@_keying_option
@_uml_options
def demo_command(directory: str, keying: str, mem: str, timeout: float) -> None:
    """Build the default lab, run routed_nv on every host, prove it works, tear it down.

    Proves, in order: routed_nv runs on each host from its own config (static keying unless
    --keying ike): by default an agent per host that learns the other hosts' workloads from
    BGP (BIRD on every host, two route reflectors and the top-of-rack router started with the
    lab, the underlay routes learned from it too); every host reaches every other host over
    the IPv6 underlay; every workload reaches every other workload of its tenant over IPv4 and
    IPv6, and the echo counters show that only the intended workload (never the other tenant's
    workload with the same address) received it; the underlay router saw nothing between hosts
    but ESP (and BGP with the route reflectors). With --keying ike: charon on every host, one
    IKE_SA per host pair and one CHILD_SA per peer and shared tenant, and the ESP on the wire
    carries exactly the SPIs that `routed-nv sa list` reports on the hosts.

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
      routed-nv lab demo --keying ike
      routed-nv lab demo --mem 256M --timeout 120
    """
    if uml.needs_uml():
        click.echo(
            "routed-nv: this kernel lacks datapath features; running the lab in UML", err=True
        )
        _reexec_in_uml(["demo", "--directory", directory, "--keying", keying], mem, timeout)
    started = time.monotonic()
    topology = _topology(directory)
    with Lab(topology) as lab, tempfile.TemporaryDirectory() as workdir:
        click.echo(
            f"built {len(topology.namespaces)} namespaces in {time.monotonic() - started:.2f} s"
        )
        _describe(topology)
        problems: list[str] = []
        try:
            with _routed_nv(lab, Path(workdir), directory, keying, click.echo) as running:
                problems += _demo_underlay(lab)  # with BGP, the underlay routes come from BIRD
                problems += _demo_checks(lab, running)
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


def _demo_checks(lab: Lab, running: Running) -> list[str]:
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
    problems = bad + [f"wire: {leak}" for leak in wire.leaks[:5]]
    if running.charons is not None:
        problems += _demo_reported_spis(wire, running.config_files)
    return problems


def _demo_reported_spis(wire: WireReport, config_files: dict[str, Path]) -> list[str]:
    """The SPIs on the wire against those `routed-nv sa list` reports on every host (IKE)."""
    from routed_nv.lab.agents import sa_list

    with ThreadPoolExecutor(max_workers=len(config_files)) as pool:
        listed = dict(zip(config_files, pool.map(sa_list, config_files.values()), strict=True))
    rows = [row for host_rows in listed.values() for row in host_rows]
    problems = reported_spi_problems(wire.esp_spis, rows)
    spis = ", ".join(sorted({row[k] for row in rows for k in ("spi_in", "spi_out") if row[k]}))
    verdict = "differ: " + "; ".join(problems) if problems else "exactly these on the wire"
    click.echo(
        f"sa list: {len(rows)} rows on {len(listed)} hosts (each CHILD_SA from both its ends), "
        f"SPIs {spis}; ESP SPIs {verdict}"
    )
    return problems


@lab_group.command(name="shell")
@_directory_option
@_keying_option
@_uml_options
def shell_command(directory: str, keying: str, mem: str, timeout: float) -> None:
    """Open a shell in the default lab (built first, torn down when the shell exits).

    routed_nv runs on every host as in `lab demo` (by default an agent per host and the BGP
    directory). The shell runs in the root namespace of the lab's kernel; `rnv-host host1`
    opens a shell on host1 (its namespace, ROUTED_NV_CONFIG naming its configuration, whose
    agent.run_dir is its agent's), where docs/operator-guide.md's commands work as written, and
    `rnv-host host1 COMMAND` runs one command there. Without a terminal, commands are read
    from stdin. $RNV_LAB is the lab's run directory (each host's config, agent run dir and, with
    --keying ike, its PSK file and charon's directory with its VICI socket, log and pid file).
    With --keying ike a charon that exits (`kill $(cat $RNV_LAB/host2/charon/charon.pid)`) is
    started again at once, as systemd would, and its agent re-asserts its connections within 5 s
    (docs/ike.md).

    \b
    Exit status:
      the shell's own status (that of its last command)
      1    routed_nv could not be started in the lab
      124  the UML guest ran out of --timeout

    \b
    Examples:
      routed-nv lab shell
      echo 'rnv-host host1 routed-nv status' | routed-nv lab shell
      echo 'ip netns exec rnv-lab-host1 ping -6 -c1 2001:db8:0:2:ffff::1' | routed-nv lab shell
      echo 'ip netns exec rnv-lab-blue1 ping -c1 10.0.0.2' | routed-nv lab shell
      routed-nv lab shell --directory static
      echo 'swanctl --list-sas --uri unix://$RNV_LAB/host1/charon/charon.vici' |
        routed-nv lab shell --keying ike
    """
    interactive = sys.stdin.isatty()
    if uml.needs_uml():
        stdin_data = None if interactive else sys.stdin.buffer.read()
        _reexec_in_uml(
            ["shell", "--directory", directory, "--keying", keying],
            mem,
            timeout,
            stdin_data=stdin_data,
            interactive=interactive,
        )
    from routed_nv.lab.host_shell import write_host_command

    topology = _topology(directory)

    def echo(line: str) -> None:
        click.echo(line, err=True)

    with Lab(topology) as lab, tempfile.TemporaryDirectory() as workdir:
        try:
            with _routed_nv(lab, Path(workdir), directory, keying, echo) as running:
                if running.charons is not None:
                    _describe_charons(running.charons, echo)
                    running.charons.keep_running(echo)
                echo("lab built; namespaces: " + " ".join(topology.namespaces))
                echo(f"{LAB_ENV}={workdir}")
                hosts = {
                    h.name: (h.namespace, running.config_files[h.name]) for h in topology.hosts
                }
                command = write_host_command(Path(workdir) / "bin", hosts)
                echo(
                    f"`{command.name} host1` opens a shell on host1 (its namespace and "
                    f"configuration: the operator guide's commands work as written there); "
                    f"`{command.name} host1 routed-nv status` runs one command"
                )
                shell = [os.environ.get("SHELL", "/bin/sh")] if interactive else ["/bin/sh"]
                env = _shell_env(workdir, command.parent)
                status = subprocess.run(shell, env=env, check=False).returncode
        except LabError as exc:
            click.echo(f"routed-nv: lab: {exc}", err=True)
            status = 1
    click.echo("lab torn down", err=True)
    raise SystemExit(status)


def _shell_env(workdir: str, bin_dir: Path) -> dict[str, str]:
    """The lab shell's environment: $RNV_LAB, and `rnv-host` and `routed-nv` on PATH (the UML
    guest's PATH is the system's, without the virtualenv this runs from)."""
    path = f"{bin_dir}:{Path(sys.executable).parent}:{os.environ.get('PATH', os.defpath)}"
    return {**os.environ, "PS1": "rnv-lab# ", LAB_ENV: workdir, "PATH": path}


def _describe_charons(charons: LabCharon, echo: Callable[[str], None]) -> None:
    workdir = str(charons.workdir)
    for host, node in charons.nodes.items():
        where = str(node.directory).replace(workdir, f"${LAB_ENV}", 1)
        psk = str(charons.psk_file(host)).replace(workdir, f"${LAB_ENV}", 1)
        echo(f"  {host}: charon pid {node.pid}, VICI unix://{where}/charon.vici, PSK {psk}")


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
