"""The routing datapath on a real kernel: the host is a netns (rnvt-h), each workload another.

Two tenants with the same addresses (blue and red: 10.0.0.0/24, fd10::/64), netns endpoints,
one static remote endpoint; assertions on `ip` output, pings and re-apply being a no-op.
"""

from __future__ import annotations

import itertools
import subprocess
import time
from collections.abc import Iterator

import pytest

from routed_nv.calc.routing import desired_routing, endpoint_link_name
from routed_nv.config.model import Config
from routed_nv.config.views import static_view
from routed_nv.model import markers
from routed_nv.routing.driver import RoutingDriver
from routed_nv.routing.netlink import NetlinkKernel
from tests.factories import HOST1

pytestmark = pytest.mark.kernel

HOST_NS = "rnvt-h"
WORKLOADS = {"b1": "rnvt-b1", "b2": "rnvt-b2", "r1": "rnvt-r1"}


def sh(*args: str, check: bool = True) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(args)}: {done.stderr or done.stdout}")
    return done.stdout


def host_ip(*args: str) -> str:
    return sh("ip", "-n", HOST_NS, *args)


def in_ns(ns: str, *args: str, check: bool = True) -> str:
    return sh("ip", "netns", "exec", ns, *args, check=check)


def pings(ns: str, *target: str) -> bool:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "ping", "-c1", "-W1", *target], capture_output=True
    )
    return done.returncode == 0


def echo_requests_received(ns: str) -> int:
    """ICMP and ICMPv6 echo requests this namespace's kernel has received."""
    snmp = in_ns(ns, "cat", "/proc/net/snmp").splitlines()
    names, values = next(
        (a.split()[1:], b.split()[1:])
        for a, b in itertools.pairwise(snmp)
        if a.startswith("Icmp:") and b.startswith("Icmp:")
    )
    v4 = int(dict(zip(names, values, strict=True))["InEchos"])
    v6 = dict(line.split() for line in in_ns(ns, "cat", "/proc/net/snmp6").splitlines())
    return v4 + int(v6["Icmp6InEchos"])


def make_config(endpoints: dict | None = None, tenants: dict | None = None, remotes: int = 0):
    remote = {"far": {"tenant": "blue", "addresses": ["10.0.0.9", "fd10::9"], "host": "host2"}}
    for i in range(remotes):
        v4 = f"10.1.{i // 250}.{i % 250 + 1}"
        remote[f"r{i}"] = {"tenant": "blue", "addresses": [v4, f"fd11::{i + 1:x}"], "host": "host2"}
    return Config.model_validate(
        {
            "host": HOST1,
            "tenants": tenants
            or {
                "blue": {"id": 100, "ipv4": ["10.0.0.0/24"], "ipv6": ["fd10::/64"]},
                "red": {"id": 200, "ipv4": ["10.0.0.0/24"], "ipv6": ["fd10::/64"]},
            },
            "endpoints": endpoints
            if endpoints is not None
            else {
                "b1": {"tenant": "blue", "addresses": ["10.0.0.1", "fd10::1"], "netns": "rnvt-b1"},
                "b2": {"tenant": "blue", "addresses": ["10.0.0.2", "fd10::2"], "netns": "rnvt-b2"},
                # same addresses as b2, other tenant; 10.0.0.3 exists only in red
                "r1": {
                    "tenant": "red",
                    "addresses": ["10.0.0.2", "fd10::2", "10.0.0.3"],
                    "netns": "rnvt-r1",
                },
            },
            "peers": {"host2": {"id": 2, "underlay_prefix": "2001:db8:0:2::/64"}},
            "remote_endpoints": remote,
        }
    )


def desired(cfg: Config):
    return desired_routing(cfg, static_view(cfg))


@pytest.fixture
def driver() -> Iterator[RoutingDriver]:
    for ns in (HOST_NS, *WORKLOADS.values()):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    try:
        yield RoutingDriver(NetlinkKernel, host_netns=HOST_NS)
    finally:
        for ns in (HOST_NS, *WORKLOADS.values()):
            sh("ip", "netns", "del", ns, check=False)


