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


def test_the_demo_proves_isolation_over_the_bgp_directory_and_cleans_up() -> None:
    done = subprocess.run(
        [*ROUTED_NV, "lab", "demo"], capture_output=True, text=True, timeout=600, check=False
    )
    out = done.stdout
    print(out)

    assert done.returncode == 0, out + done.stderr
    assert "underlay: 6/6 host pairs reachable" in out
    assert "BIRD on rr1, rr2 (route reflectors) and every host" in out
    assert "every host learned its tenants' remote workloads (24 addresses in all)" in out
    assert "tenants: 24/24 same-tenant probes isolated" in out
    wire = re.search(r"underlay wire: (\d+) ESP packets .* (\d+) other packets", out)
    assert wire and int(wire[1]) > 0 and wire[2] == "0", out
    assert "exit status {'host1': 0, 'host2': 0, 'host3': 0}" in out
    assert out.rstrip().splitlines()[-1].startswith("lab torn down; demo ok")
    assert lab_namespaces() == []


def test_the_ike_demo_sees_only_esp_with_the_spis_sa_list_reports_and_cleans_up() -> None:
    done = subprocess.run(
        [*ROUTED_NV, "lab", "demo", "--keying", "ike"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    out = done.stdout
    print(out)

    assert done.returncode == 0, out + done.stderr
    assert "charon on every host (pids {'host1': " in out
    # 3 hosts x 2 peers x 2 shared tenants; at both ends with the same SPIs
    assert "one CHILD_SA per peer and shared tenant (12 in all, both ends agree" in out
    assert "tenants: 24/24 same-tenant probes isolated" in out
    wire = re.search(
        r"underlay wire: (\d+) ESP packets between hosts \(SPIs ([^)]*)\), "
        r"control plane: (.*), \d+ link-local .* (\d+) other packets",
        out,
    )
    assert wire and int(wire[1]) > 0 and wire[4] == "0", out
    assert "IKE" in wire[3]  # the charons negotiated on the underlay
    listed = re.search(r"sa list: 12 CHILD_SAs on 3 hosts, SPIs ([^;]*); ESP SPIs (.*)", out)
    assert listed and listed[2] == "exactly these on the wire", out
    on_wire = set(wire[2].split(", "))
    assert on_wire == set(listed[1].split(", ")) and len(on_wire) == 12  # one per SA, 2 per pair
    assert "charons stopped by SIGTERM (pids {'host1': " in out
    assert out.rstrip().splitlines()[-1].startswith("lab torn down; demo ok")
    assert lab_namespaces() == []
    assert _charons_running() == []


def _charons_running() -> list[int]:
    """charon processes on this (guest) machine: the demo started the only ones."""
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and (proc / "exe").resolve() == Path(CHARON):
                found.append(int(proc.name))
    return found
