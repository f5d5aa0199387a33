"""The shipped systemd unit: systemd accepts it, and it runs commands the CLI really has."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from routed_nv.cli import main

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
UNIT = CONFIGS / "systemd" / "routed-nv.service"
INSTALLED = "/usr/local/bin/routed-nv"  # where the Ansible role links the venv's entry point


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    # verify checks that every Exec path is executable: point them at this checkout's entry point.
    unit = tmp_path / UNIT.name
    unit.write_text(
        UNIT.read_text().replace(INSTALLED, str(Path(sys.executable).parent / "routed-nv"))
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "routed-nv.service" not in result.stderr, result.stderr  # no warning about our unit


def test_the_unit_runs_commands_the_cli_has() -> None:
    service = _unit()["Service"]
    for key in ("ExecStartPre", "ExecStart"):
        program, *args = shlex.split(service[key])
        assert program == INSTALLED
        options = [a for a in args if a.startswith("-")]
        words = [a for a in args if not a.startswith("-")]
        result = CliRunner().invoke(main, [*words, "--help"])
        assert result.exit_code == 0, f"{key}: {result.output}"
        for option in options:
            assert option in result.stdout, f"{key}: {option}"


def test_stop_leaves_the_dataplane_and_reload_is_sighup() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "ExecStop" not in service and "ExecStopPost" not in service
    assert service["KillMode"] == "mixed"
    assert service["RestartPreventExitStatus"] == "2"  # the agent's "invalid configuration"


def test_capabilities_are_only_the_networking_ones() -> None:
    service = _unit()["Service"]
    assert set(service["CapabilityBoundingSet"].split()) == {
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_SYS_ADMIN",
    }
    assert service["NoNewPrivileges"] == "yes"
    # The agent writes net.* sysctls: a read-only /proc/sys would fail every apply.
    assert "ProtectKernelTunables" not in service
