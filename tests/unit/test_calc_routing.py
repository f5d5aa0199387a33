import dataclasses
import ipaddress

import pytest

from routed_nv.calc.routing import RoutingConflict, desired_routing, endpoint_link_name
from routed_nv.config.model import Config
from routed_nv.config.views import static_view
from routed_nv.model import markers
from routed_nv.model.directory import (
    Claim,
    DirectoryView,
    PeerHost,
    RemoteRoute,
    tenant_outer_address,
)
from routed_nv.model.routing import Address, Link, LinkKind, NeighProxy, Port, Route, Sysctl

ip = ipaddress.ip_address
net = ipaddress.ip_network


def config(**extra):
    base = {
        "host": {
            "name": "host1",
            "id": 1,
            "underlay_prefix": "2001:db8:0:1::/64",
            "underlay_aggregate": "2001:db8::/48",
            "uplink": "eth0",
        },
        "tenants": {
            "blue": {"id": 100, "ipv4": ["10.0.0.0/24"], "ipv6": ["fd10::/64"]},
            "red": {"id": 200, "ipv4": ["10.0.0.0/24"], "ipv6": ["fd10::/64"]},
        },
        "endpoints": {
            "blue-web": {"tenant": "blue", "addresses": ["10.0.0.1", "fd10::1"], "netns": "b1"},
            "red-db": {"tenant": "red", "addresses": ["10.0.0.1", "fd10::1"], "netns": "r1"},
        },
        "peers": {"host2": {"id": 2, "underlay_prefix": "2001:db8:0:2::/64"}},
        "remote_endpoints": {
            "blue-app": {"tenant": "blue", "addresses": ["10.0.0.2", "fd10::2"], "host": "host2"}
        },
    }
    base.update(extra)
    return Config.model_validate(base)


def calc(cfg):
    return desired_routing(cfg, static_view(cfg))


def test_overlapping_tenants_get_separate_vrfs_tables_and_interfaces():
    d = calc(config())
    blue, red = endpoint_link_name("blue-web"), endpoint_link_name("red-db")
    assert {(link.name, link.vrf_table) for link in d.links if link.kind is LinkKind.VRF} == {
        ("rnv-v100", markers.vrf_table(100)),
        ("rnv-v200", markers.vrf_table(200)),
    }
    same_dst = {(r.table, r.dev) for r in d.routes if r.dst == net("10.0.0.1/32")}
    assert same_dst == {
        (markers.vrf_table(100), blue),
        (markers.publish_table(100), blue),
        (markers.vrf_table(200), red),
        (markers.publish_table(200), red),
    }
    assert {link.master for link in d.links if link.name in (blue, red)} == {
        "rnv-v100",
        "rnv-v200",
    }


def test_tunnel_and_workload_mtu_derive_from_underlay_mtu():
    d = calc(config())
    tunnel = next(link for link in d.links if link.name == "rnv-t100")
    assert tunnel.mtu == 1426
    assert tunnel.tunnel.local == config().host.tenant_address(100)
    assert {p.mtu for p in d.ports} == {1426}

    cfg = config(tenants={"blue": {"id": 100, "mtu": 1400}, "red": {"id": 200}})
    d = calc(cfg)
    assert next(link for link in d.links if link.name == "rnv-t100").mtu == 1426
    assert Port("eth0", 1400, netns="b1") in d.ports
    assert Port("eth0", 1426, netns="r1") in d.ports


def test_host_device_carries_host_and_tenant_outer_addresses():
    cfg = config()
    on_rnv0 = {a.address.ip for a in calc(cfg).addresses if a.ifname == markers.HOST_DEVICE}
    host = cfg.host
    assert on_rnv0 == {host.address, host.tenant_address(100), host.tenant_address(200)}


