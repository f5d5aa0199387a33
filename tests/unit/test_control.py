"""The control socket: protocol, permissions, stale sockets, and the answers' content."""

from __future__ import annotations

import json
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_agent_loop import HOST2, Harness, route, view

from routed_nv.agent.control import (
    SOCKET_NAME,
    AgentDown,
    ControlError,
    ControlServer,
    RequestFailed,
    ask,
)
from routed_nv.model.directory_source import PeerStatus


class Rejection:
    reason = "bad-next-hop"

    def __str__(self) -> str:
        return "10.0.0.66/32 via 2001:db8:0:9::5 (table 805306468): bad-next-hop: not a host"


@pytest.fixture(scope="module")  # closing a server takes its 0.5 s poll interval: share one
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Harness, Path]]:
    h = Harness()
    h.publish(
        view(route("10.0.0.2"), route("fd10::2")),
        peers=(PeerStatus("rr1", "2001:db8:ff::1", "up", "12:00:00", "Established"),),
        rejected=(Rejection(),),
        detail="1 of 1 sessions up",
    )
    h.settle()
    path = tmp_path_factory.mktemp("control") / "run" / SOCKET_NAME
    server = ControlServer(path, h.agent.snapshot, h.agent.request_reload).start()
    try:
        yield h, path
    finally:
        server.close()


def test_status_answers_with_state_counts_source_and_last_apply(
    running: tuple[Harness, Path],
) -> None:
    _, path = running
    status = ask(path, {"request": "status"})
    assert status["agent"]["state"] == "ready"
    assert status["agent"]["host"] == "host1"
    assert status["datapath"] | {"routes": 0} == {
        "tenants": 1,
        "local_endpoints": 1,
        "remote_addresses": 2,
        "routes": 0,
        "sas": 1,
    }
    assert status["directory"]["peers_up"] == 1
    assert status["directory"]["rejected"][0]["reason"] == "bad-next-hop"
    assert status["directory"]["rejected_total"] == {"bad-next-hop": 1}
    assert status["last_apply"]["ok"] is True
    assert status["last_apply"]["trigger"] == "start"


def test_lookup_of_a_remote_address_names_the_host_and_spis(
    running: tuple[Harness, Path],
) -> None:
    _, path = running
    found = ask(path, {"request": "lookup", "tenant": "blue", "address": "10.0.0.2"})
    assert found.pop("kernel_checked").endswith("+00:00")  # when the last apply read it
    assert found == {
        "tenant": "blue",
        "tenant_id": 100,
        "address": "10.0.0.2",
        "location": "remote",
        "host": "host2",
        "host_address": "2001:db8:0:2::1",
        "tenant_address": str(HOST2.tenant_address(100)),
        "spis": {"out": [], "in": []},  # the fake SA is host2 -> host2: neither way ours
        "kernel_route": "ok",  # the last apply left it as the directory says
    }
    local = ask(path, {"request": "lookup", "tenant": "100", "address": "10.0.0.1"})
    assert (local["location"], local["endpoint"]) == ("local", "web")


def test_lookup_failures_say_not_found_or_bad_request(running: tuple[Harness, Path]) -> None:
    _, path = running
    with pytest.raises(RequestFailed) as missing:
        ask(path, {"request": "lookup", "tenant": "blue", "address": "10.0.0.99"})
    assert missing.value.code == "not-found"
    with pytest.raises(RequestFailed) as bad:
        ask(path, {"request": "lookup", "tenant": "green", "address": "10.0.0.2"})
    assert (bad.value.code, str(bad.value)) == (
        "bad-request",
        "no tenant 'green' in this host's configuration",
    )
    with pytest.raises(RequestFailed, match="unknown request 'shutdown'"):
        ask(path, {"request": "shutdown"})


def test_a_line_that_is_not_a_json_object_is_a_bad_request(running: tuple[Harness, Path]) -> None:
    _, path = running
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(path))
        sock.sendall(b"[1, 2]\n")
        reply = json.loads(sock.makefile().readline())
    assert reply == {
        "ok": False,
        "code": "bad-request",
        "error": "a request is one JSON object on one line",
    }


def test_endpoints_and_directory_dump(running: tuple[Harness, Path]) -> None:
    _, path = running
    listing = ask(path, {"request": "endpoints"})
    assert listing["source"] == "agent"
    assert [(e["name"], e["location"], e["addresses"]) for e in listing["endpoints"]] == [
        ("web", "local", ["10.0.0.1"]),
        (None, "remote", ["10.0.0.2"]),
        (None, "remote", ["fd10::2"]),
    ]
    dump = ask(path, {"request": "directory"})
    assert dump["routes"][0] == {
        "tenant": "blue",
        "tenant_id": 100,
        "prefix": "10.0.0.2/32",
        "host": "host2",
        "host_address": "2001:db8:0:2::1",
        "next_hop": "2001:db8:0:2::1:64",
    }
    assert dump["rejected"][0]["route"].startswith("10.0.0.66/32")


def test_reload_request_is_the_same_as_sighup(running: tuple[Harness, Path]) -> None:
    h, path = running
    assert ask(path, {"request": "reload"}) == {"reload": "requested"}
    assert h.agent.reload_requested


def test_the_socket_is_root_only(running: tuple[Harness, Path]) -> None:
    _, path = running
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.parent.stat().st_uid == os.geteuid()


def test_a_stale_socket_is_replaced_and_a_live_one_refused(tmp_path: Path) -> None:
    path = tmp_path / SOCKET_NAME
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a crashed agent's socket
    h = Harness()
    server = ControlServer(path, h.agent.snapshot, h.agent.request_reload).start()
    try:
        with pytest.raises(ControlError, match="another agent is running"):
            ControlServer(path, h.agent.snapshot, h.agent.request_reload)
    finally:
        server.close()
    assert not path.exists()
    with pytest.raises(AgentDown):
        ask(path, {"request": "status"})
