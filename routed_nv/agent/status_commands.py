"""Commands that ask the running agent (over its control socket): status, lookup, endpoints,
the directory; and `endpoint add|del`, which edit routed_nv's run-time drop-in and reload it."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from routed_nv.agent import report, runtime
from routed_nv.agent.control import SOCKET_NAME, AgentDown, ControlError, RequestFailed, ask
from routed_nv.agent.options import run_dir_option
from routed_nv.calc.inputs import static_view
from routed_nv.config.model import EndpointStyle
from routed_nv.options import config_option, config_or_exit, output_option

EXIT_OK = 0
EXIT_DOWN = 1  # no agent answers, or the thing asked for does not exist
EXIT_ERROR = 2  # usage error, invalid configuration, refused change


def _ask(run_dir: Path, request: dict[str, Any]) -> Any:
    """The agent's answer; exits 1 (not running, not found) or 2 (refused) otherwise."""
    try:
        return ask(run_dir / SOCKET_NAME, request)
    except AgentDown as exc:
        _fail(EXIT_DOWN, f"routed-nv agent is not running: {exc}")
    except RequestFailed as exc:
        _fail(EXIT_DOWN if exc.code == "not-found" else EXIT_ERROR, str(exc))
    except ControlError as exc:
        _fail(EXIT_ERROR, str(exc))


