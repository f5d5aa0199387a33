"""Options shared by the agent and the commands that talk to it (defined once)."""

from __future__ import annotations

from pathlib import Path

import click

DEFAULT_RUN_DIR = Path("/run/routed-nv")

run_dir_option = click.option(
    "--run-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT_RUN_DIR,
    show_default=True,
    envvar="ROUTED_NV_RUN_DIR",
    help="The agent's runtime directory (control socket agent.sock) [env ROUTED_NV_RUN_DIR].",
)
