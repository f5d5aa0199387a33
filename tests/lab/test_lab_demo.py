"""`routed-nv lab demo`, the README's first command, as a user runs it (here already on a kernel
with the datapath, so it runs directly): the BGP directory by default, and it cleans up; with
`--keying ike` a charon per host, and the wire carries exactly the SPIs `sa list` reports."""

from __future__ import annotations

import contextlib
import re
import subprocess
from pathlib import Path

import pytest

from routed_nv.lab.agents import ROUTED_NV
from routed_nv.lab.builder import lab_namespaces
from routed_nv.lab.charon import CHARON

pytestmark = pytest.mark.kernel


def demo(*args: str) -> str:
    """`routed-nv lab demo ARGS` as a user runs it; its output, once it has passed."""
    done = subprocess.run(
        [*ROUTED_NV, "lab", "demo", *args], capture_output=True, text=True, timeout=600, check=False
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tenants: 24/24 same-tenant probes isolated" in done.stdout
    assert done.stdout.rstrip().splitlines()[-1].startswith("lab torn down; demo ok")
    assert lab_namespaces() == []
    return done.stdout


def test_the_demo_proves_isolation_over_the_bgp_directory_and_cleans_up() -> None:
    out = demo()
    assert "underlay: 6/6 host pairs reachable" in out
    assert "BIRD on rr1, rr2 (route reflectors) and every host" in out
    assert "every host learned its tenants' remote workloads (24 addresses in all)" in out
    wire = re.search(r"underlay wire: (\d+) ESP packets .* (\d+) other packets", out)
    assert wire and int(wire[1]) > 0 and wire[2] == "0", out
    assert "exit status {'host1': 0, 'host2': 0, 'host3': 0}" in out


def test_the_ike_demo_sees_only_esp_with_the_spis_sa_list_reports_and_cleans_up() -> None:
    out = demo("--keying", "ike")
    assert "charon on every host (pids {'host1': " in out
    # 3 hosts x 2 peers x 2 shared tenants, at both ends with the same SPIs
    assert "both ends with the same SPIs (12 listed on 3 hosts)" in out
    wire = re.search(r"underlay wire: (\d+) ESP packets between hosts \(SPIs ([^)]*)\), ", out)
    assert wire and int(wire[1]) > 0 and " 0 other packets" in out, out
    listed = re.search(r"sa list: 12 rows on 3 hosts .*, SPIs ([^;]*); ESP SPIs (.*)", out)
    assert listed and listed[2] == "exactly these on the wire", out
    on_wire = set(wire[2].split(", "))
    # one SPI per SA: 3 host pairs x 2 tenants x 2 directions
    assert on_wire == set(listed[1].split(", ")) and len(on_wire) == 12
    assert "charons stopped by SIGTERM (pids {'host1': " in out
    assert _charons_running() == []


def _charons_running() -> list[int]:
    """charon processes on this (guest) machine: the demo started the only ones."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and (proc / "exe").resolve() == Path(CHARON):
                found.append(int(proc.name))
    return found
