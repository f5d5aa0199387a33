from __future__ import annotations

import pytest

from routed_nv.lab import builder
from routed_nv.lab.builder import Lab, LabError, plan
from routed_nv.lab.topology import default_topology, directory_topology


def test_plan_creates_each_namespace_once_and_links_every_host_to_the_router() -> None:
    topology = default_topology()
    build = plan(topology)
    assert build.namespaces == topology.namespaces
    assert build.forwarding == ["rnv-lab-router", "rnv-lab-host1", "rnv-lab-host2", "rnv-lab-host3"]
    first_ns, router = build.batches[0]
    assert first_ns == "rnv-lab-router"
    assert "link add to-host2 type veth peer name uplink netns rnv-lab-host2" in router


def test_plan_addresses_hosts_and_routes_through_the_router() -> None:
    batches = dict(plan(default_topology()).batches[1:4])
    host2 = batches["rnv-lab-host2"]
    assert "addr add 2001:db8:0:2:ffff::1/128 dev uplink nodad" in host2
    assert "route add 2001:db8::/48 via fe80::1 dev uplink" in host2
    assert "link add wl-red2 type veth peer name eth0 netns rnv-lab-red2" in host2
    routes = plan(default_topology()).batches[4]
    assert routes == (
        "rnv-lab-router",
        [f"route add 2001:db8:0:{i}::/64 via fe80::2 dev to-host{i}" for i in (1, 2, 3)],
    )


def test_a_bgp_underlay_gets_no_static_underlay_routes() -> None:
    lines = [line for _, batch in plan(directory_topology()).batches for line in batch]
    assert "addr add 2001:db8:0:11:ffff::1/128 dev uplink nodad" in lines  # links still built
    assert not any(line.startswith("route ") for line in lines)


def test_plan_leaves_the_tenant_datapath_alone() -> None:
    lines = [line for _, batch in plan(default_topology()).batches for line in batch]
    assert not any("vrf" in line or "10.0.0." in line or "fd10::" in line for line in lines)
    workload = dict(plan(default_topology()).batches)["rnv-lab-blue1"]
    assert workload == ["link set lo up", "link set eth0 up"]


def test_build_refuses_leftovers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builder, "lab_namespaces", lambda: ["rnv-lab-host1"])
    with pytest.raises(LabError, match="routed-nv lab down"):
        Lab(default_topology()).build()
