"""The agent's local control socket: one JSON request line in, one JSON answer line out.

    {"request": "status"}
    {"request": "lookup", "tenant": "blue", "address": "10.0.0.2"}
    {"request": "endpoints"}
    {"request": "directory"}
    {"request": "reload"}                  (the same as SIGHUP)
    {"request": "clear-duplicate", "tenant": "blue", "address": "10.0.0.2"}
    {"request": "resync"}                  (apply now, reading the kernel again first)
    {"request": "view"}                    (the directory view last applied: `routed-nv apply`)
    {"request": "endpoint.add" | "endpoint.delete" | "endpoint.get" | "endpoint.list", ...}
                                           (the endpoint API: endpoint_api.py, docs/agent.md)

Answers are {"ok": true, "result": ...} or {"ok": false, "code": "not-found" | "bad-request",
"error": "..."} (the endpoint API adds "conflict", "not-programmed" and "timeout"). The socket is
<run dir>/agent.sock, mode 0600, and the peer's uid is checked too (root or the agent's own
user): it reveals the deployment's layout and can change endpoints.
Requests other than the endpoint API's only read a Snapshot, so they never wait for an apply;
each connection has its own thread, so an endpoint request waiting for its apply blocks no one.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from routed_nv.agent import report, view_json
from routed_nv.agent.snapshot import Snapshot

# the client side lives in a light module (the CLI must not import this one); named here too
from routed_nv.control_wire import (  # noqa: F401
    SOCKET_NAME,
    TIMEOUT_S,
    AgentDown,
    ControlError,
    RequestFailed,
    ask,
)

MAX_REQUEST = 64 * 1024
_UCRED = struct.Struct("=iII")  # pid, uid, gid


ClearDuplicate = Callable[[tuple[int, Any]], None]


def answer(
    request: dict[str, Any],
    snap: Snapshot,
    reload: Callable[[], None],
    clear: ClearDuplicate | None = None,
) -> dict[str, Any]:
    kind = request.get("request")
    try:
        if kind == "status":
            return answer_ok(report.status(snap))
        if kind == "endpoints":
            return answer_ok(
                {"source": "agent", "endpoints": report.endpoints(snap.config, snap.view)}
            )
        if kind == "directory":
            return answer_ok(report.directory(snap))
        if kind == "lookup":
            tenant, address = str(request.get("tenant", "")), str(request.get("address", ""))
            found = report.lookup(snap.config, snap.view, snap.sas, tenant, address, snap.drift)
            if found is None:
                message = f"no endpoint {address} in tenant {tenant}"
                if why := report.withdrawn(snap, tenant, address):
                    message += f": {why}"
                return answer_error("not-found", message)
            return answer_ok(found)
        if kind == "view":
            return answer_ok(
                {
                    "source": snap.source.name,
                    "in_sync": snap.source.in_sync,
                    "applied": snap.last_apply is not None,
                    "view": view_json.encode(snap.view),
                }
            )
        if kind == "reload":
            reload()
            return answer_ok({"reload": "requested"})
        if kind == "clear-duplicate" and clear is not None:
            tenant, address = str(request.get("tenant", "")), str(request.get("address", ""))
            where = report.duplicate(snap, tenant, address)
            if where is None:
                return answer_error("not-found", f"{address} in tenant {tenant} is not a duplicate")
            clear(where)
            return answer_ok({"cleared": {"tenant_id": where[0], "prefix": str(where[1])}})
    except report.QueryError as exc:
        return answer_error("bad-request", str(exc))
    return answer_error("bad-request", f"unknown request {kind!r}")


def answer_ok(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def answer_error(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "error": message}


class _Server(socketserver.ThreadingUnixStreamServer):
    # socketserver listens with a backlog of 5: a burst of endpoint API clients (a CNI plugin
    # starting 50 pods) got EAGAIN from connect() before the accept thread caught up
    request_queue_size = 256


class ControlServer:
    def __init__(
        self,
        path: Path,
        snapshot: Callable[[], Snapshot],
        reload: Callable[[], None],
        endpoints: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        clear: ClearDuplicate | None = None,
        check: Callable[[], object] | None = None,
        resync: Callable[[], None] | None = None,
    ) -> None:
        """`endpoints` answers the endpoint API's requests (endpoint_api.EndpointApi.answer);
        `check` compares the kernel with the agent's view before `status` and `lookup` answer
        (Agent.check_kernel), `resync` brings the periodic resync forward."""
        self.path = path
        _claim(path)
        server = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = TIMEOUT_S

            def handle(self) -> None:
                reply = server.handle(self.connection, self.rfile.readline(MAX_REQUEST))
                self.wfile.write(json.dumps(reply).encode() + b"\n")

        self._server = _Server(str(path), Handler)
        self._server.daemon_threads = True
        os.chmod(path, 0o600)
        self._snapshot = snapshot
        self._reload = reload
        self._clear = clear
        self._endpoints = endpoints
        self._check = check
        self._resync = resync
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="control", daemon=True
        )

    def start(self) -> ControlServer:
        self._thread.start()
        return self

    def handle(self, conn: socket.socket, line: bytes) -> dict[str, Any]:
        uid = _peer_uid(conn)
        if uid not in (0, os.geteuid()):
            return answer_error("bad-request", f"uid {uid} may not use the control socket")
        try:
            request = json.loads(line)
        except ValueError:
            return answer_error("bad-request", "a request is one JSON object on one line")
        if not isinstance(request, dict):
            return answer_error("bad-request", "a request is one JSON object on one line")
        if self._endpoints is not None and str(request.get("request")).startswith("endpoint."):
            return self._endpoints(request)
        kind = request.get("request")
        if kind == "resync" and self._resync is not None:
            self._resync()
            return answer_ok({"resync": "requested"})
        if kind in ("status", "lookup") and self._check is not None:
            self._check()
        return answer(request, self._snapshot(), self._reload, self._clear)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return _UCRED.unpack(creds)[1]


def _claim(path: Path) -> None:
    """Make way for our socket: a stale one (its agent died) goes, a live one is an error."""
    if not path.exists():
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        return
    try:
        ask(path, {"request": "status"}, timeout=1.0)
    except AgentDown:
        path.unlink()
        return
    raise ControlError(f"another agent is running (it answers on {path})")
