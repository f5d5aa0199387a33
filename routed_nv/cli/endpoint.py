"""`routed-nv endpoint ...`: list endpoints (from the agent or the configuration); `add|del`
go through the agent's endpoint API (agent/endpoint_api.py) and answer once programmed, or
without an agent edit routed_nv's run-time drop-in for its next start."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from routed_nv.agent.options import run_dir_option
from routed_nv.cli.agent_client import (
    EXIT_DOWN,
    EXIT_ERROR,
    ask_agent,
    fail,
    print_json,
    table,
)
from routed_nv.cli.endpoint_checks import missing_interface, shortened_link
from routed_nv.control_wire import SOCKET_NAME, AgentDown, ControlError, RequestFailed, ask
from routed_nv.model.endpoint import EndpointStyle
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
        # the configuration's view (pydantic, the calculation): only without an agent
        from routed_nv.agent import report
        from routed_nv.config.views import static_view

        config = config_or_exit(config_path, EXIT_ERROR)
        listing = {"source": "config", "endpoints": report.endpoints(config, static_view(config))}
    except ControlError as exc:
        fail(EXIT_ERROR, str(exc), output)
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


def _api_options(command: Any) -> Any:
    command = click.option(
        "--timeout",
        type=click.FloatRange(min=0, min_open=True, max=600),
        default=30.0,
        show_default=True,
        help="Seconds to wait for the agent to program the change (and with --wait, announce).",
    )(command)
    return click.option(
        "--wait",
        is_flag=True,
        help="Also wait until the directory's view shows the endpoint announced by this host "
        "alone (BGP: read back from the publish table BIRD exports, and no other host announces "
        "its addresses: in a move, the old host has withdrawn; static: programmed).",
    )(command)


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
@click.option("--replace", is_flag=True, help="Replace an endpoint NAME with other fields.")
@_api_options
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
    replace: bool,
    wait: bool,
    timeout: float,
    config_path: Path | None,
    run_dir: Path | None,
    output: str,
) -> None:
    """Add endpoint NAME through the agent's endpoint API; it returns once it is programmed.

    With a running agent, the agent stores the endpoint in routed_nv's run-time drop-in
    (conf.d/90-routed-nv-runtime.toml beside the host file), applies it and answers once this
    host has programmed it (--wait: and the directory shows it announced). Without an agent the
    command writes the same drop-in itself, for the agent's next start, and says so. Files the
    configuration tool owns are never rewritten; the whole configuration is validated with the
    change first, and an invalid change leaves everything as it was. Adding the same endpoint
    again changes nothing; the same NAME with other fields is refused unless --replace.

    --interface must exist in the network namespace the command runs in (the host's): a typo
    would otherwise leave the agent failing. With --netns routed_nv makes the veth pair, whose
    host side is rnv-e<NAME>; a NAME longer than 10 characters is cut and ends in a hash
    (link names have at most 15), and the output says so.

    \b
    Exit status:
      0  programmed (without an agent: stored; it applies when one starts), or unchanged
      1  stored, but not programmed (the apply failed for it, or --timeout ran out; the agent
         keeps retrying), or --interface does not exist on this host (nothing changed)
      2  usage error, an invalid endpoint (every problem is printed), NAME exists with other
         fields (no --replace), a name that the configuration files define, or a drop-in that
         cannot be written (nothing changed)

    \b
    Examples:
      routed-nv endpoint add web2 --tenant blue --address 10.0.0.5 --address fd10::5 \\
          --interface tap-web2
      routed-nv endpoint add vm7 --tenant blue --address 10.0.0.7 --interface vnet7 \\
          --allow-missing-interface
      routed-nv endpoint add db --tenant red --address 10.0.0.9 --netns red-db --wait -o json
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
    run_dir = agent_run_dir(run_dir, config_path)
    entry: dict[str, Any] = {"tenant": tenant, "addresses": list(addresses), "style": style}
    entry |= {k: v for k, v in (("interface", interface), ("netns", netns)) if v is not None}
    request = {"request": "endpoint.add", "id": name, **entry, "replace": replace}
    answer = _ask_api(run_dir, request, timeout)
    if answer is None:
        # no agent: validate and store the change ourselves (the configuration and pydantic)
        from routed_nv.agent import runtime

        try:
            verb, _ = runtime.add(config_path, name, entry, replace)
        except runtime.Refused as exc:
            _refused(exc.problems)
        _stored(name, verb, config_path, output, notes)
        return
    if wait:
        answer["announced"] = _wait_announced(run_dir, name, timeout)
    _programmed(answer, output, notes)


@endpoint_group.command("del")
@click.argument("name")
@_api_options
@config_option
@run_dir_option
@output_option
def endpoint_del_command(
    name: str,
    wait: bool,
    timeout: float,
    config_path: Path | None,
    run_dir: Path | None,
    output: str,
) -> None:
    """Remove run-time endpoint NAME (one `endpoint add` made) through the agent's endpoint API.

    It returns once the agent has applied the removal (without an agent: removed from the
    drop-in, for the agent's next start). --wait changes nothing for a removal.

    \b
    Exit status:
      0  removed (without an agent: from the drop-in)
      1  no run-time endpoint of that name, or stored but not applied (the apply failed, or
         --timeout ran out)
      2  usage error, a name that the configuration files define, or a drop-in that cannot be
         written (nothing changed)

    \b
    Examples:
      routed-nv endpoint del web2
    """
    run_dir = agent_run_dir(run_dir, config_path)
    answer = _ask_api(run_dir, {"request": "endpoint.delete", "id": name}, timeout)
    if answer is None:
        from routed_nv.agent import runtime

        try:
            verb, _ = runtime.delete(config_path, name)
        except runtime.Refused as exc:
            _refused(exc.problems)
        if verb == "absent":
            _absent(name)
        _stored(name, verb, config_path, output)
        return
    if answer["action"] == "absent":
        _absent(name)
    _programmed(answer, output)


def _absent(name: str) -> None:
    from routed_nv.config.loader import shorten  # pydantic: only on this rare path

    fail(EXIT_DOWN, f"no run-time endpoint {shorten(name)}")


def _ask_api(run_dir: Path, request: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    """The agent's answer; None when no agent runs; exits 1 or 2 when it refuses."""
    try:
        # the agent's own timeout answers first; ours only covers an agent that hangs
        return ask(run_dir / SOCKET_NAME, {**request, "timeout": timeout}, timeout=timeout + 10)
    except AgentDown:
        return None
    except RequestFailed as exc:
        fail(EXIT_DOWN if exc.code in ("not-programmed", "timeout") else EXIT_ERROR, str(exc))
    except ControlError as exc:
        fail(EXIT_ERROR, str(exc))


def _wait_announced(run_dir: Path, name: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        state = ask_agent(run_dir, {"request": "endpoint.get", "id": name})
        if state["announced"]:
            return True
        if time.monotonic() > deadline:
            fail(
                EXIT_DOWN,
                f"endpoint {name} is programmed but not announced by this host alone after "
                f"{timeout:g} s (another host still announces it: `routed-nv status`)",
            )
        time.sleep(0.1)


def _refused(problems: list[str]) -> None:
    for problem in problems:
        click.echo(problem, err=True)
    sys.exit(EXIT_ERROR)


def _stored(
    name: str, verb: str, config_path: Path | None, output: str, notes: list[str] | None = None
) -> None:
    from routed_nv.agent import runtime

    path = runtime.drop_in_path(config_path)
    if output == "json":
        print_json(
            {"endpoint": name, "action": verb, "file": str(path), "agent": None}
            | ({"notes": notes} if notes else {})
        )
        return
    for note in notes or ():
        click.echo(f"note: {note}")
    click.echo(f"{verb} endpoint {name} in {path}")
    click.echo("no agent is running: it takes effect when one starts")


def _programmed(answer: dict[str, Any], output: str, notes: list[str] | None = None) -> None:
    if output == "json":
        print_json(
            {"endpoint": answer["id"], "action": answer["action"], "agent": answer}
            | ({"notes": notes} if notes else {})
        )
        return
    for note in notes or ():
        click.echo(f"note: {note}")
    apply = answer["apply"]
    click.echo(
        f"{answer['action']} endpoint {answer['id']}: programmed by the agent "
        f"(apply {apply['trigger']}, {apply['changes']} changes, {apply['seconds']:.2f} s)"
    )
    if answer.get("announced"):
        click.echo("announced in the directory")
    for error in answer["other_errors"]:
        click.echo(f"warning: the same apply failed elsewhere: {error}", err=True)
