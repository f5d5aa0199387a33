"""The routing driver against an in-memory kernel: diff, ownership, partial failure, the cache
of what the kernel has and batched route writes."""

import dataclasses
import ipaddress

import pytest

from routed_nv.calc.routing import desired_routing, endpoint_link_name
from routed_nv.config.model import Config
from routed_nv.config.views import static_view
from routed_nv.model import markers
from routed_nv.model.routing import Address, PolicyRule, Route
from routed_nv.routing.driver import RoutingDriver
from tests.factories import HOST1
from tests.fakes import KERNEL_RULES, FakeWorld

net = ipaddress.ip_network


def make_config(endpoints=None, tenants=None):
    return Config.model_validate(
        {
            "host": HOST1,
            "tenants": tenants or {"blue": {"id": 100, "ipv6": ["fd10::/64"]}, "red": {"id": 200}},
            "endpoints": endpoints
            if endpoints is not None
            else {
                "b1": {"tenant": "blue", "addresses": ["10.0.0.1", "fd10::1"], "netns": "w1"},
                "r1": {"tenant": "red", "addresses": ["10.0.0.1", "fd10::1"], "netns": "w2"},
                "tap": {"tenant": "blue", "addresses": ["10.0.0.3"], "interface": "tap3"},
            },
            "peers": {"host2": {"id": 2, "underlay_prefix": "2001:db8:0:2::/64"}},
            "remote_endpoints": {
                "far": {"tenant": "blue", "addresses": ["10.0.0.2", "fd10::2"], "host": "host2"}
            },
        }
    )


def desired(cfg):
    return desired_routing(cfg, static_view(cfg))


@pytest.fixture
def world():
    w = FakeWorld("w1", "w2")
    w.ns(None).plain_link("tap3", kind="tun")
    return w


@pytest.fixture
def driver(world):
    return RoutingDriver(world.ns)


def test_apply_builds_everything_and_second_apply_changes_nothing(world, driver):
    result = driver.reconcile(desired(make_config()))
    assert result.ok, result.errors
    host = world.ns(None)
    assert host.links_["rnv-v100"].vrf_table == markers.vrf_table(100)
    assert host.links_["rnv-t100"].master == "rnv-v100"
    assert host.links_["rnv-t100"].mtu == 1426
    assert host.links_["tap3"].master == "rnv-v100"
    assert world.ns("w1").links_["eth0"].up
    assert ("eth0", ipaddress.ip_interface("10.0.0.1/32")) in world.ns("w2").addrs
    assert host.sysctls["net/ipv4/ip_forward"] == "1"
    assert (markers.vrf_table(100), net("10.0.0.2/32"), 0) in host.routes_
    assert not driver.plan(desired(make_config())).changes
    assert driver.reconcile(desired(make_config())).done == []


def test_plan_changes_nothing_and_lists_what_apply_would_do(world, driver):
    plan = driver.plan(desired(make_config()))
    assert world.ns(None).links_.keys() == {"tap3"}
    lines = plan.lines()
    assert "+ link rnv-v100 type vrf table 268435556 nomaster up" in lines
    assert any(line.startswith("+ route 10.0.0.2/32 via ") for line in lines)
    assert len(plan.changes) == len(driver.reconcile(desired(make_config())).done)


def test_one_failing_route_does_not_stop_the_others_and_is_retried(world, driver):
    world.ns(None).failing["10.0.0.2/32"] = "Network is unreachable"
    result = driver.reconcile(desired(make_config()))
    assert [str(f) for f in result.problems] == [
        f"route 10.0.0.2/32 table {markers.vrf_table(100)}: Network is unreachable"
    ]
    assert (markers.vrf_table(100), net("fd10::2/128"), 1024) in world.ns(None).routes_
    del world.ns(None).failing["10.0.0.2/32"]
    again = driver.reconcile(desired(make_config()))
    assert again.ok and [str(c.obj.dst) for c in again.done] == ["10.0.0.2/32"]


