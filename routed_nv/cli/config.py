"""`routed-nv config ...`: check and show the effective configuration."""

from __future__ import annotations

import json
from pathlib import Path

import click

from routed_nv.config.loader import default_path
from routed_nv.options import config_or_exit


@click.group("config")
def config_group() -> None:
    """Check or show the configuration (host file + conf.d drop-ins + ROUTED_NV_* variables)."""


@config_group.command("check")
@click.argument("path", required=False, type=click.Path(path_type=Path, dir_okay=False))
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
@click.option("-q", "--quiet", is_flag=True, help="Print nothing when the configuration is valid.")
def check_command(
    path: Path | None,
    drop_in_dir: Path | None,
    as_drop_in: str | None,
    skip_files: bool,
    quiet: bool,
) -> None:
    """Validate the configuration; exit 0 when valid, 1 with one line per problem when not.

    PATH defaults to $ROUTED_NV_CONFIG or /etc/routed-nv/routed-nv.toml. Made for configuration
    tools: Ansible's `validate: routed-nv config check %s` checks a rendered host file before it
    is installed; `--as-drop-in NAME` checks a rendered drop-in together with the installed files.

    Only regular files of at most 16 MiB are read. A --drop-in-dir given must exist; the
    default conf.d may be absent. The files the configuration names must exist and be readable,
    and secrets (PSK, private key, tenant keys, BGP password) must be mode 0600 or stricter.

    \b
    Exit status:
      0  valid
      1  invalid (one line per problem on stderr)
      2  usage error

    \b
    Examples:
      routed-nv config check
      routed-nv config check /etc/routed-nv/routed-nv.toml
      routed-nv config check --as-drop-in 10-tenants.toml /tmp/rendered.toml
      routed-nv config check --skip-files /tmp/build/routed-nv.toml
    """
    substitute = None
    if as_drop_in is not None:
        if path is None:
            raise click.UsageError("--as-drop-in needs the PATH of the file to check")
        substitute = (as_drop_in, path)
        path = default_path()
    config = config_or_exit(
        path, 1, drop_in_dir=drop_in_dir, substitute=substitute, check_files=not skip_files
    )
    if not quiet:
        click.echo(
            f"ok: host {config.host.name}: {len(config.tenants)} tenants, "
            f"{len(config.endpoints)} endpoints, {len(config.peers)} peers"
        )


@config_group.command("show")
@click.argument("path", required=False, type=click.Path(path_type=Path, dir_okay=False))
def show_command(path: Path | None) -> None:
    """Print the effective configuration as JSON, after merging every layer and the defaults.

    \b
    Exit status:
      0  printed
      1  invalid (one line per problem on stderr)
      2  usage error

    \b
    Examples:
      routed-nv config show
      ROUTED_NV_HOST__UPLINK=eth1 routed-nv config show | jq .host
    """
    config = config_or_exit(path, 1)
    click.echo(json.dumps(config.model_dump(mode="json"), indent=2))