def _fail(code: int, message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    """An ASCII table like `calicoctl node status`."""
    widths = [max(len(x) for x in col) for col in zip(headers, *rows, strict=True)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: list[str]) -> str:
        padded = (f" {c:<{w}} " for c, w in zip(cells, widths, strict=True))
        return "|" + "|".join(padded) + "|"

    return "\n".join([rule, line(headers), rule, *(line(r) for r in rows), rule])


def _ago(stamp: str | None, now: float) -> str:
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
@run_dir_option
@click.option("--brief", is_flag=True, help="One line: state, directory, counts, last apply.")
@output_option
def status_command(run_dir: Path, brief: bool, output: str) -> None:
    """Show the running agent: its state, directory source and peers, datapath, last apply.

    \b
    Exit status:
      0  the agent answered (whatever its state)
      1  the agent is not running
      2  usage error, or the control socket is not ours to use

    \b
    Examples:
      routed-nv status
      routed-nv status --brief
      routed-nv status -o json | jq .last_apply
      routed-nv status --run-dir /tmp/rnv/host1
    """
    try:
        status = ask(run_dir / SOCKET_NAME, {"request": "status"})
    except AgentDown as exc:
        if output == "json":
            _json({"agent": {"state": "not-running", "error": str(exc)}})
        else:
            click.echo(f"routed-nv agent: not running ({exc})")
        sys.exit(EXIT_DOWN)
    except ControlError as exc:
        _fail(EXIT_ERROR, str(exc))
    if output == "json":
        _json(status)
    elif brief:
        click.echo(brief_line(status, time.time()))
    else:
        click.echo(status_table(status, time.time()))


def brief_line(s: dict[str, Any], now: float) -> str:
    a, d, p, last = s["agent"], s["directory"], s["datapath"], s["last_apply"]
    sync = "in sync" if d["in_sync"] else "NOT in sync"
    apply = "no apply yet"
    if last is not None:
        result = "ok" if last["ok"] else f"FAILED ({len(last['errors'])} errors)"
        apply = f"last apply {result} {_ago(last['time'], now)} ({last['seconds']:.2f} s)"
    return (
        f"{a['state']}: directory {d['source']} {sync}, {d['peers_up']} peers up; "
        f"{p['local_endpoints']} local / {p['remote_addresses']} remote, {p['sas']} SAs; {apply}"
    )


def status_table(s: dict[str, Any], now: float) -> str:
    a, d, p, last = s["agent"], s["directory"], s["datapath"], s["last_apply"]
    lines = [
        f"Agent:      {a['state']} (host {a['host']}, pid {a['pid']}, "
        f"up {_duration(a['uptime_s'])}, routed-nv {a['version']})",
        f"Directory:  {d['source']}, {'in sync' if d['in_sync'] else 'NOT in sync'}"
        + (f" ({d['detail']})" if d["detail"] else ""),
    ]
    if d["peers"]:
        rows = [[x["name"], x["address"], x["state"], x["since"], x["info"]] for x in d["peers"]]
        lines.append(_table(["PEER", "ADDRESS", "STATE", "SINCE", "INFO"], rows))
    lines.append(
        f"Datapath:   {p['tenants']} tenants, {p['local_endpoints']} local endpoints, "
        f"{p['remote_addresses']} remote addresses, {p['routes']} routes, {p['sas']} SAs"
    )
    if last is None:
        lines.append("Last apply: none yet")
    else:
        lines.append(
            f"Last apply: {'ok' if last['ok'] else 'FAILED'}, {last['changes']} changes in "
            f"{last['seconds']:.2f} s, {_ago(last['time'], now)} (trigger {last['trigger']}); "
            f"last ok {_ago(s['last_ok'], now)}"
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


@click.command("lookup")
@click.argument("tenant")
@click.argument("address")
@config_option
@run_dir_option
@output_option
def lookup_command(
    tenant: str, address: str, config_path: Path | None, run_dir: Path, output: str
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
            run_dir / SOCKET_NAME, {"request": "lookup", "tenant": tenant, "address": address}
        )
        found["source"] = "agent"
    except AgentDown:
        config = config_or_exit(config_path, EXIT_ERROR)
        try:
            found = report.lookup(config, static_view(config), None, tenant, address)
        except report.QueryError as exc:
            _fail(EXIT_ERROR, str(exc))
        if found is None:
            _fail(EXIT_DOWN, f"no endpoint {address} in tenant {tenant} (from the configuration)")
        found["source"] = "config"
    except RequestFailed as exc:
        _fail(EXIT_DOWN if exc.code == "not-found" else EXIT_ERROR, str(exc))
    except ControlError as exc:
        _fail(EXIT_ERROR, str(exc))
    if output == "json":
        _json(found)
        return
    where = (
        f"local endpoint {found['endpoint']}"
        if found["location"] == "local"
        else f"host {found['host']} ({found['host_address']})"
    )
    click.echo(f"{found['tenant']} {found['address']}: {where}")
    click.echo(f"  tenant outer address: {found['tenant_address']}")
    spis = found.get("spis")
    if found["location"] == "remote":
        if spis is None:
            click.echo("  SPIs: unknown (no agent running)")
        else:
            click.echo(
                f"  SPIs out: {' '.join(spis['out']) or '-'}  in: {' '.join(spis['in']) or '-'}"
            )
    click.echo(f"  (from the {'running agent' if found['source'] == 'agent' else 'configuration'})")


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
def endpoint_list_command(config_path: Path | None, run_dir: Path, output: str) -> None:
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
        listing = ask(run_dir / SOCKET_NAME, {"request": "endpoints"})
    except AgentDown:
        config = config_or_exit(config_path, EXIT_ERROR)
        listing = {"source": "config", "endpoints": report.endpoints(config, static_view(config))}
    except ControlError as exc:
        _fail(EXIT_ERROR, str(exc))
    if output == "json":
        _json(listing)
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
    click.echo(_table(["NAME", "TENANT", "ADDRESSES", "LOCATION", "HOST/INTERFACE"], rows))
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
    netns: str | None,
    style: str,
    config_path: Path | None,
    run_dir: Path,
    output: str,
) -> None:
    """Add (or replace) endpoint NAME in routed_nv's run-time drop-in and reload the agent.

    The drop-in is conf.d/90-routed-nv-runtime.toml beside the host file; files the
    configuration tool owns are never rewritten. The whole configuration is validated with the
    change before the file is replaced; an invalid change leaves everything as it was.
    Concurrent `endpoint add|del` take turns on a lock (conf.d/.90-routed-nv-runtime.toml.lock),
    and each replaces the file atomically, so none loses another's change.

    \b
    Exit status:
      0  added or replaced (the agent reloads; without one it applies at its start)
      2  usage error, an invalid endpoint (every problem is printed), a name that the
         configuration files define, or a drop-in that cannot be written (nothing changed)

    \b
    Examples:
      routed-nv endpoint add web2 --tenant blue --address 10.0.0.5 --address fd10::5 \\
          --interface tap-web2
      routed-nv endpoint add db --tenant red --address 10.0.0.9 --netns red-db -o json
    """
    entry: dict[str, Any] = {"tenant": tenant, "addresses": list(addresses), "style": style}
    entry |= {k: v for k, v in (("interface", interface), ("netns", netns)) if v is not None}
    try:
        verb, _ = runtime.add(config_path, name, entry)
    except runtime.Refused as exc:
        for problem in exc.problems:
            click.echo(problem, err=True)
        sys.exit(EXIT_ERROR)
    _changed(name, verb, config_path, run_dir, output)


@endpoint_group.command("del")
@click.argument("name")
@config_option
@run_dir_option
@output_option
def endpoint_del_command(name: str, config_path: Path | None, run_dir: Path, output: str) -> None:
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


def _changed(name: str, verb: str, config_path: Path | None, run_dir: Path, output: str) -> None:
    try:
        ask(run_dir / SOCKET_NAME, {"request": "reload"})
        reload = "requested"
    except ControlError:
        reload = "no-agent"
    path = runtime.drop_in_path(config_path)
    if output == "json":
        _json({"endpoint": name, "action": verb, "file": str(path), "reload": reload})
        return
    click.echo(f"{verb} endpoint {name} in {path}")
    click.echo(
        "agent reload requested"
        if reload == "requested"
        else "no agent is running: it takes effect when one starts"
    )


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
@run_dir_option
def directory_clear_duplicate_command(tenant: str, address: str, run_dir: Path) -> None:
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
    done = _ask(run_dir, {"request": "clear-duplicate", "tenant": tenant, "address": address})
    cleared = done["cleared"]
    click.echo(f"cleared duplicate {cleared['prefix']} (tenant {cleared['tenant_id']})")


@directory_group.command("dump")
@run_dir_option
@output_option
def directory_dump_command(run_dir: Path, output: str) -> None:
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
    dump = _ask(run_dir, {"request": "directory"})
    if output == "json":
        _json(dump)
        return
    rows = [
        [r["tenant"], r["prefix"], r["host"], r["host_address"], r["next_hop"]]
        for r in dump["routes"]
    ]
    click.echo(_table(["TENANT", "PREFIX", "HOST", "HOST ADDRESS", "NEXT HOP"], rows))
    sync = "in sync" if dump["in_sync"] else "NOT in sync"
    click.echo(f"source {dump['source']}, {sync}, {len(rows)} routes")
    for r in dump["rejected"]:
        click.echo(f"rejected: {r['route']}")
