"""`routed-nv lookup`: where an endpoint address lives, from the agent or the configuration."""

from __future__ import annotations

import time
from pathlib import Path

import click

from routed_nv.agent import report
from routed_nv.agent.control import SOCKET_NAME, AgentDown, ControlError, RequestFailed, ask
from routed_nv.agent.options import run_dir_option
from routed_nv.cli.agent_client import EXIT_DOWN, EXIT_ERROR, fail, print_json
from routed_nv.cli.status import ago
from routed_nv.config.views import static_view
from routed_nv.options import agent_run_dir, config_option, config_or_exit, output_option

KERNEL_ROUTE = {
    "missing": "MISSING (the agent repairs it on its next resync; `routed-nv apply --dry-run`)",
    "different": "DIFFERENT from the directory's (repaired on the next resync)",
    "unexpected": "not the one the agent wants there (repaired on the next resync)",
    "unknown": "not checked yet",
}


@click.command("lookup")
@click.argument("tenant")
@click.argument("address")
@config_option
@run_dir_option
@output_option
def lookup_command(
    tenant: str, address: str, config_path: Path | None, run_dir: Path | None, output: str
) -> None:
    """Where ADDRESS of TENANT (name or id) lives: this host or which peer, the tenant outer
    addresses, and the SPIs of the SAs both ways.

    Asks the running agent; without one, answers from the configuration (static entries only,
    SPIs unknown) and says so.

    \b
    Exit status:
      0  found
      1  no such endpoint address in that tenant
      2  usage error: unknown tenant, not an address, invalid configuration

    \b
    Examples:
      routed-nv lookup blue 10.0.0.2
      routed-nv lookup 100 fd10::2 -o json
    """
    try:
        found = ask(
            agent_run_dir(run_dir, config_path) / SOCKET_NAME,
            {"request": "lookup", "tenant": tenant, "address": address},
        )
        found["source"] = "agent"
    except AgentDown:
        config = config_or_exit(config_path, EXIT_ERROR)
        try:
            found = report.lookup(config, static_view(config), None, tenant, address)
        except report.QueryError as exc:
            fail(EXIT_ERROR, str(exc), output)
        if found is None:
            message = f"no endpoint {address} in tenant {tenant} (from the configuration)"
            fail(EXIT_DOWN, message, output, agent="down", source="config", found=False)
        found["source"] = "config"
    except RequestFailed as exc:
        missing = exc.code == "not-found"
        extra = {"source": "agent", "found": False} if missing else {}
        fail(EXIT_DOWN if missing else EXIT_ERROR, str(exc), output, **extra)
    except ControlError as exc:
        fail(EXIT_ERROR, str(exc), output)
    if output == "json":
        print_json(found)
        return
    where = (
        f"local endpoint {found['endpoint']}"
        if found["location"] == "local"
        else f"host {found['host']} ({found['host_address']})"
    )
    click.echo(f"{found['tenant']} {found['address']}: {where}")
    click.echo(f"  tenant outer address: {found['tenant_address']}")
    route = found.get("kernel_route")
    if route is not None and route != "ok":
        checked = found.get("kernel_checked")
        age = f" (checked {ago(checked, time.time())})" if checked else ""
        click.echo(f"  kernel route: {KERNEL_ROUTE[route]}{age}")
    spis = found.get("spis")
    if found["location"] == "remote":
        if spis is None:
            click.echo("  SPIs: unknown (no agent running)")
        else:
            click.echo(
                f"  SPIs out: {' '.join(spis['out']) or '-'}  in: {' '.join(spis['in']) or '-'}"
            )
    click.echo(f"  (from the {'running agent' if found['source'] == 'agent' else 'configuration'})")
