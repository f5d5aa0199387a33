"""Endpoint API changes through the datapath: each (add, change, delete, a proxy-style one)
applied as "only these endpoints" leaves every namespace exactly as a full calculation and
apply of the same history would, without reading the host's routes again."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from test_datapath import CountingTables, Fakes

from routed_nv.agent.datapath import Datapath
from routed_nv.calc import mobility
from routed_nv.calc.netfilter import SRC_PREFIX, desired_rules
from routed_nv.calc.routing import desired_routing, host_ifname
from routed_nv.config.model import Config
from routed_nv.model.directory import DirectoryView, PeerHost, RemoteRoute
from routed_nv.netfilter.driver import NetfilterDriver
from routed_nv.routing import driver as routing_driver
from routed_nv.routing.driver import RoutingDriver
from tests.factories import HOST1
from tests.fakes import FakeTables, FakeWorld

HOST2 = PeerHost("host2", 2, ipaddress.IPv6Network("2001:db8:0:2::/64"))
REMOTE = frozenset(
    RemoteRoute(100, ipaddress.ip_network(a), HOST2) for a in ("10.0.0.2/32", "fd10::2/128")
)
B1 = {"tenant": "blue", "addresses": ["10.0.0.1", "fd10::1"], "netns": "w1"}
PX = {"tenant": "blue", "addresses": ["fd10::3"], "interface": "tap3", "style": "proxy"}


def config(**endpoints: dict[str, Any]) -> Config:
    return Config.model_validate(
        {
            "host": HOST1,
            "tenants": {"blue": {"id": 100, "ipv4": ["10.0.0.0/24"], "ipv6": ["fd10::/64"]}},
            "endpoints": endpoints,
        }
    )


def new_world() -> FakeWorld:
    world = FakeWorld("w1", "w2")
    world.ns(None).plain_link("tap3", kind="tun")
    return world


def state(world: FakeWorld) -> dict[str | None, tuple]:
    return {
        ns: (
            {n: (s.kind, s.mtu, s.master, s.up) for n, s in k.links_.items()},
            set(k.addrs),
            dict(k.routes_),
            set(k.proxies),
            {p: v for p, v in k.sysctls.items() if v is not None},
        )
        for ns, k in world.kernels.items()
    }


STEPS = [
    ("add a netns endpoint", config(b1=B1)),
    ("add a proxy-style one", config(b1=B1, px=PX)),
    ("add another netns endpoint",
     config(b1=B1, px=PX, b2={"tenant": "blue", "addresses": ["fd10::4"], "netns": "w2"})),
    ("change its addresses",
     config(b1=B1, px=PX, b2={"tenant": "blue", "addresses": ["fd10::5", "10.0.0.5"],
                              "netns": "w2"})),
    ("delete the first", config(px=PX, b2={"tenant": "blue", "addresses": ["fd10::5", "10.0.0.5"],
                                           "netns": "w2"})),
    ("delete the proxy-style one",
     config(b2={"tenant": "blue", "addresses": ["fd10::5", "10.0.0.5"], "netns": "w2"})),
]  # fmt: skip


def test_each_endpoint_change_leaves_the_kernel_as_a_full_apply_would() -> None:
    fakes, world = Fakes(), new_world()
    driver = RoutingDriver(world.ns)
    datapath = Datapath(fakes.netfilter, fakes.xfrm, driver, fakes.ike)  # type: ignore[arg-type]
    # the same history, every step calculated and applied in full (the in-memory kernel keeps
    # a deleted veth's peer, so a fresh kernel would not compare)
    full_world = new_world()
    full = RoutingDriver(full_world.ns)
    last = config()
    last_view = mobility.resolve(last, DirectoryView(REMOTE))
    assert datapath.apply(last, last_view).ok
    assert full.reconcile(desired_routing(last, last_view)).ok
    driver.plan = None  # type: ignore[method-assign]  # from now on, only endpoints' objects
    for name, cfg in STEPS:
        host_reads = world.ns(None).reads["routes"]
        view = mobility.resolve(cfg, DirectoryView(REMOTE))
        outcome = datapath.apply(cfg, view, since=(last, last_view))
        assert outcome.ok, (name, [s.errors for s in outcome.stages])
        assert full.reconcile(desired_routing(cfg, view)).ok
        assert state(world) == state(full_world), name
        assert world.ns(None).reads["routes"] == host_reads, f"{name}: read the routes again"
        last, last_view = cfg, view


def test_anything_but_endpoints_changed_is_a_full_apply() -> None:
    fakes, world = Fakes(), new_world()
    datapath = Datapath(fakes.netfilter, fakes.xfrm, RoutingDriver(world.ns), fakes.ike)  # type: ignore[arg-type]
    first = config(b1=B1)
    view = mobility.resolve(first, DirectoryView(REMOTE))
    assert datapath.apply(first, view).ok
    blue = {"id": 100, "ipv4": ["10.0.0.0/24"], "ipv6": ["fd10::/64"], "mtu": 1400}
    other = Config.model_validate({**first.model_dump(mode="json"), "tenants": {"blue": blue}})
    assert datapath._changed_endpoints((first, view), other, view) is None
    fewer = DirectoryView(frozenset(list(REMOTE)[:1]), claims=view.claims)
    assert datapath._changed_endpoints((first, view), first, fewer) is None
    assert datapath._changed_endpoints((first, view), config(), view) == {"b1"}


def test_an_endpoint_change_reads_no_table_and_sets_only_its_own_chains() -> None:
    """At 1,000 endpoints, reading the raw tables back (and the XFRM state, and charon) for each
    endpoint the API added cost more than the change: the endpoint path writes the changed
    endpoints' chains and dispatch rules against what it last applied, and leaves XFRM and IKE
    alone (they take nothing from endpoints). The tables end as a full apply leaves them, and
    no other endpoint's chain is rewritten (its counters stay)."""
    fakes, world, tables = Fakes(), new_world(), CountingTables()
    datapath = Datapath(NetfilterDriver(tables), fakes.xfrm, RoutingDriver(world.ns), fakes.ike)  # type: ignore[arg-type]
    full = FakeTables()
    last = config()
    last_view = mobility.resolve(last, DirectoryView(REMOTE))
    assert datapath.apply(last, last_view).ok
    assert NetfilterDriver(full).reconcile(desired_rules(last)).ok
    reads, fakes.calls[:] = dict(tables.reads), []
    for name, cfg in STEPS:
        view = mobility.resolve(cfg, DirectoryView(REMOTE))
        done = len(tables.applied)
        outcome = datapath.apply(cfg, view, since=(last, last_view))
        assert outcome.ok, (name, [s.errors for s in outcome.stages])
        assert NetfilterDriver(full).reconcile(desired_rules(cfg)).ok
        assert tables.chains == full.chains, name
        changed = {n for n in last.endpoints.keys() | cfg.endpoints.keys()
                   if last.endpoints.get(n) != cfg.endpoints.get(n)}  # fmt: skip
        theirs = {SRC_PREFIX + host_ifname(n, c.endpoints[n])
                  for c in (last, cfg) for n in changed if n in c.endpoints}  # fmt: skip
        for change in tables.applied[done:]:
            assert set(change.set_chains) | set(change.delete_chains) <= theirs, name
            assert not change.hooks, name
        last, last_view = cfg, view
    assert tables.reads == reads, "read the tables again"
    assert fakes.calls == [], "ran XFRM or IKE for an endpoint change"


