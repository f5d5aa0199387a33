"""The default lab builds, its hosts reach each other over the underlay, and teardown is total."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from routed_nv.lab.builder import Lab, lab_namespaces
from routed_nv.lab.checks import underlay_pings
from routed_nv.lab.topology import default_topology

pytestmark = pytest.mark.kernel


@pytest.fixture
def lab() -> Iterator[Lab]:
    lab = Lab(default_topology()).build()
    yield lab
    lab.teardown()  # a no-op when the test tore it down itself


def test_underlay_reaches_every_host_pair(lab: Lab) -> None:
    pings = underlay_pings(lab)

    assert len(pings) == 6
    assert [p for p in pings if not p.ok] == []


def test_namespaces_exist_during_and_are_gone_after_teardown(lab: Lab) -> None:
    expected = set(lab.topology.namespaces)
    assert set(lab_namespaces()) == expected
    for workload in lab.topology.workloads:
        link = lab.exec(workload.namespace, ["ip", "-o", "link", "show", "eth0"], check=True)
        assert "LOWER_UP" in link.stdout  # both ends of the workload veth are up

    lab.teardown()

    assert lab_namespaces() == []
