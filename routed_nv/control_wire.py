"""One request on the agent's control socket, on the wire: connect, one JSON line out, one JSON
line back. Stdlib only, so that the CNI plugin (which must start fast) and the CLI's client
(agent/control.py, which names the errors for operators) share it."""

from __future__ import annotations

import json
import socket
from typing import Any

from routed_nv.errors import RoutedNvError


class WireError(RoutedNvError):
    """Connected, but the exchange failed or the answer is no JSON (the message names the path)."""


def exchange(path: str, request: dict[str, Any], timeout: float) -> dict[str, Any]:
    """The agent's answer object; OSError from connect as it is (the caller says what it means)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        data = b""
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise WireError(f"{path}: {exc}") from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise WireError(f"{path}: the agent sent no answer") from None
    if not isinstance(reply, dict):
        raise WireError(f"{path}: the agent's answer is no JSON object")
    return reply
