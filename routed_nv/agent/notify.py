"""sd_notify(3) in a few lines of stdlib: readiness and status for a systemd Type=notify unit.

Without $NOTIFY_SOCKET (not started by systemd, or a lab) every call is a no-op. A failure to
send is ignored, and a send never blocks (a full receiver queue drops the message): readiness
reporting must never stop the agent, not even from stopping.
"""

from __future__ import annotations

import os
import socket
import time

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get(NOTIFY_SOCKET_ENV) if address is None else address
        # "@name" is an abstract socket: the leading NUL byte is how Linux spells it.
        self._address = "\0" + address[1:] if address and address.startswith("@") else address

    def send(self, **fields: str | int) -> None:
        """sd_notify(READY=1, STATUS=...): notify.send(READY=1, STATUS="applied")."""
        if not self._address:
            return
        message = "\n".join(f"{k}={v}" for k, v in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # a datagram socket blocks when the receiver's queue is full (net.unix.
                # max_dgram_qlen, 10 by default): a reader that does not drain must not hang us
                sock.sendto(message, socket.MSG_DONTWAIT, self._address)
        except OSError:
            pass

    def ready(self, status: str) -> None:
        self.send(READY=1, STATUS=status)

    def reloading(self, status: str) -> None:
        # systemd's Type=notify-reload wants the monotonic time of the reload with RELOADING=1
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(RELOADING=1, MONOTONIC_USEC=usec, STATUS=status)

    def status(self, status: str) -> None:
        self.send(STATUS=status)

    def stopping(self, status: str) -> None:
        self.send(STOPPING=1, STATUS=status)
