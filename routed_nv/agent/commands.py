"""`routed-nv apply`: one reconcile of this host's datapath from its configuration."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from routed_nv.options import config_option, config_or_exit, netns_option, output_option

EXIT_OK = 0
EXIT_CHANGES = 1  # --dry-run found something to change
EXIT_FAILED = 2  # the configuration is invalid (nothing applied) or some objects failed


@click.command("apply")
@config_option
@netns_option
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@output_option
def apply_command(config_path: Path | None, netns: str | None, dry_run: bool, output: str) -> None:
    """Bring this host's datapath to what the configuration says, changing only what differs.

    Reads the kernel back (links, VRFs, routes, XFRM states and policies, RNV-* iptables
    chains), compares it with the desired state and makes the minimal changes: in the order
    netfilter, XFRM, routing, so isolation is in place before anything routes. Objects routed_nv
    owns but no longer wants are removed; nothing it does not own is touched. A failing object is
    reported and the others are still programmed; run apply again to retry it.

    Remote endpoints come from the configuration's static `peers` and `remote_endpoints` until
    the directory provides them.

    \b
    Exit status:
      0  applied (or, with --dry-run, nothing to change)
      1  --dry-run: there are changes to make (the plan is printed)
      2  the configuration is invalid (nothing was applied) or some objects failed

    \b
    Examples:
      routed-nv apply
      routed-nv apply --dry-run; echo $?
      routed-nv apply -c /etc/routed-nv/routed-nv.toml -o json
      ip netns exec host1 routed-nv apply -c lab/host1.toml
    """
    config = config_or_exit(config_path, EXIT_FAILED)

    # The drivers import pyroute2: only load them when a command needs the kernel.
    from routed_nv.agent.datapath import Datapath
    from routed_nv.calc.inputs import static_view

    datapath = Datapath(config, netns)
    view = static_view(config)
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
                            "errors": s.errors,
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
