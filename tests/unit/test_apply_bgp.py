"""`routed-nv apply` on a host whose directory is BGP plans with the running agent's view.

The agent is real (loop + control socket) with a fake datapath and source; the CLI's datapath
is a fake that records the view it was asked to plan or apply with.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner, Result
from test_agent_loop import HOST3, Harness, route, view

from routed_nv.agent import view_json, wiring
from routed_nv.agent.control import SOCKET_NAME, ControlServer
from routed_nv.agent.datapath import Outcome
from routed_nv.cli import main
from routed_nv.config import load_config
from routed_nv.config.model import Config
from routed_nv.config.views import static_view
from routed_nv.model.directory import Claim, DirectoryView

EXAMPLES = Path(__file__).resolve().parents[2] / "configs"


class RecordingDatapath:
    runs: ClassVar[list[tuple[str, DirectoryView]]] = []

    def __init__(self, config: Config, netns: str | None = None) -> None:
        pass

    def plan(self, config: Config, view: DirectoryView) -> Outcome:
        self.runs.append(("plan", view))
        return Outcome([])

    def apply(self, config: Config, view: DirectoryView) -> Outcome:
        self.runs.append(("apply", view))
        return Outcome([])


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, DirectoryView]]:
    RecordingDatapath.runs = []
    monkeypatch.setattr(wiring, "build_datapath", RecordingDatapath)
    return RecordingDatapath.runs


@pytest.fixture
def bgp_host(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLES, tmp_path / "etc")
    (tmp_path / "etc" / "conf.d" / "40-bgp.toml").write_text('[directory]\nsource = "bgp"\n')
    return tmp_path / "etc" / "routed-nv.toml"


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[Path, Harness]]:
    h = Harness()
    run_dir = tmp_path / "run"
    server = ControlServer(run_dir / SOCKET_NAME, h.agent.snapshot, h.agent.request_reload)
    server.start()
    try:
        yield run_dir, h
    finally:
        server.close()


def apply(config: Path, run_dir: Path, *args: str) -> Result:
    # the run dir from the environment (as --run-dir's envvar): the same command line as before
    env = {"ROUTED_NV_RUN_DIR": str(run_dir)}
    return CliRunner().invoke(main, ["apply", "-c", str(config), *args], env=env)


def test_dry_run_and_apply_use_the_view_the_agent_applied(
    bgp_host: Path, agent: tuple[Path, Harness], recorded: list[tuple[str, DirectoryView]]
) -> None:
    run_dir, h = agent
    h.publish(view(route("10.0.0.7"), route("fd10::8", HOST3)))  # learned, not in the config
    h.settle()
    applied = h.agent.snapshot().view
    assert applied.claims  # the mobility claims travel too
    dry = apply(bgp_host, run_dir, "--dry-run")
    assert dry.exit_code == 0, dry.stderr
    assert apply(bgp_host, run_dir).exit_code == 0
    assert recorded == [("plan", applied), ("apply", applied)]
    static = static_view(load_config(bgp_host, env={}))
    assert applied.remote_routes != static.remote_routes


def test_apply_refuses_when_no_agent_answers(
    bgp_host: Path, tmp_path: Path, recorded: list[tuple[str, DirectoryView]]
) -> None:
    for args in (["--dry-run"], []):
        result = apply(bgp_host, tmp_path / "nobody", *args)
        assert result.exit_code == 2
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line.startswith(
            'error: directory.source is "bgp": only the running agent knows the remote '
            "endpoints, and no agent answers on "
        )
        assert line.endswith("nothing was planned or changed")
    assert recorded == []


def test_apply_refuses_before_the_agent_applied_a_view(
    bgp_host: Path, agent: tuple[Path, Harness], recorded: list[tuple[str, DirectoryView]]
) -> None:
    run_dir, _ = agent
    result = apply(bgp_host, run_dir, "--dry-run")
    assert result.exit_code == 2
    assert "it has not applied a view yet" in result.stderr
    assert recorded == []


def test_a_static_host_still_plans_from_its_configuration(
    tmp_path: Path, recorded: list[tuple[str, DirectoryView]]
) -> None:
    shutil.copytree(EXAMPLES, tmp_path / "etc")
    config = tmp_path / "etc" / "routed-nv.toml"
    assert apply(config, tmp_path / "nobody", "--dry-run").exit_code == 0
    assert recorded == [("plan", static_view(load_config(config, env={})))]


def test_the_view_survives_json_with_every_field() -> None:
    applied = DirectoryView(
        remote_routes=frozenset(
            {route("10.0.0.5"), dataclasses.replace(route("fd10::9", HOST3), sequence=4)}
        ),
        contested=frozenset({route("10.0.0.1")}),
        published=frozenset({Claim(100, route("10.0.0.1").prefix, 2)}),
        claims=frozenset({Claim(100, route("10.0.0.1").prefix, 3, stale=True)}),
    )
    # a field added to DirectoryView must be added to view_json too
    assert {f.name for f in dataclasses.fields(DirectoryView)} == set(view_json.encode(applied))
    assert view_json.decode(view_json.encode(applied)) == applied
