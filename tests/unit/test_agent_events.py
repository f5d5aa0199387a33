"""Event log lines (text and JSON, secrets redacted) and sd_notify datagrams."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

from routed_nv.agent.events import EventLog
from routed_nv.agent.notify import Notifier
from routed_nv.config.model import LogFormat
from routed_nv.model.secret import Secret


def test_text_lines_are_dotted_events_with_key_value_fields() -> None:
    out = io.StringIO()
    log = EventLog(stream=out)
    log("agent.apply", ok=True, changes=3, seconds=0.4213, trigger="directory,reload")
    log("agent.reload.problem", problem='tenants.blue.id: 70000 is "out" of range', none=None)
    assert out.getvalue().splitlines() == [
        "agent.apply ok=true changes=3 seconds=0.421 trigger=directory,reload",
        'agent.reload.problem problem="tenants.blue.id: 70000 is \\"out\\" of range" none=null',
    ]


def test_json_lines_carry_the_same_names() -> None:
    out = io.StringIO()
    EventLog(LogFormat.JSON, stream=out)("agent.apply", ok=False, changes=0)
    record = json.loads(out.getvalue())
    assert (record["event"], record["ok"], record["changes"]) == ("agent.apply", False, 0)
    assert "time" in record


def test_secrets_never_reach_the_log() -> None:
    out = io.StringIO()
    log = EventLog(stream=out)
    log("esp.sa", psk="hunter2", tenant_key="00ff", bgp_password="pw", spi=7)
    log("esp.sa", material=str(Secret(b"\x01" * 20)))
    text = out.getvalue()
    assert "hunter2" not in text and "00ff" not in text and "pw " not in text
    assert "psk=<redacted> tenant_key=<redacted> bgp_password=<redacted> spi=7" in text
    assert "<20 bytes redacted>" in text


def test_notify_sends_datagrams_and_is_a_no_op_without_a_socket(tmp_path: Path) -> None:
    Notifier("").ready("nobody listens")  # no NOTIFY_SOCKET: nothing happens, nothing fails
    Notifier(str(tmp_path / "gone")).ready("socket missing")  # errors are swallowed
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        notifier = Notifier(str(path))
        notifier.ready("applied")
        notifier.reloading("reloading")
        notifier.stopping("bye")
        got = [sock.recv(4096).decode().splitlines() for _ in range(3)]
    assert got[0] == ["READY=1", "STATUS=applied"]
    assert got[1][0] == "RELOADING=1" and got[1][1].startswith("MONOTONIC_USEC=")
    assert got[2] == ["STOPPING=1", "STATUS=bye"]


def test_notify_never_blocks_on_a_receiver_that_does_not_read(tmp_path) -> None:
    import socket
    import threading

    from routed_nv.agent.notify import Notifier

    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        notifier = Notifier(str(path))
        sender = threading.Thread(
            target=lambda: [notifier.status(f"apply {i}") for i in range(500)], daemon=True
        )
        sender.start()
        sender.join(timeout=5)
        assert not sender.is_alive()  # far more messages than the queue holds, none blocked
        assert receiver.recv(100).startswith(b"STATUS=apply 0")
