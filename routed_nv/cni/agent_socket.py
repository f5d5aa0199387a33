"""The agent's control socket as the plugin needs it: one JSON request per connection, one JSON
answer (docs/agent.md, "Endpoint API"), over routed_nv.control_wire: agent/control.py's client
brings the agent's report modules (and pydantic) with it, 0.2 s of every ADD."""

from __future__ import annotations

from typing import Any

from routed_nv import control_wire
from routed_nv.errors import RoutedNvError, TransientError

Json = dict[str, Any]
MARGIN_S = 10.0  # beyond the agent's own wait: it answers "timeout" before we give up


class AgentDown(TransientError):
    """Nothing answers on the socket (not started, crashed, restarting)."""


class AgentRefused(RoutedNvError):
    def __init__(self, code: str, error: str) -> None:
        super().__init__(f"{code}: {error}")
        self.code = code
        self.error = error


def ask(path: str, request: Json, wait: float = 5.0) -> Any:
    """The result, AgentRefused with the agent's code, or AgentDown."""
    try:
        reply = control_wire.exchange(path, request, wait + MARGIN_S)
    except OSError as exc:
        raise AgentDown(f"no agent answers on {path} ({exc.strerror or exc})") from None
    except control_wire.WireError as exc:
        raise AgentDown(str(exc)) from None
    if not reply.get("ok"):
        raise AgentRefused(str(reply.get("code", "error")), str(reply.get("error", "failed")))
    return reply["result"]
