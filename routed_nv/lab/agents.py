"""`routed-nv agent` as a real process in each host namespace of a built lab.

Each agent gets the host's config file (LabDatapath writes them), its own run directory (control
socket) and its own sd_notify socket, which this process reads: readiness is measured exactly
as systemd would see it. Agents are started through Lab.spawn, so a lab teardown stops any that
a test left running (by pid).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from routed_nv.agent.control import SOCKET_NAME, ask
from routed_nv.lab.builder import LabError
from routed_nv.lab.datapath import LabDatapath

ROUTED_NV = [sys.executable, "-m", "routed_nv"]  # the CLI as installed, without a PATH lookup
READY_TIMEOUT_S = 120.0  # a deadline: three agents starting at once in a loaded guest took ~60 s
STOP_TIMEOUT_S = 30.0


class LabAgent:
    def __init__(self, lab: LabDatapath, host: str, workdir: Path) -> None:
        self.lab = lab
        self.host = host
        self.namespace = lab.lab.topology.host(host).namespace
        self.config_path = lab.config_files[host]
        self.run_dir = lab.configs[host].agent.run_dir  # the config's: `status` finds it there
        self.log_path = workdir / host / "agent.log"
        self._notify_path = workdir / host / "notify"
        self._notify: socket.socket | None = None
        self._inbox: queue.Queue[dict[str, str]] = queue.Queue()
        self.proc: subprocess.Popen[bytes] | None = None
        self._spawned = 0.0
        self.messages: list[dict[str, str]] = []
        self.first_seen: dict[str, float] = {}  # sd_notify key -> time.monotonic() it arrived

    def start(self, *args: str) -> float:
        """Start the agent; returns the seconds from start to READY=1."""
        self.spawn(*args)
        return self.wait_ready()

    def spawn(self, *args: str) -> float:
        """Start the agent without waiting for it (wait_ready() does); returns when
        (time.monotonic()) it started."""
        self._notify_path.unlink(missing_ok=True)
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._notify.bind(str(self._notify_path))
        # drain the socket all the time, as systemd does: an undrained queue drops messages
        threading.Thread(target=self._drain, args=(self._notify,), daemon=True).start()
        argv = [*ROUTED_NV, "agent", "-c", str(self.config_path)]
        argv += ["--run-dir", str(self.run_dir), *args]
        self._spawned = time.monotonic()
        env = {**os.environ, "NOTIFY_SOCKET": str(self._notify_path)}
        with self.log_path.open("ab") as log:
            self.proc = self.lab.lab.spawn(self.namespace, argv, stdout=log, stderr=log, env=env)
        return self._spawned

    def wait_ready(self) -> float:
        """Seconds from the last spawn() to its READY=1."""
        self.until("READY")
        return time.monotonic() - self._spawned

    def until(self, key: str, timeout: float = READY_TIMEOUT_S) -> dict[str, str]:
        """The next sd_notify message that carries `key` (READY, RELOADING, STOPPING...)."""
        end = time.monotonic() + timeout
        while True:
            try:
                message = self._inbox.get(timeout=max(0.01, end - time.monotonic()))
            except queue.Empty:
                raise LabError(
                    f"{self.host}: no {key}= from the agent in {timeout:g} s; log:\n{self.log()}"
                ) from None
            self.messages.append(message)
            if key in message:
                return message

    def _drain(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(4096).decode()
            except OSError:  # closed by stop()
                return
            message = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            now = time.monotonic()
            for key in message:
                self.first_seen.setdefault(key, now)
            self._inbox.put(message)

    def reload(self) -> dict[str, str]:
        """SIGHUP; returns the READY message that ends the reload (after its apply)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        self.until("RELOADING")
        return self.until("READY")

    def stop(self) -> int:
        """SIGTERM; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # the agent enables faulthandler: SIGABRT writes every thread's stack to its log
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait(timeout=10)
            raise LabError(f"{self.host}: agent did not stop; log:\n{self.log()}") from None
        self.until("STOPPING", timeout=1)  # sent before the exit: already queued
        if self._notify is not None:
            self._notify.close()
            self._notify = None
        return code

    def status(self) -> dict[str, Any]:
        return ask(self.run_dir / SOCKET_NAME, {"request": "status"})  # type: ignore[no-any-return]

    def status_command(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`routed-nv status` as an operator runs it (the socket is a path: any namespace)."""
        return subprocess.run(
            [*ROUTED_NV, "status", "--run-dir", str(self.run_dir), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


def sa_list(config_file: Path) -> list[dict[str, Any]]:
    """`routed-nv sa list -o json` as an operator runs it on the host (IKE keying: charon's
    list-sas through the VICI socket the config names). Raises LabError when it fails."""
    done = subprocess.run(
        [*ROUTED_NV, "sa", "list", "-c", str(config_file), "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise LabError(f"routed-nv sa list -c {config_file}: {done.stderr.strip()}")
    return json.loads(done.stdout)  # type: ignore[no-any-return]


class LabAgents:
    """One LabAgent per lab host."""

    def __init__(self, lab: LabDatapath, workdir: Path) -> None:
        self.agents = {h.name: LabAgent(lab, h.name, workdir) for h in lab.lab.topology.hosts}

    def __getitem__(self, host: str) -> LabAgent:
        return self.agents[host]

    def start_all(self, *args: str) -> dict[str, float]:
        """Start every agent at once (as hosts boot); each one's seconds to READY=1."""
        for agent in self.agents.values():
            agent.spawn(*args)
        return {host: agent.wait_ready() for host, agent in self.agents.items()}

    def stop_all(self) -> dict[str, int]:
        return {
            host: a.stop() for host, a in self.agents.items() if a.proc and a.proc.poll() is None
        }
