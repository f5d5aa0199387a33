"""`routed-nv config ...`: check and show the effective configuration."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from routed_nv.config.crosscheck import warnings
from routed_nv.config.loader import ConfigError, default_path, load_config
from routed_nv.config.model import Config
from routed_nv.options import config_option, config_or_exit, output_option


@click.group("config")
def config_group() -> None:
    """Check or show the configuration (host file + conf.d drop-ins + ROUTED_NV_* variables)."""


@config_group.command("check")
@click.argument("path", required=False, type=click.Path(path_type=Path, dir_okay=False))
@config_option
@click.option(
    "--drop-in-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Directory of *.toml drop-ins [default: conf.d beside PATH].",
)
@click.option(
    "--as-drop-in",
    "as_drop_in",
    metavar="NAME",
    help="Check PATH as the drop-in NAME, merged with the installed host file and drop-ins.",
)
@click.option(
    "--skip-files",
    is_flag=True,
    help="Do not check the files the configuration names (keys, certificates, BGP password "
    "file), e.g. when checking it away from its host.",
)
@click.option(
    "-q",
    "--quiet",
    is_flag=True,
    help="Print no `ok` line when the configuration is valid (warnings are still printed).",
)
@output_option
def check_command(
    path: Path | None,
    config_path: Path | None,
    drop_in_dir: Path | None,
    as_drop_in: str | None,
    skip_files: bool,
    quiet: bool,
    output: str,
) -> None:
    """Validate the configuration; exit 0 when valid, 1 with one line per problem when not.

    The host file is -c/--config, as for every command; PATH, the same file given positionally,
    is kept for configuration tools (and older scripts): Ansible's `validate: routed-nv config
    check %s` checks a rendered host file before it is installed. With `--as-drop-in NAME`,
    PATH is a rendered drop-in, checked together with the installed files (the host file -c).

    Only regular files of at most 16 MiB are read. A --drop-in-dir given must exist; the
    default conf.d may be absent. The files the configuration names must exist and be readable,
    and secrets (PSK, private key, tenant keys, BGP password) must be mode 0600 or stricter;
    tenant key files (static keying) must parse as the agent reads them; this kernel must be
    able to do each tenant's protection mode (as `routed-nv doctor` lists them).

    Settings that are valid but have no effect (BGP settings while directory.source is
    "static") are named on stderr as `warning:` lines; they do not change the exit status.

    \b
    Exit status:
      0  valid (possibly with warnings)
      1  invalid (one line per problem on stderr)
      2  usage error

    \b
    Examples:
      routed-nv config check
      routed-nv config check -c /etc/routed-nv/routed-nv.toml
      routed-nv config check /tmp/rendered/routed-nv.toml
      routed-nv config check --as-drop-in 10-tenants.toml /tmp/rendered.toml
      routed-nv config check --skip-files /tmp/build/routed-nv.toml
      routed-nv config check -o json | jq -r '.problems[]?'
    """
    substitute = None
    if as_drop_in is not None:
        if path is None:
            raise click.UsageError("--as-drop-in needs the PATH of the file to check")
        substitute = (as_drop_in, path)
        path = config_path or default_path()
    else:
        path = _host_file(path, config_path)
    load = {"drop_in_dir": drop_in_dir, "substitute": substitute, "check_files": not skip_files}
    if output == "json":
        _check_json(path, load)
    config = config_or_exit(path, 1, **load)
    _warn(config)
    if not quiet:
        click.echo(
            f"ok: host {config.host.name}: {len(config.tenants)} tenants, "
            f"{len(config.endpoints)} endpoints, {len(config.peers)} peers"
        )


@config_group.command("show")
@click.argument("path", required=False, type=click.Path(path_type=Path, dir_okay=False))
@config_option
def show_command(path: Path | None, config_path: Path | None) -> None:
    """Print the effective configuration as JSON, after merging every layer and the defaults.

    The host file is -c/--config; PATH, the same positionally, is kept for compatibility.
    Settings that have no effect are named on stderr, as by `config check`.

    \b
    Exit status:
      0  printed
      1  invalid (one line per problem on stderr)
      2  usage error

    \b
    Examples:
      routed-nv config show
      routed-nv config show -c lab/host1/routed-nv.toml | jq .directory
      ROUTED_NV_HOST__UPLINK=eth1 routed-nv config show | jq .host
    """
    config = config_or_exit(_host_file(path, config_path), 1)
    _warn(config)
    click.echo(json.dumps(config.model_dump(mode="json"), indent=2))


def _host_file(path: Path | None, config_path: Path | None) -> Path | None:
    """The positional PATH (compatibility) or -c; both naming different files is an error."""
    if path is not None and config_path is not None and path != config_path:
        raise click.UsageError(f"PATH {path} and -c {config_path} name different files: give one")
    return path or config_path


def _check_json(path: Path | None, load: dict[str, Any]) -> None:
    """`config check -o json`: {"ok": ..., "problems": [...], "warnings": [...]}; exits 0 or 1."""
    try:
        config = load_config(path, **load)
    except ConfigError as exc:
        click.echo(json.dumps({"ok": False, "problems": [str(p) for p in exc.problems]}, indent=2))
        sys.exit(1)
    summary = {
        "ok": True,
        "host": config.host.name,
        "tenants": len(config.tenants),
        "endpoints": len(config.endpoints),
        "peers": len(config.peers),
        "problems": [],
        "warnings": list(warnings(config)),
    }
    click.echo(json.dumps(summary, indent=2))
    sys.exit(0)


def _warn(config: Config) -> None:
    # on stderr: stdout stays the one `ok` line or JSON that scripts read
    for warning in warnings(config):
        click.echo(f"warning: {warning}", err=True)
