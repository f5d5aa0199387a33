"""Where a lab's memory goes: every few seconds, the system's available memory and its largest
processes by resident set, appended to a file. The file outlives a run that the (guest) kernel
ends for memory, which is when it is needed: such a run prints nothing but `Killed`."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import TracebackType

PROC = Path("/proc")


def available_kb(proc: Path = PROC) -> int:
    for line in (proc / "meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    return -1


def largest(top: int, proc: Path = PROC) -> list[tuple[int, str, int]]:
    """(VmRSS kB, name, pid) of the `top` largest processes; kernel threads have no VmRSS."""
    found = []
    for status in proc.glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines())
        except (OSError, ValueError):
            continue  # gone meanwhile, or unreadable
        if "VmRSS" in fields:
            rss = int(fields["VmRSS"].split()[0])
            found.append((rss, fields["Name"].strip(), int(status.parent.name)))
    return sorted(found, reverse=True)[:top]


def sample(top: int = 6, proc: Path = PROC) -> str:
    processes = ", ".join(
        f"{name}[{pid}] {rss // 1024} MB" for rss, name, pid in largest(top, proc)
    )
    return f"available {available_kb(proc) // 1024} MB; largest: {processes}"


class MemoryLog:
    """Use as a context manager around the run to watch."""

    def __init__(self, path: Path, every_s: float = 10.0, top: int = 6) -> None:
        self.path = path
        self.every_s = every_s
        self.top = top
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-log", daemon=True)

    def __enter__(self) -> MemoryLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        start = time.monotonic()
        with self.path.open("a", encoding="utf-8") as out:
            while True:
                out.write(f"{time.monotonic() - start:7.1f} s  {sample(self.top)}\n")
                out.flush()  # the run may be killed at any moment
                if self._stop.wait(self.every_s):
                    return