def test_foreign_objects_are_left_alone(world, driver):
    host = world.ns(None)
    host.plain_link("eth9")
    host.plain_link("rnv-v12x", kind="bridge")  # our prefix, but not one of our names
    host.plain_link("rnv-v300", kind="bridge")  # our name, but not our kind
    host.addrs.add(("eth9", ipaddress.ip_interface("192.0.2.1/24")))
    foreign = Route(net("10.0.0.2/32"), markers.vrf_table(100), proto=4, dev="eth9")
    host.routes_[foreign.key[1:]] = foreign
    driver.reconcile(desired(make_config()))
    assert {"eth9", "rnv-v12x", "rnv-v300"} <= host.links_.keys()
    assert ("eth9", ipaddress.ip_interface("192.0.2.1/24")) in host.addrs
    assert not any(op[0] == "delete_link" for op in host.log)


def test_removing_a_tenant_and_endpoints_removes_exactly_their_objects(world, driver):
    driver.reconcile(desired(make_config()))
    host = world.ns(None)
    smaller = make_config(
        tenants={"blue": {"id": 100, "ipv6": ["fd10::/64"]}},
        endpoints={"b1": {"tenant": "blue", "addresses": ["10.0.0.1", "fd10::1"], "netns": "w1"}},
    )
    result = driver.reconcile(desired(smaller))
    assert result.ok, result.errors
    deleted = {op[1] for op in host.log if op[0] == "delete_link"}
    assert deleted == {"rnv-v200", "rnv-t200", endpoint_link_name("r1")}
    # the tap is not ours: released from the VRF, stripped of our gateway addresses, kept
    assert host.links_["tap3"].master is None
    assert not any(ifname == "tap3" for ifname, _ in host.addrs)
    assert not any(r.table == markers.vrf_table(200) for r in host.routes_.values())
    assert (markers.vrf_table(100), net("10.0.0.1/32"), 0) in host.routes_
    assert (markers.vrf_table(100), net("10.0.0.3/32"), 0) not in host.routes_
    outer_200 = smaller.host.tenant_address(200)
    assert not any(a.ip == outer_200 for _, a in host.addrs)
    assert driver.plan(desired(smaller)).changes == ()


def test_mtu_change_modifies_the_link_in_place(world, driver):
    driver.reconcile(desired(make_config()))
    host = world.ns(None)
    host.log.clear()
    cfg = make_config(tenants={"blue": {"id": 100, "mtu": 1400}, "red": {"id": 200}})
    result = driver.reconcile(desired(cfg))
    assert result.ok
    veth = endpoint_link_name("b1")
    assert ("set_link", veth) in host.log
    assert not any(op[0] in ("delete_link", "add_link") for op in host.log)
    assert host.links_[veth].mtu == 1400 and world.ns("w1").links_["eth0"].mtu == 1400


def test_changed_tunnel_endpoint_recreates_the_tunnel(world, driver):
    driver.reconcile(desired(make_config()))
    host = world.ns(None)
    tunnel = host.links_["rnv-t100"]
    other = dataclasses.replace(tunnel.tunnel, hoplimit=10)
    host.links_["rnv-t100"] = dataclasses.replace(tunnel, tunnel=other)
    host.log.clear()
    driver.reconcile(desired(make_config()), resync=True)
    assert host.log[:2] == [("delete_link", "rnv-t100"), ("add_link", "rnv-t100")]
    assert host.links_["rnv-t100"].tunnel.hoplimit == 64
    # the kernel dropped the routes through the old tunnel; the same run put them back
    assert (markers.vrf_table(100), net("10.0.0.2/32"), 0) in host.routes_
    assert driver.plan(desired(make_config()), resync=True).changes == ()


def test_veth_whose_peer_is_gone_is_recreated(world, driver):
    driver.reconcile(desired(make_config()))
    del world.ns("w1").links_["eth0"]
    result = driver.reconcile(desired(make_config()), resync=True)
    assert result.ok
    assert "eth0" in world.ns("w1").links_
    assert any(c.op == "~" and c.obj.name == endpoint_link_name("b1") for c in result.done)


