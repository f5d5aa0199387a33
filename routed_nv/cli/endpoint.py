"""`routed-nv endpoint ...`: list endpoints (from the agent or the configuration); `add|del`
edit routed_nv's run-time drop-in and reload the agent."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from routed_nv.agent import report, runtime
from routed_nv.agent.control import SOCKET_NAME, AgentDown, ControlError, ask
from routed_nv.agent.options import run_dir_option
from routed_nv.calc.inputs import static_view
from routed_nv.cli.agent_client import EXIT_DOWN, EXIT_ERROR, fail, print_json, table
from routed_nv.cli.endpoint_checks import missing_interface, shortened_link
from routed_nv.config.model import EndpointStyle
from routed_nv.options import agent_run_dir, config_option, config_or_exit, output_option


@click.group("endpoint")
def endpoint_group() -> None:
    """Endpoints (workloads): list them; add or remove run-time ones.

    \b
    Examples:
      routed-nv endpoint list
      routed-nv endpoint add web2 --tenant blue --address 10.0.0.5 --interface tap-web2
      routed-nv endpoint del web2
    """


@endpoint_group.command("list")
@config_option
@run_dir_option
@output_option
def endpoint_list_command(config_path: Path | None, run_dir: Path | None, output: str) -> None:
    """List local endpoints and the remote endpoint addresses the directory knows.

    Asks the running agent; without one, computes the list from the configuration (static
    remote endpoints only) and says so.

    \b
    Exit status:
      0  listed
      2  usage error, or (no agent) an invalid configuration

    \b
    Examples:
      routed-nv endpoint list
      routed-nv endpoint list -o json | jq '.endpoints[] | select(.location == "local")'
    """
    try:
        listing = ask(agent_run_dir(run_dir, config_path) / SOCKET_NAME, {"request": "endpoints"})
    except AgentDown:
        config = config_or_exit(config_path, EXIT_ERROR)
        listing = {"source": "config", "endpoints": report.endpoints(config, static_view(config))}
    except ControlError as exc:
        fail(EXIT_ERROR, str(exc))
    if output == "json":
        print_json(listing)
        return
    rows = [
        [
            e["name"] or "-",
            e["tenant"],
            " ".join(e["addresses"]),
            e["location"],
            e["host"] if e["location"] == "remote" else e["interface"] or f"netns {e['netns']}",
        ]
        for e in listing["endpoints"]
    ]
    click.echo(table(["NAME", "TENANT", "ADDRESSES", "LOCATION", "HOST/INTERFACE"], rows))
    source = listing["source"]
    click.echo(
        "(from the running agent)"
        if source == "agent"
        else "(from the configuration: no agent is running)"
    )


@endpoint_group.command("add")
@click.argument("name")
@click.option("--tenant", required=True, help="The tenant's name.")
@click.option(
    "--address", "addresses", multiple=True, required=True, help="An address (repeatable)."
)
@click.option("--interface", default=None, help="The existing host-side tap or veth.")
@click.option(
    "--allow-missing-interface",
    is_flag=True,
    help="Add it although --interface does not exist yet (a libvirt tap appears when its VM "
    "starts); until it does, the agent's applies fail for it and status shows the error.",
)
@click.option("--netns", default=None, help="Or: the workload's netns (routed_nv makes the veth).")
@click.option(
    "--style",
    type=click.Choice([s.value for s in EndpointStyle]),
    default=EndpointStyle.HOST.value,
    show_default=True,
)
@config_option
@run_dir_option
@output_option
def endpoint_add_command(
    name: str,
    tenant: str,
    addresses: tuple[str, ...],
    interface: str | None,
    allow_missing_interface: bool,
    netns: str | None,
    style: str,
    config_path: Path | None,
    run_dir: Path | None,
    output: str,
) -> None:
    """Add (or replace) endpoint NAME in routed_nv's run-time drop-in and reload the agent.

    The drop-in is conf.d/90-routed-nv-runtime.toml beside the host file; files the
    configuration tool owns are never rewritten. The whole configuration is validated with the
    change before the file is replaced; an invalid change leaves everything as it was.
    Concurrent `endpoint add|del` take turns on a lock (conf.d/.90-routed-nv-runtime.toml.lock),
    and each replaces the file atomically, so none loses another's change.

    --interface must exist in the network namespace the command runs in (the host's): a typo
    would otherwise leave the agent failing. With --netns routed_nv makes the veth pair, whose
    host side is rnv-e<NAME>; a NAME longer than 10 characters is cut and ends in a hash
    (link names have at most 15), and the output says so.

    \b
    Exit status:
      0  added or replaced (the agent reloads; without one it applies at its start)
      1  --interface does not exist on this host (nothing changed)
      2  usage error, an invalid endpoint (every problem is printed), a name that the
         configuration files define, or a drop-in that cannot be written (nothing changed)

    \b
    Examples:
      routed-nv endpoint add web2 --tenant blue --address 10.0.0.5 --address fd10::5 \\
          --interface tap-web2
      routed-nv endpoint add vm7 --tenant blue --address 10.0.0.7 --interface vnet7 \\
          --allow-missing-interface
      routed-nv endpoint add db --tenant red --address 10.0.0.9 --netns red-db -o json
    """
    notes: list[str] = []
    if interface is not None and (missing := missing_interface(interface)):
        if not allow_missing_interface:
            fail(
                EXIT_DOWN,
                f"{missing}; nothing changed (--allow-missing-interface if it comes later)",
            )
        click.echo(f"warning: {missing}: the agent's applies fail for it until it does", err=True)
    if netns is not None and (note := shortened_link(name)):
        notes.append(note)
    entry: dict[str, Any] = {"tenant": tenant, "addresses": list(addresses), "style": style}
    entry |= {k: v for k, v in (("interface", interface), ("netns", netns)) if v is not None}
    try:
        verb, _ = runtime.add(config_path, name, entry)
    except runtime.Refused as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        sys.exit(EXIT_ERROR)
    _changed(name, verb, config_path, run_dir, output, notes)


@endpoint_group.command("del")
@click.argument("name")
@config_option
@run_dir_option
@output_option
def endpoint_del_command(
    name: str, config_path: Path | None, run_dir: Path | None, output: str
) -> None:
    """Remove run-time endpoint NAME (one `endpoint add` made) and reload the agent.

    \b
    Exit status:
      0  removed
      1  no run-time endpoint of that name
      2  usage error, a name that the configuration files define, or a drop-in that cannot be
         written (nothing changed)

    \b
    Examples:
      routed-nv endpoint del web2
    """
    try:
        runtime.delete(config_path, name)
    except runtime.Refused as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        sys.exit(EXIT_DOWN if exc.not_found else EXIT_ERROR)
    _changed(name, "deleted", config_path, run_dir, output)


def _changed(
    name: str,
    verb: str,
    config_path: Path | None,
    run_dir: Path | None,
    output: str,
    notes: list[str] | None = None,
) -> None:
    try:
        ask(agent_run_dir(run_dir, config_path) / SOCKET_NAME, {"request": "reload"})
        reload = "requested"
    except ControlError:
        reload = "no-agent"
    path = runtime.drop_in_path(config_path)
    if output == "json":
        print_json(
            {"endpoint": name, "action": verb, "file": str(path), "reload": reload}
            | ({"notes": notes} if notes else {})
        )
        return
    click.echo(f"{verb} endpoint {name} in {path}")
    for note in notes or ():
        click.echo(f"note: {note}")
    click.echo(
        "agent reload requested"
        if reload == "requested"
        else "no agent is running: it takes effect when one starts"
    )
