"""The lab's memory log, against a /proc made for the test and the real one."""

from __future__ import annotations

import os
import time
from pathlib import Path

from routed_nv.lab.memory_log import MemoryLog, largest, sample


def fake_proc(root: Path) -> Path:
    (root / "meminfo").write_text("MemTotal: 6000000 kB\nMemAvailable:    2097152 kB\n")
    for pid, name, rss in ((10, "bird", 51200), (11, "python3", 409600), (12, "kthreadd", None)):
        (root / str(pid)).mkdir()
        rss_line = f"VmRSS:\t{rss} kB\n" if rss is not None else ""
        (root / str(pid) / "status").write_text(f"Name:\t{name}\nPid:\t{pid}\n{rss_line}")
    return root


def test_the_largest_processes_come_first_and_kernel_threads_are_left_out(tmp_path: Path) -> None:
    proc = fake_proc(tmp_path)
    assert largest(5, proc) == [(409600, "python3", 11), (51200, "bird", 10)]
    assert sample(1, proc) == "available 2048 MB; largest: python3[11] 400 MB"


def test_the_log_is_written_while_the_run_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "lab" / "memory.log"
    with MemoryLog(path, every_s=0.05, top=100_000):
        time.sleep(0.3)
        lines = path.read_text().splitlines()  # already there: a killed run keeps them
    assert len(lines) >= 2
    assert all("available" in line and "largest:" in line for line in lines)
    assert f"[{os.getpid()}]" in path.read_text()  # every process: this one among them
