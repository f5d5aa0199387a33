"""Consistent output (issue 17 item 7): `-o json` always prints a JSON object, blank fields are
left out, and every table is the one renderer's."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_agent_loop import Harness, route, view

from routed_nv.agent import report
from routed_nv.cli.config import config_group
from routed_nv.cli.directory import directory_group
from routed_nv.cli.lookup import lookup_command
from routed_nv.cli.status import status_table
from routed_nv.model.directory_source import PeerStatus

EXAMPLES = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLES, tmp_path / "etc")
    return tmp_path / "etc"


def test_directory_dump_as_json_without_an_agent_is_a_json_object(tmp_path: Path) -> None:
    done = CliRunner().invoke(
        directory_group, ["dump", "--run-dir", str(tmp_path), "-o", "json"], env={}
    )
    assert done.exit_code == 1
    answer = json.loads(done.stdout)
    assert answer["agent"] == "down"
    assert answer["error"].startswith("routed-nv agent is not running: no agent answers on ")
    assert done.stderr.startswith("error: routed-nv agent is not running")


def test_lookup_of_an_unknown_address_as_json_says_not_found(etc: Path, tmp_path: Path) -> None:
    args = ["blue", "10.0.0.99", "-c", str(etc / "routed-nv.toml"), "--run-dir", str(tmp_path)]
    done = CliRunner().invoke(lookup_command, [*args, "-o", "json"], env={})
    assert done.exit_code == 1
    assert json.loads(done.stdout) == {
        "agent": "down",
        "source": "config",
        "found": False,
        "error": "no endpoint 10.0.0.99 in tenant blue (from the configuration)",
    }
    bad = CliRunner().invoke(lookup_command, ["green", *args[1:], "-o", "json"], env={})
    assert bad.exit_code == 2
    assert json.loads(bad.stdout)["error"] == "no tenant 'green' in this host's configuration"


def test_an_upstream_without_an_address_has_no_blank_address() -> None:
    h = Harness()
    upstream = PeerStatus("upstream1", "", "up", "12:00:00", "Established")
    reflector = PeerStatus("rr1", "2001:db8:ff::1", "up", "12:00:00", "Established")
    h.publish(view(route("10.0.0.2")), peers=(reflector, upstream))
    h.settle()
    status = report.status(h.agent.snapshot())
    peers = status["directory"]["peers"]
    assert peers[0]["address"] == "2001:db8:ff::1"
    assert "address" not in peers[1]
    assert "| upstream1 | -              | up    |" in status_table(status, time.time())


def test_config_check_as_json(etc: Path) -> None:
    host_file = etc / "routed-nv.toml"
    ok = CliRunner().invoke(
        config_group, ["check", "--skip-files", "-c", str(host_file), "-o", "json"], env={}
    )
    assert ok.exit_code == 0, ok.output
    answer = json.loads(ok.stdout)
    assert (answer["ok"], answer["problems"]) == (True, [])
    assert answer["tenants"] >= 1 and isinstance(answer["warnings"], list)

    host_file.write_text(host_file.read_text().replace("[host]", "[host]\nbogus = 1", 1))
    bad = CliRunner().invoke(
        config_group, ["check", "--skip-files", "-c", str(host_file), "-o", "json"], env={}
    )
    assert bad.exit_code == 1
    answer = json.loads(bad.stdout)
    assert answer["ok"] is False
    assert any("bogus" in p for p in answer["problems"]), answer


def test_the_lab_hosts_are_a_table_like_every_other(capsys: pytest.CaptureFixture[str]) -> None:
    from routed_nv.cli.lab import _describe
    from routed_nv.lab.topology import default_topology

    _describe(default_topology())
    lines = capsys.readouterr().out.splitlines()
    assert [c.strip() for c in lines[2].split("|")[1:-1]] == [
        "NAMESPACE",
        "UPLINK ADDRESS",
        "WORKLOADS",
    ]
    assert lines[4].startswith("| rnv-lab-host1 ")
