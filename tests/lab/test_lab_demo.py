"""`routed-nv lab demo`, the README's first command, as a user runs it (here already on a kernel
with the datapath, so it runs directly): the BGP directory by default, and it cleans up."""

from __future__ import annotations

import re
import subprocess

import pytest

from routed_nv.lab.agents import ROUTED_NV
from routed_nv.lab.builder import lab_namespaces

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
