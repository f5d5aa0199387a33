"""`routed-nv status`: the running agent's state, directory, datapath and last apply."""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from routed_nv.agent.control import SOCKET_NAME, AgentDown, ControlError, ask
from routed_nv.agent.options import run_dir_option
from routed_nv.cli.agent_client import EXIT_DOWN, EXIT_ERROR, fail, print_json, table
from routed_nv.options import agent_run_dir, config_option, output_option

EXIT_NOT_READY = 3  # --brief: a monitoring check's "answered, but not ready"


def ago(stamp: str | None, now: float) -> str:
    if stamp is None:
        return "never"
    return f"{_duration(now - datetime.fromisoformat(stamp).timestamp())} ago"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m"


@click.command("status")
@config_option
@run_dir_option
@click.option("--brief", is_flag=True, help="One line: state, directory, counts, last apply.")
@output_option
def status_command(
    config_path: Path | None, run_dir: Path | None, brief: bool, output: str
) -> None:
    """Show the running agent: its state, directory source and peers, datapath, last apply.

    The agent is degraded when its last apply failed, or when the directory it applied from is
    not in sync (BIRD unreachable, no route reflector session): the reason is shown.

    \b
    Exit status:
      0  the agent answered (whatever its state; with --brief: it is ready)
      1  the agent is not running
      2  usage error, or the control socket is not ours to use
      3  (--brief only) the agent answered but is not ready: starting, degraded, stopping

    \b
    Examples:
      routed-nv status
      routed-nv status --brief
      routed-nv status -o json | jq .last_apply
      routed-nv status --run-dir /tmp/rnv/host1
      routed-nv status -c lab/host1/routed-nv.toml
    """
    try:
        status = ask(agent_run_dir(run_dir, config_path) / SOCKET_NAME, {"request": "status"})
    except AgentDown as exc:
        if output == "json":
            print_json({"agent": {"state": "not-running", "error": str(exc)}})
        else:
            click.echo(f"routed-nv agent: not running ({exc})")
        sys.exit(EXIT_DOWN)
    except ControlError as exc:
        fail(EXIT_ERROR, str(exc), output)
    if output == "json":
        print_json(status)
    elif brief:
        click.echo(brief_line(status, time.time()))
        if status["agent"]["state"] != "ready":
            sys.exit(EXIT_NOT_READY)
    else:
        click.echo(status_table(status, time.time()))


def brief_line(s: dict[str, Any], now: float) -> str:
    a, d, p, last = s["agent"], s["directory"], s["datapath"], s["last_apply"]
    sync = "in sync" if d["in_sync"] else "NOT in sync"
    apply = "no apply yet"
    if last is not None:
        result = "ok" if last["ok"] else f"FAILED ({len(last['errors'])} errors)"
        apply = f"last apply {result} {ago(last['time'], now)} ({last['seconds']:.2f} s)"
    return (
        f"{a['state']}{_reason(a)}: directory {d['source']} {sync}, {d['peers_up']} peers up; "
        f"{p['local_endpoints']} local / {p['remote_addresses']} remote, {p['sas']} SAs; "
        f"kernel {kernel_text(s.get('kernel'), now)}; {apply}"
    )


def _reason(a: dict[str, Any]) -> str:
    return f" ({a['reason']})" if a.get("reason") else ""


def kernel_text(k: dict[str, Any] | None, now: float) -> str:
    """ "in sync" or "N objects differ", with when the agent last compared."""
    if k is None or k["in_sync"] is None:
        return "not checked yet"
    state = "in sync" if k["in_sync"] else f"{k['differ']} objects differ"
    return f"{state} (checked {ago(k['checked'], now)})"


def status_table(s: dict[str, Any], now: float) -> str:
    a, d, p, last = s["agent"], s["directory"], s["datapath"], s["last_apply"]
    lines = [
        f"Agent:      {a['state']}{_reason(a)} (host {a['host']}, pid {a['pid']}, "
        f"up {_duration(a['uptime_s'])}, routed-nv {a['version']})",
        f"Directory:  {d['source']}, {'in sync' if d['in_sync'] else 'NOT in sync'}"
        + (f" ({d['detail']})" if d["detail"] else ""),
    ]
    if d["peers"]:
        columns = ("name", "address", "state", "since", "info")
        rows = [[x.get(c, "-") for c in columns] for x in d["peers"]]
        lines.append(table(["PEER", "ADDRESS", "STATE", "SINCE", "INFO"], rows))
    lines.append(
        f"Datapath:   {p['tenants']} tenants, {p['local_endpoints']} local endpoints, "
        f"{p['remote_addresses']} remote addresses, {p['routes']} routes, "
        f"{p['sas']} SAs in the kernel"
    )
    k = s.get("kernel")
    lines.append(f"Kernel:     {kernel_text(k, now)}")
    lines += [f"  {x}" for x in (k or {}).get("objects", [])]
    if last is None:
        lines.append("Last apply: none yet")
    else:
        lines.append(
            f"Last apply: {'ok' if last['ok'] else 'FAILED'}, {last['changes']} changes in "
            f"{last['seconds']:.2f} s, {ago(last['time'], now)} (trigger {last['trigger']}); "
            f"last ok {ago(s['last_ok'], now)}"
        )
        lines += [f"  error: {e}" for e in last["errors"]]
    lines.append(
        f"Totals:     {s['reconciles']} applies, {s['reconcile_errors']} with errors, "
        f"{s['config_errors']} refused reloads"
    )
    rejected = d["rejected"]
    lines.append(f"Rejected:   {len(rejected) or 'no'} directory routes")
    lines += [f"  {r['route']}" for r in rejected]
    if dups := d.get("duplicates"):
        lines.append(f"Duplicates: {len(dups)} local addresses another host announces too")
        lines += [
            f"  {x['prefix']} (tenant {x['tenant']}): hosts {' and '.join(x['hosts'])} "
            f"({x['other_address']}), {x['moves']} moves, "
            + (f"FROZEN at {x['held_by']}" if x["frozen"] else f"held by {x['held_by']}")
            for x in dups
        ]
    if stale := d.get("stale"):
        lines.append(f"Stale:      {len(stale)} local addresses announced later by another host")
        lines += [
            f"  {x['prefix']} (tenant {x['tenant_id']}): {x['host_address']} has sequence "
            f"{x['sequence']}"
            for x in stale
        ]
    return "\n".join(lines)