def test_every_vrf_ends_in_unreachable_defaults():
    d = calc(config())
    defaults = {
        (r.table, r.dst.version)
        for r in d.routes
        if r.unreachable and r.proto == markers.RTPROT_INFRA and r.metric == 4278198272
    }
    tables = (markers.vrf_table(100), markers.vrf_table(200))
    assert defaults == {(t, v) for t in tables for v in (4, 6)}


def test_remote_routes_go_via_the_peers_tenant_address_over_the_tunnel():
    d = calc(config())
    remote = {r for r in d.routes if r.proto == markers.RTPROT_REMOTE}
    via = tenant_outer_address(net("2001:db8:0:2::/64"), 100)
    table = markers.vrf_table(100)
    assert remote == {
        Route(net("10.0.0.2/32"), table, 231, dev="rnv-t100", via=via, onlink=True),
        Route(net("fd10::2/128"), table, 231, dev="rnv-t100", via=via, onlink=True),
    }


def test_remote_routes_of_tenants_not_configured_here_are_ignored():
    cfg = config()
    stranger = RemoteRoute(999, net("10.9.9.9/32"), PeerHost("host2", 2, net("2001:db8:0:2::/64")))
    d = desired_routing(cfg, DirectoryView(frozenset({stranger})))
    assert all(r.dst != net("10.9.9.9/32") for r in d.routes)


def test_a_claims_sequence_is_the_publish_routes_metric_above_the_default():
    cfg = config()
    claims = {Claim(100, net("10.0.0.1/32"), 3), Claim(100, net("fd10::1/128"), 2)}
    d = desired_routing(cfg, dataclasses.replace(static_view(cfg), claims=frozenset(claims)))
    published = {(str(r.dst), r.metric, r.proto) for r in d.routes
                 if r.table == markers.publish_table(100)}  # fmt: skip
    endpoint = markers.RTPROT_ENDPOINT
    assert published == {("10.0.0.1/32", 3, endpoint), ("fd10::1/128", 1026, endpoint)}


def test_a_stale_address_has_only_its_marker_and_the_winners_route():
    cfg = config()
    stale = Claim(100, net("10.0.0.1/32"), 4, stale=True)
    winner = RemoteRoute(100, net("10.0.0.1/32"), PeerHost("host2", 2, net("2001:db8:0:2::/64")), 4)
    view = DirectoryView(frozenset({winner}), claims=frozenset({stale}))
    d = desired_routing(cfg, view)
    blue = {(r.table, r.proto, r.metric) for r in d.routes if r.dst == net("10.0.0.1/32")
            and r.table in (markers.vrf_table(100), markers.publish_table(100))}  # fmt: skip
    assert blue == {
        (markers.publish_table(100), markers.RTPROT_STALE, 4),
        (markers.vrf_table(100), markers.RTPROT_REMOTE, 0),
    }
    # the workload itself stays as configured
    assert Link(endpoint_link_name("blue-web"), LinkKind.VETH) in {
        dataclasses.replace(link, mtu=None, master=None, veth_peer=None) for link in d.links
    }


def test_netns_endpoint_gets_a_veth_and_a_configured_workload_side():
    d = calc(config())
    name = endpoint_link_name("blue-web")
    veth = next(link for link in d.links if link.name == name)
    assert (veth.kind, veth.veth_peer.netns, veth.veth_peer.name) == (LinkKind.VETH, "b1", "eth0")
    assert {str(a.address) for a in d.addresses if a.netns == "b1"} == {
        "10.0.0.1/32",
        "fd10::1/128",
    }
    assert {str(a.address) for a in d.addresses if a.ifname == name} == {
        "169.254.0.1/32",
        "fe80::1/64",
    }
    inside = {(str(r.dst), str(r.via)) for r in d.routes if r.netns == "b1"}
    assert inside == {
        ("169.254.0.1/32", "None"),
        ("0.0.0.0/0", "169.254.0.1"),
        ("::/0", "fe80::1"),
    }