def test_missing_workload_netns_is_reported_once_and_the_rest_is_applied():
    world = FakeWorld("w1")  # w2 does not exist
    world.ns(None).plain_link("tap3", kind="tun")
    result = RoutingDriver(world.ns).reconcile(desired(make_config()))
    messages = [str(f) for f in result.problems]
    assert "netns w2: netns w2 does not exist" in messages
    r1 = endpoint_link_name("r1")
    red, red_publish = markers.vrf_table(200), markers.publish_table(200)
    # the veth into w2 cannot be made, so what depends on it fails too, and nothing else
    assert messages == [
        "netns w2: netns w2 does not exist",
        f"link {r1}: netns w2 does not exist",
        f"address 169.254.0.1/32 dev {r1}: No such device",
        f"address fe80::1/64 dev {r1}: No such device",
        f"route 10.0.0.1/32 table {red}: No such device",
        f"route fd10::1/128 table {red}: No such device",
        # announced last, after everything of the endpoint
        f"route 10.0.0.1/32 table {red_publish}: No such device",
        f"route fd10::1/128 table {red_publish}: No such device",
    ]
    assert "rnv-v200" in world.ns(None).links_
    assert "eth0" in world.ns("w1").links_


def test_missing_port_interface_fails_alone(world, driver):
    del world.ns(None).links_["tap3"]
    result = driver.reconcile(desired(make_config()))
    assert [str(f) for f in result.problems] == [
        "port tap3: No such device",
        "address 169.254.0.1/32 dev tap3: No such device",
        "address fe80::1/64 dev tap3: No such device",
        f"route 10.0.0.3/32 table {markers.vrf_table(100)}: No such device",
        f"route 10.0.0.3/32 table {markers.publish_table(100)}: No such device",
    ]
    assert "rnv-t100" in world.ns(None).links_


def test_kernel_made_link_local_addresses_are_not_ours(world, driver):
    driver.reconcile(desired(make_config()))
    veth = endpoint_link_name("b1")
    world.ns(None).addrs.add((veth, ipaddress.ip_interface("fe80::1234/64")))
    assert driver.plan(desired(make_config())).changes == ()


def test_links_are_created_vrf_first(world, driver):
    driver.reconcile(desired(make_config()))
    added = [op[1] for op in world.ns(None).log if op[0] == "add_link"]
    assert added.index("rnv-v100") < added.index("rnv-t100")
    assert added.index("rnv-v200") < added.index(endpoint_link_name("r1"))


def test_stray_address_on_our_device_is_removed(world, driver):
    driver.reconcile(desired(make_config()))
    stray = Address(markers.HOST_DEVICE, ipaddress.ip_interface("2001:db8:0:1::99/128"))
    world.ns(None).addrs.add((stray.ifname, stray.address))
    result = driver.reconcile(desired(make_config()), resync=True)
    assert [str(c) for c in result.done] == [f"- {stray}"]


def remote_endpoints(count, start=0):
    return {
        f"e{i}": {
            "tenant": "blue",
            "addresses": [f"10.1.0.{i + 1}", f"fd11::{i + 1:x}"],
            "host": "host2",
        }
        for i in range(start, start + count)
    }


def config_with_remotes(count):
    cfg = make_config()
    data = cfg.model_dump(mode="json")
    data["remote_endpoints"] |= remote_endpoints(count)
    return Config.model_validate(data)


def test_reapply_reads_no_routes_and_once_settled_nothing_at_all(world, driver):
    driver.reconcile(desired(config_with_remotes(20)))
    host = world.ns(None)
    host.reads.clear()
    result = driver.reconcile(desired(config_with_remotes(20)))
    assert result.ok and result.done == []
    # the first apply changed devices, so their cheap facts (links) are read again, once
    assert host.reads["routes"] == 0 and host.reads["links"] == 1
    for kernel in world.kernels.values():
        kernel.reads.clear()
        kernel.log.clear()
    assert driver.reconcile(desired(config_with_remotes(20))).done == []
    assert all(k.reads == {} and k.log == [] for k in world.kernels.values())


