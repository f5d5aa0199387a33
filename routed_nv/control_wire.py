"""One request on the agent's control socket, on the wire: connect, one JSON line out, one JSON
line back (`exchange`), and the client's `ask`, which names the errors for operators. Stdlib
only, so that the CNI plugin and `routed-nv endpoint|status|lookup`, which must start fast, load
neither the agent, the calculation nor pydantic (issue 16: seconds of imports in the UML guest
before the request reached the agent); agent/control.py names these too."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from routed_nv.errors import RoutedNvError, TransientError

SOCKET_NAME = "agent.sock"
TIMEOUT_S = 5.0


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


class ControlError(RoutedNvError, RuntimeError):
    pass


class AgentDown(ControlError, TransientError):
    """No agent answers on the socket."""


class RequestFailed(ControlError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def ask(path: Path, request: dict[str, Any], timeout: float = TIMEOUT_S) -> Any:
    """Send one request; the result, or RequestFailed with the agent's code and message."""
    try:
        reply = exchange(str(path), request, timeout)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise AgentDown(f"no agent answers on {path} ({exc.strerror})") from None
    except PermissionError:
        raise ControlError(f"{path}: permission denied (the control socket is root's)") from None
    except WireError as exc:
        raise ControlError(str(exc)) from None
    if not reply.get("ok"):
        raise RequestFailed(reply.get("code", "error"), reply.get("error", "failed"))
    return reply["result"]