def test_existing_interface_endpoint_is_a_port_enslaved_to_its_vrf():
    cfg = config(
        endpoints={"web": {"tenant": "blue", "addresses": ["10.0.0.7"], "interface": "tap7"}}
    )
    d = calc(cfg)
    assert Port("tap7", None, master="rnv-v100") in d.ports  # the hypervisor's MTU is kept
    assert not any(link.kind is LinkKind.VETH for link in d.links)


def test_proxy_style_endpoint_gets_proxy_ndp_for_every_other_tenant_address():
    endpoints = {
        "p": {
            "tenant": "blue",
            "addresses": ["10.0.0.5", "fd10::5"],
            "netns": "p",
            "style": "proxy",
        },
        "q": {"tenant": "blue", "addresses": ["10.0.0.6", "fd10::6"], "netns": "q"},
        "r": {"tenant": "red", "addresses": ["fd10::7"], "netns": "r"},
    }
    d = calc(config(endpoints=endpoints))
    p_if = endpoint_link_name("p")
    assert d.neigh_proxies == {NeighProxy(p_if, ip("fd10::6")), NeighProxy(p_if, ip("fd10::2"))}
    assert {
        Sysctl(f"net/ipv4/conf/{p_if}/proxy_arp", "1"),
        Sysctl(f"net/ipv6/conf/{p_if}/proxy_ndp", "1"),
        Sysctl(f"net/ipv4/neigh/{p_if}/proxy_delay", "0"),
        Sysctl(f"net/ipv6/neigh/{p_if}/proxy_delay", "0"),
    } <= d.sysctls
    q_if = endpoint_link_name("q")
    assert Sysctl(f"net/ipv4/conf/{q_if}/proxy_arp", "1") not in d.sysctls
    # the workload holds its address on-link with the tenant's prefix length
    assert Address("eth0", ipaddress.ip_interface("10.0.0.5/24"), netns="p") in d.addresses
    assert Address("eth0", ipaddress.ip_interface("fd10::5/64"), netns="p") in d.addresses


def test_forwarding_is_switched_on():
    d = calc(config())
    assert {Sysctl("net/ipv6/conf/all/forwarding", "1"), Sysctl("net/ipv4/ip_forward", "1")} <= (
        d.sysctls
    )


def test_endpoint_link_names_fit_and_stay_distinct():
    short = endpoint_link_name("web")
    a = endpoint_link_name("a-very-long-endpoint-name-1")
    b = endpoint_link_name("a-very-long-endpoint-name-2")
    assert short == "rnv-eweb"
    assert len(a) == len(b) == 15 and a != b
    assert a == endpoint_link_name("a-very-long-endpoint-name-1")


@pytest.mark.parametrize(
    "endpoint",
    [
        {"tenant": "blue", "addresses": ["10.0.0.1"], "netns": "x", "interface": "tap1"},
        {"tenant": "blue", "addresses": ["10.0.0.1"]},
    ],
)
def test_endpoint_needs_exactly_one_of_interface_and_netns(endpoint):
    with pytest.raises(RoutingConflict, match="endpoint e1"):
        calc(config(endpoints={"e1": endpoint}))


def test_two_endpoints_on_one_interface_are_a_conflict():
    endpoints = {
        "a": {"tenant": "blue", "addresses": ["10.0.0.1"], "interface": "tap1"},
        "b": {"tenant": "red", "addresses": ["10.0.0.1"], "interface": "tap1"},
    }
    with pytest.raises(RoutingConflict, match="a and b both use interface tap1"):
        calc(config(endpoints=endpoints))


def test_link_objects_print_like_ip_commands():
    d = calc(config())
    tunnel = next(link for link in d.links if link.name == "rnv-t100")
    assert str(tunnel) == (
        f"link rnv-t100 type ip6tnl mode any local {tunnel.tunnel.local} remote any hoplimit 64 "
        "encaplimit none mtu 1426 master rnv-v100 up"
    )
    assert isinstance(tunnel, Link)
