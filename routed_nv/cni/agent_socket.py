"""The agent's control socket as the plugin needs it: one JSON request per connection, one JSON
answer (docs/agent.md, "Endpoint API"). Stdlib only: agent/control.py's client brings the
agent's report modules (and pydantic) with it, 0.2 s of every ADD."""

from __future__ import annotations

import json
import socket
from typing import Any

Json = dict[str, Any]
MARGIN_S = 10.0  # beyond the agent's own wait: it answers "timeout" before we give up


class AgentDown(Exception):
    """Nothing answers on the socket (not started, crashed, restarting)."""


class AgentRefused(Exception):
    def __init__(self, code: str, error: str) -> None:
        super().__init__(f"{code}: {error}")
        self.code = code
        self.error = error


def ask(path: str, request: Json, wait: float = 5.0) -> Any:
    """The result, AgentRefused with the agent's code, or AgentDown."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(wait + MARGIN_S)
        try:
            sock.connect(path)
        except OSError as exc:
            raise AgentDown(f"no agent answers on {path} ({exc.strerror or exc})") from None
        data = b""
        try:
            sock.sendall(json.dumps(request).encode() + b"\n")
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            raise AgentDown(f"{path}: {exc}") from None
    try:
        reply = json.loads(data)
    except ValueError:
        raise AgentDown(f"{path}: the agent sent no answer") from None
    if not reply.get("ok"):
        raise AgentRefused(str(reply.get("code", "error")), str(reply.get("error", "failed")))
    return reply["result"]
