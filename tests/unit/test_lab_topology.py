from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, IPv6Network

import pytest

from routed_nv.lab.builder import plan
from routed_nv.lab.topology import NS_PREFIX, Node, Topology, TopologyError, default_topology


def test_default_topology_shape() -> None:
    topology = default_topology()
    assert [(h.id, h.name, str(h.prefix)) for h in topology.hosts] == [
        (1, "host1", "2001:db8:0:1::/64"),
        (2, "host2", "2001:db8:0:2::/64"),
        (3, "host3", "2001:db8:0:3::/64"),
    ]
    assert str(topology.aggregate) == "2001:db8::/48"
    assert [(t.id, t.name) for t in topology.tenants] == [(100, "blue"), (200, "red")]
    assert topology.route_reflectors == ()
    for host in topology.hosts:
        assert sorted(w.tenant for w in topology.workloads_on(host.name)) == ["blue", "red"]


def test_tenants_overlap_on_purpose() -> None:
    topology = default_topology()
    blue, red = topology.tenant("blue"), topology.tenant("red")
    assert (blue.ipv4, blue.ipv6) == (red.ipv4, red.ipv6)
    assert topology.tenants[0].ipv4.overlaps(topology.tenants[1].ipv4)
    by_name = {w.name: w for w in topology.workloads}
    assert by_name["blue2"].ipv4 == by_name["red2"].ipv4 == IPv4Address("10.0.0.2")


def test_uplink_address_stays_clear_of_host_and_tenant_interface_ids() -> None:
    host = default_topology().host("host2")
    assert host.uplink_address == IPv6Address("2001:db8:0:2:ffff::1")
    tenant_ids = range(1, 65536)
    assert int(host.uplink_address) - int(host.prefix.network_address) not in tenant_ids


def test_every_namespace_carries_the_lab_prefix_and_is_unique() -> None:
    names = default_topology().namespaces
    assert len(names) == len(set(names)) == 1 + 3 + 6
    assert all(n.startswith(NS_PREFIX) for n in names)
    assert names[0] == "rnv-lab-router"


def test_route_reflectors_are_underlay_nodes() -> None:
    topology = default_topology()
    rr = Node(id=101, name="rr1", prefix=IPv6Network("2001:db8:0:ff01::/64"))
    with_rr = replace(topology, route_reflectors=(rr,))
    assert with_rr.underlay_nodes[-1] == rr
    assert "rnv-lab-rr1" in with_rr.namespaces
    router_lines = [
        line for ns, lines in plan(with_rr).batches if ns == "rnv-lab-router" for line in lines
    ]
    assert "route add 2001:db8:0:ff01::/64 via fe80::2 dev to-rr1" in router_lines


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: {"hosts": (*t.hosts, replace(t.hosts[0], name="host9"))}, "duplicate node ids"),
        (
            lambda t: {"hosts": (replace(t.hosts[0], prefix=IPv6Network("2001:db9::/64")),)},
            "is not a /64 in",
        ),
        (lambda t: {"workloads": (replace(t.workloads[0], host="host7"),)}, "unknown tenant"),
        (
            lambda t: {"workloads": (replace(t.workloads[0], ipv4=IPv4Address("10.1.0.1")),)},
            "addresses outside",
        ),
        (
            lambda t: {"workloads": (t.workloads[0], replace(t.workloads[0], name="other"))},
            "duplicate addresses",
        ),
        (lambda t: {"hosts": (replace(t.hosts[0], name="router"), *t.hosts[1:])}, "duplicate"),
        (lambda t: {"workloads": (replace(t.workloads[0], name="x" * 20),)}, "name too long"),
    ],
)
def test_validation_names_the_offender(
    change: Callable[[Topology], dict[str, object]], message: str
) -> None:
    topology = default_topology()
    with pytest.raises(TopologyError, match=message):
        replace(topology, **change(topology))  # type: ignore[arg-type]
