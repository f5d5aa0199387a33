from __future__ import annotations

import socket
import threading
from collections import OrderedDict
from pathlib import Path

import pytest

from routed_nv.esp.vici_adapter import ViciError, ViciSession, decode


def test_decode_turns_vici_bytes_into_str() -> None:
    reply = OrderedDict([(b"rnv-host2", OrderedDict([(b"local_addrs", [b"2001:db8::1"])]))])
    assert decode(reply) == {"rnv-host2": {"local_addrs": ["2001:db8::1"]}}


def test_a_missing_socket_is_a_clear_error(tmp_path: Path) -> None:
    with (
        pytest.raises(ViciError, match=r"does not exist: is charon running"),
        ViciSession(tmp_path / "x"),
    ):
        pass


def test_a_dead_socket_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "charon.vici"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the file stays, nobody listens: charon died
    with pytest.raises(ViciError, match="cannot connect to charon"), ViciSession(path):
        pass


def test_charon_closing_the_connection_mid_request_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "charon.vici"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def hang_up() -> None:
        conn, _ = server.accept()
        conn.recv(1024)
        conn.close()

    thread = threading.Thread(target=hang_up)
    thread.start()
    with pytest.raises(ViciError, match="list-conns"), ViciSession(path, timeout_s=5) as vici:
        vici.list_conns()
    thread.join()
    server.close()
