"""Command-line options and steps shared by several commands, defined once (as pip-tools does)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from routed_nv.config.model import Config


def config_or_exit(path: Path | None, exit_code: int, **load: Any) -> Config:
    """The configuration, or every problem on stderr, one per line, and exit: nothing was done."""
    # pydantic loads with the first command that reads a configuration, not for `--help`
    from routed_nv.config.loader import ConfigError, load_config

    try:
        return load_config(path, **load)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(exit_code)


config_option = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Host file [default: $ROUTED_NV_CONFIG or /etc/routed-nv/routed-nv.toml]; "
    "conf.d/*.toml beside it and ROUTED_NV_* variables are merged on top.",
)

netns_option = click.option(
    "--netns",
    metavar="NAME",
    default=None,
    help="Program the host datapath in network namespace NAME (labs, tests) instead of this one.",
)

output_option = click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Human-readable text or machine-readable JSON.",
)
