"""`routed-nv status|lookup|endpoint|directory` and `routed-nv agent` as users see them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from test_agent_loop import Harness, lose_to_host3, route, view

from routed_nv.agent import report
from routed_nv.agent.control import SOCKET_NAME, ControlServer, ask
from routed_nv.agent.runtime import RUNTIME_DROP_IN
from routed_nv.calc import routing
from routed_nv.cli.agent import agent_command
from routed_nv.cli.directory import directory_group
from routed_nv.cli.endpoint import endpoint_group
from routed_nv.cli.lookup import lookup_command
from routed_nv.cli.status import status_command, status_table
from routed_nv.model.directory_source import PeerStatus

EXAMPLES = Path(__file__).resolve().parents[2] / "configs"


def invoke(command: click.Command, *args: str) -> Result:
    return CliRunner().invoke(command, list(args), env={}, catch_exceptions=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    h = Harness()
    h.publish(
        view(route("10.0.0.2"), route("fd10::2")),
        peers=(PeerStatus("rr1", "2001:db8:ff::1", "up", "12:00:00", "Established"),),
        detail="1 of 1 sessions up",
    )
    h.settle()
    path = tmp_path_factory.mktemp("run")
    server = ControlServer(path / SOCKET_NAME, h.agent.snapshot, h.agent.request_reload).start()
    try:
        yield path
    finally:
        server.close()


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    shutil.copytree(EXAMPLES, tmp_path / "etc")
    return tmp_path / "etc"


def test_status_table_brief_and_json(run_dir: Path) -> None:
    table = invoke(status_command, "--run-dir", str(run_dir))
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].startswith("Agent:      ready (host host1, pid ")
    assert lines[1] == "Directory:  fake, in sync (1 of 1 sessions up)"
    assert "| rr1  | 2001:db8:ff::1 | up    | 12:00:00 | Established |" in lines
    assert any(x.startswith("Datapath:   1 tenants, 1 local endpoints, 2 remote") for x in lines)
    assert any(x.startswith("Last apply: ok, 1 changes in 0.00 s, ") for x in lines)

    brief = invoke(status_command, "--run-dir", str(run_dir), "--brief")
    assert brief.stdout.startswith("ready: directory fake in sync, 1 peers up; 1 local / 2 remote")
    assert len(brief.stdout.splitlines()) == 1

    data = json.loads(invoke(status_command, "--run-dir", str(run_dir), "-o", "json").stdout)
    assert data["agent"]["state"] == "ready"


def test_status_reports_addresses_another_host_announced_later() -> None:
    h = Harness()
    lose_to_host3(h)
    status = report.status(h.agent.snapshot())
    row = {"tenant_id": 100, "prefix": "10.0.0.1/32", "sequence": 1}
    assert status["directory"]["stale"] == [row | {"host_address": "2001:db8:0:3::1"}]
    lines = status_table(status, time.time()).splitlines()
    assert "Stale:      1 local addresses announced later by another host" in lines
    assert "  10.0.0.1/32 (tenant 100): 2001:db8:0:3::1 has sequence 1" in lines


def test_status_without_an_agent_exits_1(tmp_path: Path) -> None:
    result = invoke(status_command, "--run-dir", str(tmp_path))
    assert result.exit_code == 1
    assert result.stdout.startswith("routed-nv agent: not running (no agent answers on ")
    as_json = invoke(status_command, "--run-dir", str(tmp_path), "-o", "json")
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["agent"]["state"] == "not-running"


def test_lookup_from_the_agent_and_from_the_config(run_dir: Path, etc: Path) -> None:
    found = invoke(lookup_command, "blue", "10.0.0.2", "--run-dir", str(run_dir))
    assert found.exit_code == 0
    assert found.stdout.splitlines()[0] == "blue 10.0.0.2: host host2 (2001:db8:0:2::1)"
    assert found.stdout.splitlines()[-1] == "  (from the running agent)"

    nowhere = str(etc / "no-run")
    config = ["-c", str(etc / "routed-nv.toml"), "--run-dir", nowhere]
    offline = invoke(lookup_command, "blue", "fd10::2", *config)
    assert offline.exit_code == 0
    assert "  SPIs: unknown (no agent running)" in offline.stdout
    assert offline.stdout.splitlines()[-1] == "  (from the configuration)"

    missing = invoke(lookup_command, "blue", "10.0.0.99", "--run-dir", str(run_dir))
    assert (missing.exit_code, missing.stderr) == (
        1,
        "error: no endpoint 10.0.0.99 in tenant blue\n",
    )
    assert invoke(lookup_command, "green", "10.0.0.2", "--run-dir", str(run_dir)).exit_code == 2
    assert invoke(lookup_command, "blue", "not-an-ip", *config).exit_code == 2


def test_endpoint_list_says_where_the_answer_came_from(run_dir: Path, etc: Path) -> None:
    live = invoke(endpoint_group, "list", "--run-dir", str(run_dir))
    assert live.exit_code == 0
    assert "| web  | blue   | 10.0.0.1  | local    | tap0" in live.stdout
    assert live.stdout.splitlines()[-1] == "(from the running agent)"

    offline = invoke(
        endpoint_group, "list", "-c", str(etc / "routed-nv.toml"), "--run-dir", str(etc)
    )
    assert offline.exit_code == 0
    assert offline.stdout.splitlines()[-1] == "(from the configuration: no agent is running)"
    assert "red-db" in offline.stdout
    as_json = invoke(
        endpoint_group,
        "list",
        "-c",
        str(etc / "routed-nv.toml"),
        "--run-dir",
        str(etc),
        "-o",
        "json",
    )
    assert json.loads(as_json.stdout)["source"] == "config"


def test_directory_dump(run_dir: Path, tmp_path: Path) -> None:
    dump = invoke(directory_group, "dump", "--run-dir", str(run_dir))
    assert dump.exit_code == 0
    assert "| blue   | 10.0.0.2/32 | host2 | 2001:db8:0:2::1 | 2001:db8:0:2::1:64 |" in dump.stdout
    assert dump.stdout.splitlines()[-1] == "source fake, in sync, 2 routes"
    routes = json.loads(
        invoke(directory_group, "dump", "--run-dir", str(run_dir), "-o", "json").stdout
    )
    assert len(routes["routes"]) == 2
    assert invoke(directory_group, "dump", "--run-dir", str(tmp_path)).exit_code == 1


def test_endpoint_add_and_del_edit_only_the_runtime_drop_in(etc: Path, tmp_path: Path) -> None:
    config = ["-c", str(etc / "routed-nv.toml"), "--run-dir", str(tmp_path)]
    owned = {p: p.read_text() for p in etc.rglob("*.toml")}
    added = invoke(
        endpoint_group,
        "add",
        "web2",
        "--tenant",
        "blue",
        "--address",
        "10.0.0.5",
        "--address",
        "fd10::5",
        "--interface",
        "tap-web2",
        "--allow-missing-interface",
        *config,
    )
    assert added.exit_code == 0, added.stderr
    assert added.stdout.splitlines() == [
        f"added endpoint web2 in {etc / 'conf.d' / RUNTIME_DROP_IN}",
        "no agent is running: it takes effect when one starts",
    ]
    assert {p: p.read_text() for p in owned} == owned  # the tool's files are untouched
    listing = json.loads(invoke(endpoint_group, "list", *config, "-o", "json").stdout)
    assert "web2" in [e["name"] for e in listing["endpoints"]]

    bad = invoke(
        endpoint_group,
        "add",
        "web3",
        "--tenant",
        "blue",
        "--address",
        "192.168.1.1",
        "--interface",
        "tap-web3",
        "--allow-missing-interface",
        *config,
    )
    assert bad.exit_code == 2
    assert "endpoints.web3.addresses[0]" in bad.stderr
    assert "web3" not in (etc / "conf.d" / RUNTIME_DROP_IN).read_text()

    theirs = invoke(endpoint_group, "del", "blue-web", *config)
    assert theirs.exit_code == 2
    assert "defined in the configuration files" in theirs.stderr
    assert invoke(endpoint_group, "del", "nope", *config).exit_code == 1
    deleted = invoke(endpoint_group, "del", "web2", *config, "-o", "json")
    assert json.loads(deleted.stdout)["action"] == "deleted"
    assert "web2" not in (etc / "conf.d" / RUNTIME_DROP_IN).read_text()


def test_agent_with_an_invalid_config_exits_2_and_applies_nothing(etc: Path) -> None:
    tenants = etc / "conf.d" / "10-tenants.toml"
    tenants.write_text(tenants.read_text().replace("id = 100", "id = 70000"))
    result = invoke(agent_command, "-c", str(etc / "routed-nv.toml"), "--run-dir", str(etc / "r"))
    assert result.exit_code == 2
    assert result.stderr.splitlines()[0] == (
        "conf.d/10-tenants.toml: tenants.blue.id: 70000 is out of range 1..65535"
    )
    assert not (etc / "r").exists()  # not even the control socket


class NotifySocket:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(10)
        self.messages: list[dict[str, str]] = []

    def until(self, key: str) -> dict[str, str]:
        while True:
            data = self.sock.recv(4096).decode()
            message = dict(line.split("=", 1) for line in data.splitlines())
            self.messages.append(message)
            if key in message:
                return message


def wait_for(predicate: Callable[[], bool], timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_agent_process_signals_and_notify(etc: Path, tmp_path: Path) -> None:
    """The daemon on this host, programming a netns that does not exist: every apply fails (so
    nothing on this machine is touched), which is what the failure paths need anyway."""
    notify = NotifySocket(tmp_path / "notify")
    stderr = (tmp_path / "agent.log").open("w")
    run = tmp_path / "run"
    # no --run-dir: the agent, and `status -c` below, take agent.run_dir from the configuration
    (etc / "conf.d" / "50-run.toml").write_text(f'[agent]\nrun_dir = "{run}"\n')
    argv = [
        sys.executable,
        "-c",
        "from routed_nv.cli.agent import agent_command; agent_command()",
        "-c",
        str(etc / "routed-nv.toml"),
        "--netns",
        f"rnv-unit-missing-{os.getpid()}",
        "--metrics-address",
        "off",
    ]
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
    env.pop("ROUTED_NV_RUN_DIR", None)
    proc = subprocess.Popen(argv, env=env, stderr=stderr)
    try:
        first = notify.until("STATUS")
        assert "READY" not in first and "last apply FAILED" in first["STATUS"]
        status = ask(run / SOCKET_NAME, {"request": "status"})
        assert status["agent"]["state"] == "starting"
        by_config = invoke(status_command, "-c", str(etc / "routed-nv.toml"), "--brief")
        assert (by_config.exit_code, by_config.stdout.split(":")[0]) == (
            3,
            "starting",
        )  # --brief: answered, not ready
        assert "No such file or directory" in status["last_apply"]["errors"][0]

        tenants = etc / "conf.d" / "10-tenants.toml"
        tenants.write_text(tenants.read_text().replace("id = 100", "id = 70000"))
        proc.send_signal(signal.SIGHUP)
        assert "RELOADING" in notify.until("RELOADING")
        wait_for(lambda: ask(run / SOCKET_NAME, {"request": "status"})["config_errors"] == 1)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert notify.until("STOPPING")["STOPPING"] == "1"
    finally:
        if proc.poll() is None:
            proc.kill()
    log = (tmp_path / "agent.log").read_text()
    assert "agent.reload ok=false problems=1 kept=previous" in log
    assert 'agent.reload.problem problem="conf.d/10-tenants.toml: tenants.blue.id: 70000' in log
    assert log.splitlines()[-1] == "agent.stop dataplane=left-in-place"
    assert not (run / SOCKET_NAME).exists()


def test_the_agent_is_found_from_the_configuration(
    run_dir: Path, etc: Path, tmp_path: Path
) -> None:
    # issue 17 item 3: status and directory dump took only --run-dir, so `-c host1.toml` could
    # not find host1's agent; now every command finds it as the agent does (agent.run_dir)
    (etc / "conf.d" / "50-run.toml").write_text(f'[agent]\nrun_dir = "{run_dir}"\n')
    config = str(etc / "routed-nv.toml")
    status = invoke(status_command, "-c", config)
    assert (status.exit_code, status.stdout.split(" (")[0]) == (0, "Agent:      ready")
    assert invoke(directory_group, "dump", "-c", config).exit_code == 0
    found = invoke(lookup_command, "blue", "10.0.0.2", "-c", config)
    assert found.stdout.splitlines()[-1] == "  (from the running agent)"
    listing = invoke(endpoint_group, "list", "-c", config)
    assert listing.stdout.splitlines()[-1] == "(from the running agent)"
    # $ROUTED_NV_CONFIG is the same as -c
    by_env = CliRunner().invoke(status_command, ["--brief"], env={"ROUTED_NV_CONFIG": config})
    assert (by_env.exit_code, by_env.stdout.split(":")[0]) == (0, "ready")
    # --run-dir and $ROUTED_NV_RUN_DIR win over the configuration
    elsewhere = str(tmp_path / "elsewhere")
    assert invoke(status_command, "-c", config, "--run-dir", elsewhere).exit_code == 1
    by_env = CliRunner().invoke(
        status_command, ["-c", config], env={"ROUTED_NV_RUN_DIR": elsewhere}
    )
    assert (by_env.exit_code, elsewhere in by_env.stdout) == (1, True)


def test_an_invalid_configuration_does_not_hide_the_agent(run_dir: Path, tmp_path: Path) -> None:
    # the agent keeps running on its last valid configuration: status must still reach it
    missing = tmp_path / "missing.toml"
    result = invoke(status_command, "-c", str(missing), "--brief")
    assert result.exit_code == 1  # the default run dir: no agent in this test
    assert result.stderr.splitlines() == [
        f"warning: {missing}: no such file; name the host file with -c/--config or "
        "$ROUTED_NV_CONFIG (default /etc/routed-nv/routed-nv.toml); asking the agent in "
        "/run/routed-nv"
    ]
    # named by $ROUTED_NV_CONFIG: as explicit as -c
    by_env = CliRunner().invoke(status_command, [], env={"ROUTED_NV_CONFIG": str(missing)})
    assert by_env.stderr.startswith(f"warning: {missing}: no such file;")


def test_endpoint_add_refuses_an_interface_this_host_does_not_have(
    etc: Path, tmp_path: Path
) -> None:
    # issue 17 item 9: `--interface tap-nope` exited 0 and the agent then failed its applies
    config = ["-c", str(etc / "routed-nv.toml"), "--run-dir", str(tmp_path)]
    args = ["add", "web2", "--tenant", "blue", "--address", "10.0.0.5", *config]
    drop_in = etc / "conf.d" / RUNTIME_DROP_IN
    refused = invoke(endpoint_group, *args, "--interface", "tap-nope")
    assert (refused.exit_code, refused.stdout) == (1, "")
    assert refused.stderr.splitlines() == [
        "error: interface tap-nope does not exist in this host's network namespace; nothing "
        "changed (--allow-missing-interface if it comes later)"
    ]
    assert not drop_in.exists()
    # an interface that exists: no warning
    present = invoke(endpoint_group, *args, "--interface", "lo")
    assert (present.exit_code, present.stderr) == (0, "")
    # a libvirt tap that appears when its VM starts: added, with a warning
    later = invoke(
        endpoint_group, *args, "--interface", "vnet7", "--allow-missing-interface", "--replace"
    )
    assert later.exit_code == 0
    assert later.stderr.splitlines() == [
        "warning: interface vnet7 does not exist in this host's network namespace: the agent's "
        "applies fail for it until it does"
    ]
    assert 'interface = "vnet7"' in drop_in.read_text()


def test_endpoint_add_says_when_the_veth_name_is_shortened(etc: Path, tmp_path: Path) -> None:
    # issue 17 item 8: long endpoint names were cut into veth names silently
    config = ["-c", str(etc / "routed-nv.toml"), "--run-dir", str(tmp_path)]
    args = ["add", "--tenant", "blue", "--address", "10.0.0.5", *config]
    short = invoke(endpoint_group, *args, "web2", "--netns", "web2")
    assert [x for x in short.stdout.splitlines() if x.startswith("note:")] == []
    assert invoke(endpoint_group, "del", "web2", *config).exit_code == 0
    long = invoke(endpoint_group, *args, "frontend-blue-7", "--netns", "fe7")
    link = routing.endpoint_link_name("frontend-blue-7")
    assert long.exit_code == 0, long.stderr
    assert f"note: the host side of its veth is {link}: link names have at most 15 " in long.stdout
    assert "a name longer than 10 is cut and ends in a hash" in long.stdout
    as_json = invoke(endpoint_group, *args, "frontend-blue-7", "--netns", "fe7", "-o", "json")
    assert json.loads(as_json.stdout)["notes"][0].startswith(f"the host side of its veth is {link}")
