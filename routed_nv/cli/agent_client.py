"""What the commands that ask the running agent (over its control socket) share: its answer or
a clear error and exit status, and the table and JSON output."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from routed_nv.control_wire import SOCKET_NAME, AgentDown, ControlError, RequestFailed, ask

EXIT_DOWN = 1  # no agent answers, or the thing asked for does not exist
EXIT_ERROR = 2  # usage error, invalid configuration, refused change


def ask_agent(run_dir: Path, request: dict[str, Any], output: str = "table") -> Any:
    """The agent's answer; exits 1 (not running, not found) or 2 (refused) otherwise, with a
    JSON object on stdout too when `output` is json."""
    try:
        return ask(run_dir / SOCKET_NAME, request)
    except AgentDown as exc:
        fail(EXIT_DOWN, f"routed-nv agent is not running: {exc}", output, agent="down")
    except RequestFailed as exc:
        fail(EXIT_DOWN if exc.code == "not-found" else EXIT_ERROR, str(exc), output)
    except ControlError as exc:
        fail(EXIT_ERROR, str(exc), output)


def fail(code: int, message: str, output: str = "table", **fields: Any) -> None:
    """One error line on stderr; with `-o json` also a JSON object on stdout (scripts that
    parse stdout get an answer, never nothing)."""
    if output == "json":
        print_json(fields | {"error": message})
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def table(headers: list[str], rows: list[list[str]]) -> str:
    """An ASCII table like `calicoctl node status`."""
    widths = [max(len(x) for x in col) for col in zip(headers, *rows, strict=True)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: list[str]) -> str:
        padded = (f" {c:<{w}} " for c, w in zip(cells, widths, strict=True))
        return "|" + "|".join(padded) + "|"

    return "\n".join([rule, line(headers), rule, *(line(r) for r in rows), rule])