def test_a_delta_writes_only_the_delta_in_one_batch(world, driver):
    driver.reconcile(desired(config_with_remotes(20)))
    host = world.ns(None)
    host.reads.clear()
    host.log.clear()
    result = driver.reconcile(desired(config_with_remotes(21)))
    assert result.ok
    assert sorted(str(c.obj.dst) for c in result.done) == ["10.1.0.21/32", "fd11::15/128"]
    assert host.reads["routes"] == 0
    assert [op for op in host.log if op[0] == "write_routes"] == [("write_routes", 2)]
    result = driver.reconcile(desired(config_with_remotes(19)))
    deleted = [str(c) for c in result.done if c.op == "-"]
    assert deleted == [str(c) for c in result.done] and len(result.done) == 4


def test_a_failure_in_the_middle_of_a_batch_is_attributed_and_the_rest_applied(world, driver):
    host = world.ns(None)
    host.failing["10.1.0.10/32"] = "Invalid argument"
    result = driver.reconcile(desired(config_with_remotes(20)))
    table = markers.vrf_table(100)
    assert [str(f) for f in result.problems] == [
        f"route 10.1.0.10/32 table {table}: Invalid argument"
    ]
    route_batches = [op for op in host.log if op[0] == "write_routes"]
    # every route of the host in one batch, its published ones in a second (announced last)
    assert [n for _, n in route_batches] == [51, 5]
    assert (table, net("10.1.0.11/32"), 0) in host.routes_
    assert (table, net("10.1.0.9/32"), 0) in host.routes_
    assert (table, net("10.1.0.10/32"), 0) not in host.routes_
    # the cache knows the route is missing: the next apply retries exactly that one
    del host.failing["10.1.0.10/32"]
    host.log.clear()
    again = driver.reconcile(desired(config_with_remotes(20)))
    assert again.ok and [str(c.obj.dst) for c in again.done] == ["10.1.0.10/32"]
    assert host.log == [("write_routes", 1), ("replace_route", "10.1.0.10/32")]


def test_drift_is_found_by_resync(world, driver):
    cfg = config_with_remotes(3)
    driver.reconcile(desired(cfg))
    host = world.ns(None)
    gone = host.routes_.pop((markers.vrf_table(100), net("10.1.0.2/32"), 0))
    stray = dataclasses.replace(gone, dst=net("10.9.9.9/32"))
    host.routes_[stray.key[1:]] = stray
    assert driver.plan(desired(cfg)).changes == ()  # the cache does not know yet
    result = driver.reconcile(desired(cfg), resync=True)
    assert sorted(str(c) for c in result.done) == [f"+ {gone}", f"- {stray}"]
    assert driver.plan(desired(cfg), resync=True).changes == ()


def test_a_restarted_driver_recognises_everything_and_changes_nothing(world, driver):
    driver.reconcile(desired(config_with_remotes(5)))
    assert RoutingDriver(world.ns).plan(desired(config_with_remotes(5))).changes == ()


def test_a_new_workload_reasserts_only_its_own_routes(world, driver):
    driver.reconcile(desired(config_with_remotes(5)))
    host = world.ns(None)
    host.log.clear()
    cfg = make_config()
    data = cfg.model_dump(mode="json")
    data["remote_endpoints"] |= remote_endpoints(5)
    data["endpoints"]["b2"] = {"tenant": "blue", "addresses": ["10.0.0.7"], "netns": "w1"}
    result = driver.reconcile(desired(Config.model_validate(data)))
    assert result.ok, result.errors
    written = sorted(op[1] for op in host.log if op[0] == "replace_route")
    assert written == ["10.0.0.7/32", "10.0.0.7/32"]  # VRF and publish table


LOCAL_AFTER_L3MDEV = {PolicyRule(v, 32765, 255, markers.RTPROT_INFRA) for v in (4, 6)}


