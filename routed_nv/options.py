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


def agent_run_dir(run_dir: Path | None, config_path: Path | None) -> Path:
    """Where the agent's control socket is: --run-dir or $ROUTED_NV_RUN_DIR when given, else
    the configuration's agent.run_dir (the agent itself decides the same way)."""
    if run_dir is not None:
        return run_dir
    from routed_nv.config.loader import DEFAULT_PATH, ConfigError, default_path, load_config
    from routed_nv.config.model import Agent

    default: Path = Agent.model_fields["run_dir"].default
    path = config_path or default_path()
    if path == DEFAULT_PATH and not path.exists():
        return default  # a host without a host file: the agent, if any, uses the default too
    try:
        return load_config(path).agent.run_dir
    except ConfigError as exc:
        # status and lookup must still reach an agent that runs on an earlier, valid version
        more = f" (and {len(exc.problems) - 1} more problems)" if len(exc.problems) > 1 else ""
        click.echo(f"warning: {exc.problems[0]}{more}; asking the agent in {default}", err=True)
        return default


config_option = click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Host file [default: $ROUTED_NV_CONFIG, else /etc/routed-nv/routed-nv.toml]; "
    "conf.d/*.toml beside it and ROUTED_NV_*__* variables are merged on top.",
)

netns_option = click.option(
    "--netns",
    metavar="NAME",
    default=None,
    envvar="ROUTED_NV_NETNS",
    help="Work on the host datapath in network namespace NAME (labs, tests) instead of this one "
    "[default: $ROUTED_NV_NETNS].",
)

output_option = click.option(
    "-o",
    "--output",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Human-readable text or machine-readable JSON.",
)
