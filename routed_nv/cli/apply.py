"""`routed-nv apply`: one reconcile of this host's datapath from its configuration."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

from routed_nv.agent.options import run_dir_option
from routed_nv.config.model import Config, DirectorySourceKind
from routed_nv.options import config_option, config_or_exit, netns_option, output_option

if TYPE_CHECKING:
    from routed_nv.model.directory import DirectoryView

EXIT_OK = 0
EXIT_CHANGES = 1  # --dry-run found something to change
EXIT_FAILED = 2  # the configuration is invalid (nothing applied) or some objects failed


@click.command("apply")
@config_option
@netns_option
@run_dir_option
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@output_option
def apply_command(
    config_path: Path | None, netns: str | None, run_dir: Path | None, dry_run: bool, output: str
) -> None:
    """Bring this host's datapath to what the configuration says, changing only what differs.

    Reads the kernel back (links, VRFs, routes, XFRM states and policies, RNV-* iptables
    chains), compares it with the desired state and makes the minimal changes: in the order
    netfilter, XFRM, routing, so isolation is in place before anything routes. Objects routed_nv
    owns but no longer wants are removed; nothing it does not own is touched. A failing object is
    reported and the others are still programmed; run apply again to retry it.

    Remote endpoints come from the configuration's static `peers` and `remote_endpoints`, or,
    with directory.source = "bgp", from the running agent: apply asks it (control socket in
    --run-dir, default agent.run_dir) for the directory view it last applied, so nothing
    learned is deleted, and refuses when no agent answers.

    \b
    Exit status:
      0  applied (or, with --dry-run, nothing to change)
      1  --dry-run: there are changes to make (the plan is printed)
      2  the configuration is invalid (nothing was applied), some objects failed, or
         (directory.source = "bgp") no agent answers with its directory view

    \b
    Examples:
      routed-nv apply
      routed-nv apply --dry-run; echo $?
      routed-nv apply -c /etc/routed-nv/routed-nv.toml -o json
      ip netns exec host1 routed-nv apply -c lab/host1.toml
    """
    config = config_or_exit(config_path, EXIT_FAILED)

    view = _directory_view(config, run_dir or config.agent.run_dir)
    # The drivers import pyroute2: only load them when a command needs the kernel.
    from routed_nv.agent.wiring import build_datapath

    datapath = build_datapath(config, netns)
    outcome = datapath.plan(config, view) if dry_run else datapath.apply(config, view)
    if output == "json":
        click.echo(
            json.dumps(
                {
                    "dry_run": dry_run,
                    "changed": outcome.changed,
                    "ok": outcome.ok,
                    "stages": [
                        {
                            "name": s.name,
                            "changes": s.lines,
                            "errors": [str(e) for e in s.errors],
                            "pending": s.pending,
                            "seconds": round(s.seconds, 3),
                        }
                        for s in outcome.stages
                    ],
                },
                indent=2,
            )
        )
    else:
        for stage in outcome.stages:
            for line in stage.lines:
                click.echo(f"{stage.name}: {line}")
            for line in stage.pending:
                click.echo(f"{stage.name}: wait for {line}")
            for error in stage.errors:
                click.echo(f"{stage.name}: error: {error}", err=True)
        verb = "to change" if dry_run else "changed"
        counts = ", ".join(f"{s.name} {len(s.lines)} ({s.seconds:.2f} s)" for s in outcome.stages)
        click.echo(f"{verb}: {counts}")
    if not outcome.ok:
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_CHANGES if dry_run and outcome.changed else EXIT_OK)


def _directory_view(config: Config, run_dir: Path) -> DirectoryView:
    """The remote endpoints to plan with: the static entries, or the running agent's view."""
    from routed_nv.config.views import static_view

    if config.directory.source is not DirectorySourceKind.BGP:
        return static_view(config)
    from routed_nv.agent import view_json
    from routed_nv.agent.control import SOCKET_NAME, AgentDown, ControlError, ask

    why = 'directory.source is "bgp": only the running agent knows the remote endpoints'
    try:
        answer = ask(run_dir / SOCKET_NAME, {"request": "view"})
    except AgentDown as exc:
        _refuse(f"{why}, and {exc}; start it (systemctl start routed-nv) and apply again")
    except ControlError as exc:
        _refuse(f"{why}, and asking it failed: {exc}")
    if not answer.get("applied"):
        _refuse(f"{why}, and it has not applied a view yet: apply again when it is ready")
    try:
        return view_json.decode(answer["view"])
    except (KeyError, TypeError, ValueError) as exc:
        _refuse(f"{why}, and its view is not one this routed-nv reads ({exc!r})")


def _refuse(message: str) -> NoReturn:
    click.echo(f"error: {message}; nothing was planned or changed", err=True)
    sys.exit(EXIT_FAILED)