def test_the_local_table_rule_moves_behind_the_l3mdev_rule_without_a_gap(world, driver):
    result = driver.reconcile(desired(make_config()))
    assert result.ok, result.errors
    host = world.ns(None)
    assert host.rules_ == KERNEL_RULES - {PolicyRule(v, 0, 255, 2) for v in (4, 6)} | (
        LOCAL_AFTER_L3MDEV
    )
    rule_ops = [op for op in host.log if op[0].endswith("_rule")]
    # the new lookup first, then the old one goes: never a moment without a local lookup
    assert rule_ops == [
        ("add_rule", 4, 32765),
        ("add_rule", 6, 32765),
        ("delete_rule", 6, 0),
        ("delete_rule", 4, 0),
    ]
    for ns in ("w1", "w2"):  # a workload's namespace keeps its own rules
        assert world.ns(ns).rules_ == KERNEL_RULES and not world.ns(ns).reads["rules"]
    fresh = RoutingDriver(world.ns)  # a restarted agent recognises them
    assert not fresh.plan(desired(make_config())).changes


def test_the_plan_shows_the_rule_move(world, driver):
    lines = driver.plan(desired(make_config())).lines()
    assert "+ rule -6 pref 32765 from all lookup 255 proto 232" in lines
    assert "- rule -4 pref 0 from all lookup 255 proto 2" in lines
    assert world.ns(None).rules_ == KERNEL_RULES


def test_a_local_rule_put_back_at_pref_0_is_removed_again_by_a_resync(world, driver):
    driver.reconcile(desired(make_config()))
    host = world.ns(None)
    put_back = PolicyRule(4, 0, 255, 0)  # `ip rule add pref 0 lookup local`: proto unspec
    host.rules_.add(put_back)
    assert not driver.plan(desired(make_config())).changes  # the cache: found by a resync
    result = driver.reconcile(desired(make_config()), resync=True)
    assert [str(c) for c in result.done] == [f"- {put_back}"]
    assert put_back not in host.rules_ and host.rules_ >= LOCAL_AFTER_L3MDEV


def test_foreign_rules_are_left_alone(world, driver):
    host = world.ns(None)
    foreign = {PolicyRule(4, 100, 255, 0), PolicyRule(6, 0, 300, 4)}
    host.rules_ |= foreign
    driver.reconcile(desired(make_config()))
    assert foreign <= host.rules_


def test_a_published_route_comes_after_the_workloads_side_and_goes_before_it(
    world, driver, monkeypatch
):
    """Announced first, a moved workload's first replies had no default route yet (pings lost
    in a make-before-break move); withdrawn last, peers sent traffic to a veth already gone."""
    events = []

    def recorder(real, name, ns):
        def record(obj):
            events.append((name, ns, getattr(obj, "table", None)))
            return real(obj)

        return record

    for ns in (None, "w1"):
        kernel = world.ns(ns)
        for name in ("_replace_route", "_delete_route", "add_address", "delete_link"):
            monkeypatch.setattr(kernel, name, recorder(getattr(kernel, name), name, ns))
    published = markers.is_publish_table
    assert driver.reconcile(desired(make_config())).ok
    first = next(i for i, e in enumerate(events) if e[0] == "_replace_route" and published(e[2]))
    assert [e for e in events[first:] if not published(e[2])] == []
    assert {e[1] for e in events[:first]} == {None, "w1"}

    events.clear()
    without_b1 = make_config(
        endpoints={
            "r1": {"tenant": "red", "addresses": ["10.0.0.1", "fd10::1"], "netns": "w2"},
            "tap": {"tenant": "blue", "addresses": ["10.0.0.3"], "interface": "tap3"},
        }
    )
    assert driver.reconcile(desired(without_b1)).ok
    withdrawals = [e for e in events if e[0] == "_delete_route" and published(e[2])]
    assert len(withdrawals) == 2  # 10.0.0.1 and fd10::1
    assert events[:2] == withdrawals
    assert ("delete_link", None, None) in events
