"""The tap helpers look links up in the caller's network namespace, not through sysfs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="makes a tap in a new namespace")

# A new network namespace without a new mount of /sys (as after a bare unshare or setns): sysfs
# still shows the namespace it was mounted in, where this tap does not exist.
SCRIPT = """
from routed_nv.libvirt import tap
assert not tap.exists("rnv-t-sysfs")
tap.create("rnv-t-sysfs", "fe:54:00:12:34:56", None, None)
print(tap.exists("rnv-t-sysfs"), tap.mac_of("rnv-t-sysfs"))
"""


def test_a_tap_in_a_namespace_sysfs_does_not_show_is_found() -> None:
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", SCRIPT], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "fe:54:00:12:34:56"]
