"""Directory deltas through the datapath: each step (add, change, withdraw, mobility winner
change, a duplicate claim of a local address) applied as a delta leaves the kernel exactly as a
full calculation and apply of the new view on a fresh kernel would, without reading the kernel's
routes again."""

from __future__ import annotations

import ipaddress

from test_datapath import Fakes

from routed_nv.agent.datapath import Datapath
from routed_nv.calc.routing import desired_routing
from routed_nv.config.model import Config
from routed_nv.directory.learn import Learner, MirrorRoute
from routed_nv.model import markers
from routed_nv.routing.driver import RoutingDriver
from tests.factories import HOST1
from tests.fakes import FakeWorld

CONFIG = Config.model_validate(
    {
        "host": HOST1,
        "tenants": {"blue": {"id": 100, "ipv4": ["10.0.0.0/24"], "ipv6": ["fd10::/64"]}},
        "endpoints": {
            "px": {"tenant": "blue", "addresses": ["10.0.0.1", "fd10::1"], "interface": "tap3",
                   "style": "proxy"},
        },
    }
)  # fmt: skip
HOST2, HOST3 = "2001:db8:0:2::1", "2001:db8:0:3::1"


def mirror(prefix: str, via: str = HOST2, metric: int = 0, sequence: int = 0) -> MirrorRoute:
    net = ipaddress.ip_network(prefix)
    hop = ipaddress.ip_address(via)
    return MirrorRoute(markers.mirror_table(100), net, hop, metric, sequence)


def new_world() -> FakeWorld:
    world = FakeWorld()
    world.ns(None).plain_link("tap3", kind="tun")
    return world


def kernel_state(world: FakeWorld) -> tuple[dict, set]:
    host = world.ns(None)
    return dict(host.routes_), set(host.proxies)


STEPS: list[tuple[str, list[tuple[bool, MirrorRoute]]]] = [
    ("add", [(True, mirror("10.0.0.2/32", metric=5)), (True, mirror("fd10::2/128"))]),
    ("add at another host", [(True, mirror("10.0.0.3/32", HOST3))]),
    ("change: moved to host3",
     [(False, mirror("fd10::2/128")), (True, mirror("fd10::2/128", HOST3))]),
    ("winner change: a lower metric", [(True, mirror("10.0.0.2/32", HOST3, metric=0))]),
    ("the loser goes", [(False, mirror("10.0.0.2/32", HOST2, metric=5))]),
    ("withdraw", [(False, mirror("10.0.0.3/32", HOST3))]),
    ("withdraw the last route via host3", [(False, mirror("fd10::2/128", HOST3)),
                                           (False, mirror("10.0.0.2/32", HOST3))]),
]  # fmt: skip


def test_each_delta_leaves_the_kernel_as_a_full_apply_would() -> None:
    fakes, world = Fakes(), new_world()
    datapath = Datapath(fakes.netfilter, fakes.xfrm, RoutingDriver(world.ns), fakes.ike)  # type: ignore[arg-type]
    learner = Learner(CONFIG, [mirror("10.0.0.9/32")])
    assert datapath.apply(CONFIG, learner.view).ok
    for name, changes in STEPS:
        reads = world.ns(None).reads["routes"]
        delta = learner.update(changes)
        assert delta.remote_only and (delta or name == "the loser goes"), name
        outcome = datapath.apply(CONFIG, learner.view, delta=delta)
        assert outcome.ok, (name, [s.errors for s in outcome.stages])
        fresh = new_world()
        assert RoutingDriver(fresh.ns).reconcile(desired_routing(CONFIG, learner.view)).ok
        assert kernel_state(world) == kernel_state(fresh), name
        assert world.ns(None).reads["routes"] == reads, f"{name}: read the routes again"
        skipped = {s.name for s in outcome.stages if s.skipped}
        assert ("xfrm" in skipped) == (not delta.peers), name


def test_a_duplicate_claim_of_a_local_address_goes_the_full_way() -> None:
    """Another host announcing 10.0.0.1, which this host holds, is a mobility decision: the
    delta is not remote-only, and the datapath given it anyway (a mistake) still runs fully."""
    fakes, world = Fakes(), new_world()
    datapath = Datapath(fakes.netfilter, fakes.xfrm, RoutingDriver(world.ns), fakes.ike)  # type: ignore[arg-type]
    learner = Learner(CONFIG)
    assert datapath.apply(CONFIG, learner.view).ok
    delta = learner.update([(True, mirror("10.0.0.1/32", sequence=4))])
    assert not delta.remote_only and delta.contested_added and not delta.remote_added
    outcome = datapath.apply(CONFIG, learner.view, delta=delta)
    assert not any(s.skipped for s in outcome.stages if s.name == "routing")


def test_without_a_known_kernel_a_delta_is_a_full_apply() -> None:
    fakes, world = Fakes(), new_world()
    datapath = Datapath(fakes.netfilter, fakes.xfrm, RoutingDriver(world.ns), fakes.ike)  # type: ignore[arg-type]
    learner = Learner(CONFIG)
    delta = learner.update([(True, mirror("10.0.0.2/32"))])
    assert datapath.apply(CONFIG, learner.view, delta=delta).ok  # nothing applied before
    fresh = new_world()
    assert RoutingDriver(fresh.ns).reconcile(desired_routing(CONFIG, learner.view)).ok
    assert kernel_state(world) == kernel_state(fresh)
