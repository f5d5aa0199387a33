"""The stdlib route codec: what is encoded decodes to the same route, and batched requests get
their own answers, in order."""

import errno
import ipaddress

import pytest

from routed_nv.model.routing import RT_SCOPE_LINK, Route
from routed_nv.routing import rtnl
from tests.fakes import FakeRouteSocket

net = ipaddress.ip_network
ip = ipaddress.ip_address
NAMES = {7: "rnv-t100", 8: "eth0"}

ROUTES = [
    Route(
        net("10.0.0.2/32"), 0x1000_0064, 231, dev="rnv-t100", via=ip("2001:db8::64"), onlink=True
    ),
    Route(
        net("fd10::2/128"), 0x1000_0064, 231, dev="rnv-t100", via=ip("2001:db8::64"), onlink=True
    ),
    Route(net("0.0.0.0/0"), 100, 232, unreachable=True, metric=4278198272),
    Route(net("10.0.0.1/32"), 0x2000_0064, 230, dev="eth0", scope=RT_SCOPE_LINK),
    Route(net("0.0.0.0/0"), 254, 232, dev="eth0", via=ip("169.254.0.1")),
]


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_an_encoded_route_decodes_to_itself(route):
    oif = {v: k for k, v in NAMES.items()}.get(route.dev)
    ((kind, flags, _seq, body),) = rtnl.messages(rtnl.encode_route(route, oif, delete=False))
    assert kind == rtnl.RTM_NEWROUTE
    assert flags & rtnl.NLM_F_REPLACE and flags & rtnl.NLM_F_ACK
    assert rtnl.decode_route(body, NAMES, {route.proto}) == route


def test_a_delete_carries_the_whole_route():
    ((kind, flags, _seq, body),) = rtnl.messages(rtnl.encode_route(ROUTES[0], 7, delete=True))
    assert kind == rtnl.RTM_DELROUTE and not flags & rtnl.NLM_F_CREATE
    assert rtnl.decode_route(body, NAMES, {231}) == ROUTES[0]


def test_routes_of_other_protocols_are_not_decoded():
    ((_, _, _, body),) = rtnl.messages(rtnl.encode_route(ROUTES[0], 7, delete=False))
    assert rtnl.decode_route(body, NAMES, {230, 232}) is None


def test_batched_requests_are_answered_one_by_one_in_order():
    routes = [
        Route(
            net(f"10.0.{i // 250}.{i % 250}/32"),
            0x1000_0064,
            231,
            dev="rnv-t100",
            via=ip("2001:db8::64"),
        )
        for i in range(600)
    ]
    sock = FakeRouteSocket(NAMES)
    requests = [rtnl.encode_route(r, 7, delete=False) for r in routes]
    requests[5] = None  # not sent (e.g. its device is missing)
    outcomes = rtnl.RouteSocket(sock).send(requests)
    assert sock.sends == 3  # 600 requests, CHUNK per send()
    assert outcomes[13] == (errno.EINVAL, "Invalid gateway")
    assert [i for i, (code, _) in enumerate(outcomes) if code] == [13]
    assert outcomes[5] == (0, None)


def test_an_ipv4_next_hop_of_an_ipv6_route_round_trips():
    route = Route(net("fd10::2/128"), 100, 231, dev="eth0", via=ip("192.0.2.1"))
    ((_, _, _, body),) = rtnl.messages(rtnl.encode_route(route, 8, delete=False))
    assert rtnl.decode_route(body, NAMES, {231}) == route


def test_links_addresses_routes_and_proxies_are_read_without_a_pyroute2_link_dump() -> None:
    """Each of them needs the links' names: pyroute2 decoded every attribute of every link for
    that, four times per namespace and plan (one veth per endpoint: most of a resync's time in
    the lab at 200 endpoints, and each endpoint change read the host's links again). The stdlib
    dumps give the same links, names and addresses (vrf and ip6tnl attributes: the kernel
    tests). Read from this process's own namespace (dumps need no privilege)."""
    from pyroute2 import IPRoute

    from routed_nv.routing.netlink import NetlinkKernel

    kernel = NetlinkKernel(None)
    dumps: list[object] = []
    links = kernel._ipr.get_links
    kernel._ipr.get_links = lambda *a, **k: dumps.append(a) or links(*a, **k)  # type: ignore[method-assign]
    try:
        found = sorted(kernel.addresses(), key=str)
        kernel.routes({230, 231})
        kernel.neigh_proxies()
        assert dumps == []
        with IPRoute() as ipr:
            names = {m["index"]: m.get("ifname") for m in ipr.get_links()}
            expected = [
                (names[m["index"]], ipaddress.ip_interface(
                    f"{m.get('IFA_LOCAL') or m.get('IFA_ADDRESS')}/{m['prefixlen']}"))
                for m in ipr.get_addr()
            ]  # fmt: skip
            links = [
                (m.get("ifname"), m["index"], m.get(("IFLA_LINKINFO", "IFLA_INFO_KIND")),
                 m.get("IFLA_MTU"), bool(m["flags"] & 1), names.get(m.get("IFLA_MASTER")))
                for m in ipr.get_links()
            ]  # fmt: skip
        assert kernel._names() == names
        assert found == sorted(expected, key=str) and found
        assert [(s.name, s.index, s.kind, s.mtu, s.up, s.master) for s in kernel.links()] == links
        assert dumps == []
    finally:
        kernel.close()


def test_reading_links_addresses_and_routes_makes_no_pyroute2_socket() -> None:
    """A no-op resync reads every workload namespace: an IPRoute (and its event loop) made for
    each cost more than the reads, which need only the stdlib socket."""
    from routed_nv.routing.netlink import NetlinkKernel

    kernel = NetlinkKernel(None)
    try:
        assert kernel.links() and kernel.addresses()
        kernel.routes({230, 231})
        assert kernel._pyroute2 is None
    finally:
        kernel.close()
