"""MirrorWatch against a real kernel that drops its events: a small receive buffer, a slow
reader, and routes written in random order in many `ip -batch` runs, as an agent writes them.
After an overflow the kernel drops further events without another ENOBUFS until the socket's
queue has been empty, so a resync that dumps behind a full queue lost routes for good (the
directory bench's watch missed 35,000 of 100,000; on a host, 153-220 of 100,000 with this
setup). The watch must end with exactly what the kernel has."""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest

from routed_nv.directory import netlink_watch as nw

pytestmark = pytest.mark.kernel

NS = "rnv-test-watch"
TABLE = 1000
N = 50_000
CHUNK = 2_000


def ip(*args: str, batch: str | None = None) -> None:
    subprocess.run(["ip", "-n", NS, *args], input=batch, text=True, check=True, timeout=300)


@pytest.fixture
def namespace() -> Iterator[str]:
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        ip("link", "add", "d0", "type", "veth", "peer", "name", "d1")
        ip("link", "set", "d0", "up")
        ip("link", "set", "d1", "up")
        ip("addr", "add", "192.0.2.2/24", "dev", "d0")
        yield NS
    finally:
        subprocess.run(["ip", "netns", "del", NS], check=False)


class SlowWatch(nw.MirrorWatch):
    def _recv(self, flags: int = 0) -> bytes:
        data = super()._recv(flags)
        time.sleep(0.005)  # a reader that shares its CPU: the queue fills while it works
        return data


def test_the_watch_ends_with_every_route_though_the_kernel_dropped_events(
    namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nw, "RCVBUF", 256 * 1024)
    lines = [f"route add 10.{i >> 16}.{i >> 8 & 255}.{i & 255}/32 via 192.0.2.1 dev d0 "
             f"table {TABLE}\n" for i in range(N)]  # fmt: skip
    random.Random(1).shuffle(lines)

    def writer() -> None:
        for start in range(0, N, CHUNK):
            ip("-batch", "-", batch="".join(lines[start : start + CHUNK]))

    watch = SlowWatch(namespace, tables={TABLE}).open()
    try:
        thread = threading.Thread(target=writer)
        thread.start()
        while thread.is_alive():
            watch.wait(0.5)
        settle = time.monotonic() + 30  # the writer is done: what is queued arrives now
        while len(watch.routes) < N and time.monotonic() < settle:
            watch.wait(0.5)
        thread.join()
    finally:
        watch.close()
    kernel = subprocess.run(
        ["ip", "-n", NS, "route", "show", "table", str(TABLE)],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.count("\n")  # fmt: skip
    print(f"\nwatch {len(watch.routes)} routes, kernel {kernel}")
    assert kernel == N
    assert len(watch.routes) == N
