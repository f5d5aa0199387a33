"""The BGP directory on a real kernel: 3 hosts and 2 route reflectors, each with BIRD.

Local endpoint routes are written into host1's publish tables the way the routing driver does
(proto 230); assertions are on the other hosts' mirror tables, read through MirrorWatch (which
these tests thereby exercise) and judged by learn(). Tests share one lab and run in file order;
each uses its own addresses.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv6Address, ip_network
from pathlib import Path

import pytest

from routed_nv.config.model import Config, Tenant
from routed_nv.directory.bird_config import GR_TIME_S
from routed_nv.directory.learn import MirrorRoute, Reason, learn
from routed_nv.directory.netlink_watch import MirrorWatch, RouteEvent
from routed_nv.lab.bird import LabBird, bgp_address, with_directory
from routed_nv.lab.builder import Lab, ip_batch
from routed_nv.lab.datapath import host_config
from routed_nv.lab.topology import directory_topology
from routed_nv.model import markers

pytestmark = pytest.mark.kernel

BLUE, RED, GREEN = 100, 200, 300  # green: known to host3 only


@dataclass
class Directory:
    lab: Lab
    birds: LabBird
    configs: dict[str, Config]
    watches: dict[str, MirrorWatch]

    def address(self, host: str) -> IPv6Address:
        return bgp_address(self.lab.topology.host(host))

    def publish(self, host: str, tenant: int, prefix: str, link: str, metric: int = -1) -> None:
        extra = f" metric {metric}" if metric >= 0 else ""
        self._publish_table(host, tenant, f"add {prefix} dev {link}{extra}")

    def withdraw(self, host: str, tenant: int, prefix: str) -> None:
        self._publish_table(host, tenant, f"del {prefix}")

    def _publish_table(self, host: str, tenant: int, what: str) -> None:
        line = f"route {what} table {markers.publish_table(tenant)} proto 230"
        ip_batch(self.lab.topology.host(host).namespace, [line])

    def until(
        self, host: str, check: Callable[[frozenset[MirrorRoute]], bool], timeout: float = 15
    ) -> frozenset[MirrorRoute]:
        watch = self.watches[host]
        deadline = time.monotonic() + timeout
        while not check(watch.routes):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{host}: mirror tables never matched: {watch.routes}")
            watch.wait(remaining)
        return watch.routes


def mirrored(routes: frozenset[MirrorRoute], tenant: int, prefix: str) -> list[MirrorRoute]:
    return [
        r
        for r in routes
        if r.table == markers.mirror_table(tenant) and r.prefix == ip_network(prefix)
    ]


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Directory]:
    work: Path = tmp_path_factory.mktemp("directory")
    topology = directory_topology()
    lab = Lab(topology).build()
    try:
        birds = LabBird(lab, work)
        birds.add_host_addresses()
        birds.start_route_reflectors()
        configs = {
            h.name: with_directory(host_config(topology, h, work / "keys"), topology)
            for h in topology.hosts
        }
        green = Tenant(id=GREEN, ipv4=[ip_network("10.0.0.0/24")])
        configs["host3"] = configs["host3"].model_copy(
            update={"tenants": {**configs["host3"].tenants, "green": green}}
        )
        birds.start_hosts(configs)
        birds.wait_established()
        watches = {h: MirrorWatch(topology.host(h).namespace).open() for h in ("host2", "host3")}
        yield Directory(lab, birds, configs, watches)
        for watch in watches.values():
            watch.close()
    finally:
        lab.teardown()


def test_overlapping_tenant_prefixes_reach_every_other_host(directory: Directory) -> None:
    host1 = directory.address("host1")
    directory.publish("host1", BLUE, "10.0.0.1/32", "wl-blue1")
    directory.publish("host1", RED, "10.0.0.1/32", "wl-red1")
    directory.publish("host1", BLUE, "fd10::1/128", "wl-blue1")
    # not an endpoint route (proto 231): never published
    ip_batch(
        directory.lab.topology.host("host1").namespace,
        [f"route add 10.0.0.99/32 dev wl-blue1 table {markers.publish_table(BLUE)} proto 231"],
    )
    wanted = [(BLUE, "10.0.0.1/32"), (RED, "10.0.0.1/32"), (BLUE, "fd10::1/128")]
    for host in ("host2", "host3"):
        routes = directory.until(host, lambda rs: all(mirrored(rs, t, p) for t, p in wanted))
        assert {r.next_hop for t, p in wanted for r in mirrored(routes, t, p)} == {host1}
        assert not mirrored(routes, BLUE, "10.0.0.99/32")
        learned = learn(directory.configs[host], routes)
        remote = {(r.tenant_id, str(r.prefix), r.peer.name) for r in learned.view.remote_routes}
        assert {(t, p, "host1") for t, p in wanted} <= remote


def test_newest_location_wins_by_mobility_sequence(directory: Directory) -> None:
    prefix = "10.0.0.50/32"
    directory.publish("host1", BLUE, prefix, "wl-blue1")
    directory.until("host2", lambda rs: bool(mirrored(rs, BLUE, prefix)))
    # The endpoint moves to host3, which publishes sequence 1 while host1 still announces it.
    directory.publish("host3", BLUE, prefix, "wl-blue3", metric=1)
    host3 = directory.address("host3")
    routes = directory.until(
        "host2", lambda rs: [r.next_hop for r in mirrored(rs, BLUE, prefix)] == [host3]
    )
    chosen = {r.peer.name for r in learn(directory.configs["host2"], routes).view.remote_routes
              if str(r.prefix) == prefix}  # fmt: skip
    assert chosen == {"host3"}
    # host1 still holds its own copy for the tenant; host1's BIRD prefers it (preference 200),
    # so host1 never mirrors the new location over its local route — and host3 doesn't either.
    host3_routes = directory.until("host3", lambda rs: True)
    assert [r.next_hop for r in mirrored(host3_routes, BLUE, prefix)] == []
    directory.withdraw("host1", BLUE, prefix)
    directory.withdraw("host3", BLUE, prefix)
    directory.until("host2", lambda rs: not mirrored(rs, BLUE, prefix))


def test_announcements_outside_the_tenant_are_rejected(directory: Directory) -> None:
    # host3 announces an address outside blue's subnets, and one for green, which host2 lacks.
    directory.publish("host3", BLUE, "10.9.9.9/32", "wl-blue3")
    directory.publish("host3", GREEN, "10.0.0.3/32", "wl-blue3")
    routes = directory.until("host2", lambda rs: bool(mirrored(rs, BLUE, "10.9.9.9/32")))
    learned = learn(directory.configs["host2"], routes)
    reasons = {(str(r.route.prefix), r.reason) for r in learned.rejected}
    assert ("10.9.9.9/32", Reason.OUTSIDE_SUBNETS) in reasons
    assert not any(str(r.prefix) == "10.9.9.9/32" for r in learned.view.remote_routes)
    # BIRD on host2 has no table for green: the tenant community alone keeps it out.
    assert not [r for r in routes if r.table == markers.mirror_table(GREEN)]
    directory.withdraw("host3", BLUE, "10.9.9.9/32")
    directory.until("host2", lambda rs: not mirrored(rs, BLUE, "10.9.9.9/32"))


def test_route_reflector_crashes_keep_mirror_routes(directory: Directory) -> None:
    watch = directory.watches["host2"]
    before = directory.until("host2", lambda rs: bool(mirrored(rs, RED, "10.0.0.1/32")))
    lost: list[RouteEvent] = []

    def watch_for(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            lost.extend(e for e in watch.wait(remaining) if not e.added)

    paths = {rr: directory.birds.bgp_routes(rr) for rr in ("rr1", "rr2")}
    directory.birds.kill("rr1")
    watch_for(2)
    directory.birds.signal("rr2", signal.SIGKILL)
    # past the graceful-restart time: long-lived graceful restart keeps the stale routes
    watch_for(GR_TIME_S + 3)
    assert lost == [] and watch.routes == before
    # One at a time, as an operator would: the second restarts once the first has relearned.
    for sessions, rr in enumerate(("rr1", "rr2"), 1):
        directory.birds.start(rr)
        directory.birds.wait_established(sessions)
        directory.birds.wait_relearned(rr, paths[rr])
        watch_for(3)
    assert lost == [] and watch.routes == before


def test_withdraw_propagates(directory: Directory) -> None:
    directory.withdraw("host1", RED, "10.0.0.1/32")
    for host in ("host2", "host3"):
        routes = directory.until(host, lambda rs: not mirrored(rs, RED, "10.0.0.1/32"))
        assert mirrored(routes, BLUE, "10.0.0.1/32")  # the other tenant's same prefix stays