def test_apply_builds_the_recipe_and_reapply_is_a_no_op(driver):
    cfg = make_config()
    result = driver.reconcile(desired(cfg))
    assert result.ok, result.errors

    tunnel = host_ip("-d", "link", "show", "rnv-t100")
    outer = cfg.host.tenant_address(100)
    assert f"ip6tnl any remote any local {outer} hoplimit 64 encaplimit none" in tunnel
    assert "mtu 1426" in tunnel and "master rnv-v100" in tunnel
    assert f"vrf table {markers.vrf_table(100)}" in host_ip("-d", "link", "show", "rnv-v100")
    b1 = endpoint_link_name("b1")
    assert "master rnv-v100" in host_ip("link", "show", b1)
    assert "inet 169.254.0.1/32" in host_ip("addr", "show", b1)
    assert "inet6 fe80::1/64" in host_ip("addr", "show", b1)
    assert f"inet6 {outer}/128" in host_ip("addr", "show", "rnv0")

    peer_outer = "2001:db8:0:2::1:64" if "::1:64" in str(outer) else None
    v4 = host_ip("route", "show", "vrf", "rnv-v100")
    assert "unreachable default proto 232 metric 4278198272" in v4
    assert f"10.0.0.1 dev {b1} proto 230 scope link" in v4
    far = [line for line in v4.splitlines() if line.startswith("10.0.0.9 ")]
    assert len(far) == 1 and "dev rnv-t100 proto 231 onlink" in far[0], v4
    if peer_outer:
        assert f"via inet6 {peer_outer}" in far[0]
    v6 = host_ip("-6", "route", "show", "table", str(markers.vrf_table(100)))
    assert "fd10::9 via" in v6 and "dev rnv-t100 proto 231 metric 1024 onlink" in v6
    assert "unreachable default dev lo proto 232 metric 4278198272" in v6
    published = host_ip("route", "show", "table", str(markers.publish_table(200)))
    assert f"10.0.0.3 dev {endpoint_link_name('r1')} proto 230 scope link" in published

    inside = sh("ip", "-n", "rnvt-b1", "route", "show")
    assert "default via 169.254.0.1 dev eth0 proto 232" in inside
    assert "169.254.0.1 dev eth0 proto 232 scope link" in inside
    assert "default via fe80::1 dev eth0 proto 232" in sh("ip", "-n", "rnvt-b1", "-6", "route")
    assert "mtu 1426" in sh("ip", "-n", "rnvt-b1", "link", "show", "eth0")
    assert in_ns(HOST_NS, "sysctl", "-n", "net.ipv6.conf.all.forwarding").strip() == "1"

    again = driver.reconcile(desired(cfg))
    assert again.ok and again.done == [], again.lines()


def test_workloads_reach_their_gateway_and_their_tenant_only(driver):
    applied = driver.reconcile(desired(make_config()))
    assert applied.ok, applied.errors
    assert pings("rnvt-b1", "169.254.0.1")
    assert pings("rnvt-b1", "-6", "fe80::1%eth0")
    assert pings("rnvt-b1", "10.0.0.2")  # b2, through the blue VRF
    assert pings("rnvt-b1", "-6", "fd10::2")
    assert pings("rnvt-r1", "10.0.0.1") is False  # no 10.0.0.1 in red
    assert pings("rnvt-b1", "10.0.0.3") is False  # only red has it
    # blue's echo requests reached b2 and never the red workload with the same addresses
    assert echo_requests_received("rnvt-b2") == 2
    assert echo_requests_received("rnvt-r1") == 0


def test_removing_a_tenant_and_an_endpoint_removes_exactly_their_objects(driver):
    full = make_config()
    applied = driver.reconcile(desired(full))
    assert applied.ok, applied.errors
    links_before = set(host_ip("-o", "link", "show").split())
    smaller = make_config(
        tenants={"blue": {"id": 100, "ipv4": ["10.0.0.0/24"], "ipv6": ["fd10::/64"]}},
        endpoints={
            "b1": {"tenant": "blue", "addresses": ["10.0.0.1", "fd10::1"], "netns": "rnvt-b1"}
        },
    )
    result = driver.reconcile(desired(smaller))
    assert result.ok, result.errors
    removed = {str(c.obj.name) for c in result.done if c.op == "-" and hasattr(c.obj, "kind")}
    assert removed == {"rnv-v200", "rnv-t200", endpoint_link_name("b2"), endpoint_link_name("r1")}
    links = host_ip("-o", "link", "show")
    assert "rnv-v200" not in links and endpoint_link_name("b2") not in links
    assert "rnv-v100" in links and endpoint_link_name("b1") in links
    assert host_ip("route", "show", "table", str(markers.vrf_table(200))) == ""
    assert host_ip("-6", "route", "show", "table", str(markers.vrf_table(200))) == ""
    assert "10.0.0.2" not in host_ip("route", "show", "vrf", "rnv-v100")
    assert str(full.host.tenant_address(200)) not in host_ip("addr", "show", "rnv0")
    assert len(links_before) > len(set(links.split()))
    assert pings("rnvt-b1", "169.254.0.1")
    assert driver.plan(desired(smaller)).changes == ()


def test_mtu_change_is_made_in_place(driver):
    applied = driver.reconcile(desired(make_config()))
    assert applied.ok, applied.errors
    b1 = endpoint_link_name("b1")
    index = host_ip("-o", "link", "show", b1).split(":")[0]
    tenants = {
        "blue": {"id": 100, "ipv4": ["10.0.0.0/24"], "ipv6": ["fd10::/64"], "mtu": 1400},
        "red": {"id": 200, "ipv4": ["10.0.0.0/24"], "ipv6": ["fd10::/64"]},
    }
    result = driver.reconcile(desired(make_config(tenants=tenants)))
    assert result.ok, result.errors
    after = host_ip("-o", "link", "show", b1)
    assert after.split(":")[0] == index and "mtu 1400" in after
    assert "mtu 1400" in sh("ip", "-n", "rnvt-b1", "link", "show", "eth0")


def test_apply_time_for_1000_remote_endpoints(driver):
    cfg = make_config(remotes=1000)
    start = time.monotonic()
    first = driver.reconcile(desired(cfg))
    first_s = time.monotonic() - start
    assert first.ok, first.errors[-5:]
    start = time.monotonic()
    second = driver.reconcile(desired(cfg))
    second_s = time.monotonic() - start
    assert second.done == []
    routes = host_ip("route", "show", "vrf", "rnv-v100").count("proto 231")
    assert routes == 1001
    print(
        f"\nrouting apply, 1,000 remote endpoints (2,002 remote routes): "
        f"first {first_s:.2f} s ({len(first.done)} changes), no-op re-apply {second_s:.2f} s"
    )
