"""The everyday commands start without loading the kernel, IKE or metrics libraries (issue 15).

Each command runs as the installed `routed-nv` does, in a fresh interpreter; an atexit hook
(registered before routed_nv is imported, so it runs whatever the command does) writes the
modules that were loaded. Loading pyroute2, vici and prometheus_client made `routed-nv
--version` take 0.4 s instead of 0.04 s on this machine and about 1 s in the UML guest, and
every `status` or `endpoint add` paid it too (docs/design-notes.md).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
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


# What the endpoint commands may not load when an agent answers (issue 16): the configuration
# (pydantic), the calculation and the agent's own modules took seconds in the UML guest before
# the request reached the agent. routed_nv.agent.options is only the shared --run-dir option.
AGENT_SIDE = ("pydantic", "routed_nv.config", "routed_nv.calc", "routed_nv.agent.")
ANSWERS = {
    "endpoint.add": {"id": "web9", "action": "added", "programmed": True, "other_errors": [],
                     "apply": {"trigger": "endpoint", "seconds": 0.1, "changes": 3}},
    "endpoint.get": {"id": "web9", "programmed": True, "announced": True},
    "endpoint.delete": {"id": "web9", "action": "deleted", "other_errors": [],
                        "apply": {"trigger": "endpoint", "seconds": 0.1, "changes": 3}},
    "endpoints": {"source": "agent", "endpoints": []},
}  # fmt: skip


@contextlib.contextmanager
def _fake_agent(run: Path) -> Iterator[None]:
    """An agent's control socket that answers each request from ANSWERS."""
    run.mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(run / "agent.sock"))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed
            with conn:
                request = json.loads(conn.makefile().readline())
                reply = {"ok": True, "result": ANSWERS[request["request"]]}
                conn.sendall(json.dumps(reply).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(timeout=5)


ENDPOINT_API = {
    "endpoint add web9 --tenant blue --address 10.0.0.9 --netns web9 --wait": "added endpoint",
    "endpoint del web9": "deleted endpoint web9",
    "endpoint list": "(from the running agent)",
}


@pytest.mark.parametrize("command", ENDPOINT_API)
def test_endpoint_command_with_an_agent_loads_no_agent_side_module(
    tmp_path: Path, command: str
) -> None:
    run = tmp_path / "run"
    with _fake_agent(run):
        done, modules = _run(tmp_path, *command.split(), "--run-dir", str(run))
    assert (done.returncode, ENDPOINT_API[command] in done.stdout) == (0, True), done
    assert [m for m in modules if m.startswith(AGENT_SIDE) and m != "routed_nv.agent.options"] == []