def test_a_resync_over_many_namespaces_keeps_few_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resync reads every workload namespace: with each one's socket open until the end, the
    bench's 1,000 endpoints ran out of the default 1,024 descriptors and every resync failed.
    At most MAX_OPEN_KERNELS stay open; the others are opened again when needed."""
    monkeypatch.setattr(routing_driver, "MAX_OPEN_KERNELS", 3, raising=False)
    names = [f"w{i}" for i in range(10)]
    world, open_now, most = FakeWorld(*names), set(), [0]

    class Counted:
        def __init__(self, ns: str | None) -> None:
            self.ns, self.kernel = ns, world.ns(ns)
            open_now.add(ns)
            most[0] = max(most[0], len(open_now))

        def __getattr__(self, name: str) -> Any:
            return getattr(self.kernel, name)

        def close(self) -> None:
            open_now.discard(self.ns)

    cfg = config(**{f"e{i}": {"tenant": "blue", "addresses": [f"10.0.0.{10 + i}"], "netns": n}
                    for i, n in enumerate(names)})  # fmt: skip
    desired = desired_routing(cfg, mobility.resolve(cfg, DirectoryView(REMOTE)))
    driver = RoutingDriver(Counted)
    assert driver.reconcile(desired).ok
    assert driver.plan(desired, resync=True).changes == ()  # read back through reopened ones
    assert most[0] <= 3 + 1  # and the host's
    assert open_now == set()
