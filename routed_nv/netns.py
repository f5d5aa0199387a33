"""Run a function inside a named network namespace (/run/netns/NAME, as `ip netns` makes them).

The one place that enters a namespace: the routing driver's netlink sockets and sysctls, the
netfilter driver's iptables-restore, the mirror-table watch and the metrics' XFRM counters all come
through here. The work runs in a short-lived thread that setns()es first: the agent's own threads
never change namespace and nothing has to be switched back. What the function opens there (a /proc
file, a socket) and any process it starts (forked from that thread: iptables-legacy-restore) is in
the namespace. Python 3.11 has no os.setns, hence the one libc call.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from routed_nv.errors import RoutedNvError

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


class NetnsError(RoutedNvError):
    """The namespace does not exist or cannot be entered (the message names it)."""


def exists(netns: str) -> bool:
    return os.path.exists(os.path.join(NETNS_DIR, netns))


def run_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """fn() in netns (None: right here, in the caller's namespace)."""
    if netns is None:
        return fn()
    return run_in_netns_path(os.path.join(NETNS_DIR, netns), fn)


def run_in_netns_path(path: str, fn: Callable[[], T]) -> T:
    """fn() in the namespace a file names (/run/netns/NAME, /proc/PID/ns/net: a CNI_NETNS)."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            _setns(path)
            outcome["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{os.path.basename(path)}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _setns(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise NetnsError(f"network namespace {os.path.basename(path)}: {exc.strerror}") from None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise NetnsError(f"cannot enter network namespace {path}: {os.strerror(err)}")
    finally:
        os.close(fd)
