"""The everyday commands start without loading the kernel, IKE or metrics libraries (issue 15).

Each command runs as the installed `routed-nv` does, in a fresh interpreter; an atexit hook
(registered before routed_nv is imported, so it runs whatever the command does) writes the
modules that were loaded. Loading pyroute2, vici and prometheus_client made `routed-nv
--version` take 0.4 s instead of 0.04 s on this machine and about 1 s in the UML guest, and
every `status` or `endpoint add` paid it too (docs/design-notes.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "configs"
HEAVY = ("pyroute2", "iptc", "vici", "prometheus_client")
# sys.argv[1] is where to write the module list; the rest is the command line.
RUN = """
import atexit, json, sys
out = sys.argv.pop(1)
def dump():
    with open(out, "w") as f:
        json.dump(sorted(sys.modules), f)
atexit.register(dump)
from routed_nv.cli import main
main(prog_name="routed-nv")
"""


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLES, tmp_path / "etc")
    return tmp_path / "etc"


def _run(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    modules = tmp_path / "modules.json"
    modules.unlink(missing_ok=True)
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(modules), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done, json.loads(modules.read_text())


def _heavy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.split(".")[0] in HEAVY]


# the command line (whitespace-separated), its exit status and what its output says
CONFIG = "-c {etc}/routed-nv.toml --run-dir {run}"
COMMANDS = {
    "--help": (0, "iproute2-names"),
    "--version": (0, "routed-nv, version"),
    "config check --skip-files {etc}/routed-nv.toml": (0, "ok: host host1"),
    "status --run-dir {run}": (1, "not running"),
    f"lookup blue 10.0.0.2 {CONFIG}": (0, "(from the configuration)"),
    "endpoint --help": (0, "endpoint add web2"),
    "trace --help": (0, "routed-nv trace blue 10.0.0.1 10.0.0.2"),
    f"endpoint list {CONFIG}": (0, "no agent is running"),
    f"endpoint add web9 --tenant blue --address 10.0.0.9 --netns web9 {CONFIG}": (
        0,
        "added endpoint web9",
    ),
}


@pytest.mark.parametrize("command", COMMANDS)
def test_command_loads_no_heavy_library(etc: Path, tmp_path: Path, command: str) -> None:
    exit_code, says = COMMANDS[command]
    argv = command.format(etc=etc, run=tmp_path / "run").split()
    done, modules = _run(tmp_path, *argv)
    assert (done.returncode, says in done.stdout) == (exit_code, True), done
    assert _heavy(modules) == []
