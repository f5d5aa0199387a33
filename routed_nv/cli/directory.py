"""`routed-nv directory ...`: the directory as the running agent sees it."""

from __future__ import annotations

from pathlib import Path

import click

from routed_nv.agent.options import run_dir_option
from routed_nv.cli.agent_client import ask_agent, print_json, table
from routed_nv.options import agent_run_dir, config_option, output_option


@click.group("directory")
def directory_group() -> None:
    """The directory as the running agent sees it.

    \b
    Examples:
      routed-nv directory dump
      routed-nv directory clear-duplicate blue 10.0.0.2
    """


@directory_group.command("clear-duplicate")
@click.argument("tenant")
@click.argument("address")
@config_option
@run_dir_option
def directory_clear_duplicate_command(
    tenant: str, address: str, config_path: Path | None, run_dir: Path | None
) -> None:
    """Unfreeze ADDRESS of TENANT (name or id), which `status` reports as a duplicate: this
    host counts its moves from zero again and, if it holds the address stale, announces it
    again after directory.reassert_after_s. Clear it on the host that holds it stale.

    \b
    Exit status:
      0  cleared
      1  the agent is not running, or the address is not a duplicate
      2  usage error: unknown tenant, not an address

    \b
    Examples:
      routed-nv directory clear-duplicate blue 10.0.0.2
      routed-nv directory clear-duplicate 100 fd10::2
    """
    request = {"request": "clear-duplicate", "tenant": tenant, "address": address}
    cleared = ask_agent(agent_run_dir(run_dir, config_path), request)["cleared"]
    click.echo(f"cleared duplicate {cleared['prefix']} (tenant {cleared['tenant_id']})")


@directory_group.command("dump")
@config_option
@run_dir_option
@output_option
def directory_dump_command(config_path: Path | None, run_dir: Path | None, output: str) -> None:
    """Every remote route the agent applies (tenant, address, owning host, next hop), and the
    routes the directory source rejected, with why.

    \b
    Exit status:
      0  dumped
      1  the agent is not running
      2  usage error

    \b
    Examples:
      routed-nv directory dump
      routed-nv directory dump -o json | jq '.routes | length'
    """
    dump = ask_agent(agent_run_dir(run_dir, config_path), {"request": "directory"}, output)
    if output == "json":
        print_json(dump)
        return
    rows = [
        [r["tenant"], r["prefix"], r["host"], r["host_address"], r["next_hop"]]
        for r in dump["routes"]
    ]
    click.echo(table(["TENANT", "PREFIX", "HOST", "HOST ADDRESS", "NEXT HOP"], rows))
    sync = "in sync" if dump["in_sync"] else "NOT in sync"
    click.echo(f"source {dump['source']}, {sync}, {len(rows)} routes")
    for r in dump["rejected"]:
        click.echo(f"rejected: {r['route']}")
