"""Options shared by the agent and the commands that talk to it (defined once)."""

from __future__ import annotations

from pathlib import Path

import click

RUN_DIR_ENV = "ROUTED_NV_RUN_DIR"

# None: not given on the command line or in the environment; the configuration's
# agent.run_dir (default /run/routed-nv) then says where the agent is (routed_nv.options).
run_dir_option = click.option(
    "--run-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    envvar=RUN_DIR_ENV,
    help=f"The agent's runtime directory (control socket agent.sock) [default: ${RUN_DIR_ENV}, "
    "else agent.run_dir of the configuration, /run/routed-nv].",
)
