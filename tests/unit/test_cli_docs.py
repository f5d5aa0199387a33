"""docs/cli.md is generated from the click tree (scripts/gen-cli-docs) and must match it."""

from __future__ import annotations

import runpy
from pathlib import Path

import click
import pytest

from routed_nv.cli import main

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = runpy.run_path(str(ROOT / "scripts" / "gen-cli-docs"))


def _leaves(group: click.Group = main, prefix: tuple[str, ...] = ()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # the top level loads its commands lazily
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            yield from _leaves(command, (*prefix, name))
        else:
            yield command, (*prefix, name)


def test_docs_cli_md_is_up_to_date() -> None:
    assert (ROOT / "docs" / "cli.md").read_text() == GENERATOR["render"](), (
        "docs/cli.md is stale: run .venv/bin/python scripts/gen-cli-docs"
    )


@pytest.mark.parametrize(
    "command", [c for c, _ in _leaves()], ids=[" ".join(p) for _, p in _leaves()]
)
def test_every_command_documents_its_exit_status(command: click.Command) -> None:
    assert "Exit status:" in (command.help or "")


def test_completion_instructions_name_click_variable() -> None:
    # click derives the variable from the program name: _<PROG_NAME>_COMPLETE, dashes as '_'.
    assert "_ROUTED_NV_COMPLETE=bash_source routed-nv" in GENERATOR["HEADER"]
