"""Agents whose directory is BGP, on a real kernel: 3 hosts and 2 route reflectors, each with
BIRD (started with -R), one `routed-nv agent` per host with directory.source = "bgp" and no static
remote endpoints. Endpoints appear, move, and survive route-reflector, agent and BIRD crashes
with continuous pings; a bad route from a host is rejected by its receivers. Tests share one lab
and run in file order; each uses its own addresses."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from test_datapath_scenario import ns, sh
from test_routing_kernel import echo_requests_received

from routed_nv.config.writer import to_toml
from routed_nv.directory import bgp_source
from routed_nv.directory.bird_config import upstream_protocol
from routed_nv.directory.birdc import BirdClient
from routed_nv.lab.agents import ROUTED_NV, LabAgent
from routed_nv.lab.bgp_agents import PASSWORD, BgpAgents
from routed_nv.lab.bird import bgp_address
from routed_nv.lab.builder import Lab
from routed_nv.lab.checks import ContinuousPing, tenant_matrix
from routed_nv.lab.topology import directory_topology
from routed_nv.model import markers

pytestmark = pytest.mark.kernel

BLUE = 100
REACH_TIMEOUT_S = 180.0  # a deadline, not a measurement: the shared machine is slow at times
MOVER_NETNS = "rnv-lab-mover"  # the lab prefix: `routed-nv lab down` cleans it up if we do not
MOVER = ("10.0.0.12", "fd10::12")
SESSION_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BgpAgents]:
    workdir = tmp_path_factory.mktemp("bgp-agents")
    with Lab(directory_topology()) as built:
        env = BgpAgents(built, workdir)
        started = time.monotonic()
        ready = env.start()
        established = time.monotonic()
        print(f"\nagent start -> READY=1: {ready}")
        in_sync = in_sync_after(env.agents.agents, established)
        print(f"all sessions Established -> in sync: {in_sync}")
        since_start = {h: round(established - started + s, 2) for h, s in in_sync.items()}
        print(f"lab start -> in sync: {since_start}")
        for host in ("blue2", "blue3"):
            reach(env, host, "10.0.0.1", started)
        print(f"lab start -> blue1 reachable over BGP: {time.monotonic() - started:.2f} s")
        yield env
        env.agents.stop_all()


def reach(env: BgpAgents, source: str, address: str, since: float) -> float:
    """Seconds from `since` until `address` answers a ping from workload `source`."""
    while True:
        done = env.datapath.lab.exec(ns(source), ["ping", "-c", "1", "-W", "0.2", address])
        if done.returncode == 0:
            return time.monotonic() - since
        if time.monotonic() - since > REACH_TIMEOUT_S:
            raise AssertionError(f"{source} -> {address}: unreachable; {diagnose(env)}")
        time.sleep(0.05)


def in_sync_after(agents: dict[str, LabAgent], since: float) -> dict[str, float]:
    """Per agent, seconds from `since` until its directory says in sync (a measurement printed
    beside READY, not asserted: the shared machine's speed varies)."""
    seconds: dict[str, float] = {}
    while len(seconds) < len(agents):
        for host, agent in agents.items():
            if host not in seconds and agent.status()["directory"]["in_sync"]:
                seconds[host] = round(time.monotonic() - since, 2)
        if time.monotonic() - since > REACH_TIMEOUT_S:
            raise AssertionError(f"directories not in sync after {REACH_TIMEOUT_S:g} s: {seconds}")
        time.sleep(0.05)
    return seconds


def diagnose(env: BgpAgents) -> str:
    """What the directory looks like from host1 (publishing) and host2 (mirroring)."""
    lines = []
    for host in ("host1", "host2", "host3"):
        agent = env.agents[host]
        lines += [f"== {host} status: {agent.status()['directory']}", agent.log()[-800:]]
        for table in (markers.publish_table(BLUE), markers.mirror_table(BLUE)):
            lines.append(sh(env.datapath, ns(host), f"ip route show table {table}"))
        with BirdClient(env.birds.node(host).socket) as bird:
            lines += [str(p) for p in bird.protocols() if p.proto == "BGP"]
            lines += [x.text for x in bird.command("show status").lines]
            lines += [x.text for x in bird.command("show route count").lines]
    for rr in ("rr1", "rr2"):
        with BirdClient(env.birds.node(rr).socket) as bird:
            lines += [f"== {rr}"] + [x.text for x in bird.command("show status").lines]
            lines += [x.text for x in bird.command("show route count").lines]
            lines += [str(p) for p in bird.protocols() if p.proto == "BGP"]
    return "\n".join(lines)


def routes_for(env: BgpAgents, host: str, address: str, table: str | int = "all") -> str:
    family = "-6" if ":" in address else "-4"  # with a table, `ip route` alone means IPv4
    return sh(env.datapath, ns(host), f"ip {family} route show table {table} {address}")


def where_is(env: BgpAgents, address: str) -> str:
    """Every host's kernel routes and BIRD paths for one address, and its agent's mobility log."""
    lines = []
    for host in ("host1", "host2", "host3"):
        lines += [f"== {host}", routes_for(env, host, address)]
        with BirdClient(env.birds.node(host).socket) as bird:
            lines += [str(r) for r in bird.routes(f"for {address} table all")]
        lines += [x for x in env.agents[host].log().splitlines() if x.startswith("mobility.")]
    return "\n".join(lines)


def stale_on(env: BgpAgents, host: str) -> set[tuple[str, int, str]]:
    """(address, sequence, winner) of the local addresses `host` reports stale."""
    rows = env.agents[host].status()["directory"]["stale"]
    return {(x["prefix"], x["sequence"], x["host_address"]) for x in rows}


def until_mirrored(env: BgpAgents, host: str, address: str, expected: str) -> str:
    """`host`'s mirror route for `address` once it contains `expected`."""
    deadline = time.monotonic() + REACH_TIMEOUT_S
    while expected not in (route := routes_for(env, host, address, markers.mirror_table(BLUE))):
        if time.monotonic() > deadline:
            raise AssertionError(f"{host}: no mirror route with {expected!r}: {route}\n"
                                 f"{where_is(env, address)}")  # fmt: skip
        time.sleep(0.2)
    return route


class Ping(ContinuousPing):
    """A continuous ping every 50 ms (or `interval` s); stop() returns (sent, lost)."""

    def __init__(self, env: BgpAgents, source: str, target: str, interval: float = 0.05) -> None:
        super().__init__(env.datapath.lab, ns(source), target, interval=interval)


def pings(env: BgpAgents) -> list[Ping]:
    return [Ping(env, "blue1", "10.0.0.2"), Ping(env, "red3", "fd10::1")]


def losses(running: list[Ping]) -> list[tuple[int, int]]:
    return [p.stop() for p in running]


def endpoint_cmd(env: BgpAgents, host: str, *args: str) -> str:
    agent = env.agents[host]
    done = subprocess.run(
        [*ROUTED_NV, "endpoint", *args, "-c", str(agent.config_path), "--run-dir",
         str(agent.run_dir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr  # the endpoint API answered: the agent applied it
    return done.stdout


def add_mover(
    env: BgpAgents, host: str, netns: str = MOVER_NETNS, addresses: tuple[str, ...] = MOVER
) -> None:
    given = [a for address in addresses for a in ("--address", address)]
    added = endpoint_cmd(
        env, host, "add", "mover", "--tenant", "blue", *given, "--netns", netns, "--wait"
    )
    # --wait: BIRD's publish table has it, read back by the agent's directory source, and no
    # other host announces it any more (a move's old location has withdrawn)
    assert added.splitlines()[-1] == "announced in the directory", added


@contextlib.contextmanager
def namespaces(*names: str) -> Iterator[None]:
    """Workload namespaces for endpoints the test adds (loopback up); deleted afterwards."""
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for name in names:
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "del", name], check=False)


def test_every_tenant_pair_reaches_over_bgp(env: BgpAgents) -> None:
    assert [r for r in tenant_matrix(env.datapath.lab) if not r.ok] == []
    # reachable may come first: the source says in sync once every session is up and the mirror
    # tables stopped changing (QUIET_S after the last change)
    deadline = time.monotonic() + 60
    status = env.agents["host2"].status()["directory"]
    while not status["in_sync"] and time.monotonic() < deadline:
        time.sleep(0.5)
        status = env.agents["host2"].status()["directory"]
    # peers: both route reflectors and the upstream (ToR) session
    assert (status["source"], status["in_sync"], status["peers_up"]) == ("bgp", True, 3), status
    assert status["detail"] == "2 of 2 route reflector sessions established"


def test_an_endpoint_added_then_moved_converges_through_bgp(env: BgpAgents) -> None:
    with namespaces(MOVER_NETNS):
        try:
            started = time.monotonic()
            add_mover(env, "host1")
            ready = time.monotonic() - started  # the command and host1's apply
            times = {s: reach(env, s, "10.0.0.12", started) for s in ("blue2", "blue3")}
            v6 = reach(env, "blue2", "fd10::12", started)
            print(f"\nendpoint add on host1 -> host1 READY {ready:.2f} s -> reachable: {times}, "
                  f"IPv6 from blue2 {v6:.2f} s")  # fmt: skip
            # remove-then-add needs no mobility sequence: the old route is withdrawn first
            started = time.monotonic()
            endpoint_cmd(env, "host1", "del", "mover")
            deleted = time.monotonic() - started
            add_mover(env, "host3")
            ready = time.monotonic() - started
            moved = reach(env, "blue2", "10.0.0.12", started)
            print(f"move host1 -> host3: host1 READY {deleted:.2f} s, host3 READY {ready:.2f} s, "
                  f"reachable from blue2 {moved:.2f} s")  # fmt: skip
            host3 = str(env.datapath.lab.topology.host("host3").prefix[1])
            mirror = markers.mirror_table(BLUE)
            assert host3 in routes_for(env, "host2", "10.0.0.12", mirror)
            # host1 neither publishes the address nor routes it to a local link any more
            on_host1 = sh(env.datapath, ns("host1"), "ip -4 route show table all proto 230")
            assert "10.0.0.12" not in on_host1, on_host1
        finally:
            endpoint_cmd(env, "host3", "del", "mover")


def until_only(old: str, new: str, since: float) -> tuple[float, float]:
    """Wait until workload netns `new` receives the pings and `old` has received none for a
    second. Returns (seconds from `since` to new's first echo, to old's last one), each to
    within a counter poll."""
    last_old, first_new = echo_requests_received(old), echo_requests_received(new)
    old_at = new_at = None
    while True:
        now = time.monotonic()
        at_old, at_new = echo_requests_received(old), echo_requests_received(new)
        if at_old != last_old:
            last_old, old_at = at_old, now
        if new_at is None and at_new > first_new:
            new_at = now
        if new_at is not None and now - max(new_at, old_at or since) > 1.0:
            return new_at - since, (old_at or since) - since
        if now - since > REACH_TIMEOUT_S:
            raise AssertionError(f"{new} never took over from {old}: {at_new}, {at_old}")
        time.sleep(0.05)


def assert_no_duplicate(env: BgpAgents, logs: dict[str, int]) -> None:
    """After a move: no host reports a duplicate, and the hosts' logs since the offsets in
    `logs` have no re-assertion and no duplicate."""
    for host in ("host1", "host2", "host3"):
        assert env.agents[host].status()["directory"]["duplicates"] == [], host
    for host, offset in logs.items():
        log = env.agents[host].log()[offset:]
        assert "mobility.reassert" not in log and "mobility.duplicate" not in log, log


def test_make_before_break_move_the_newest_location_wins(env: BgpAgents) -> None:
    """A live migration: host3 adds the endpoint while host1 still has it, then host1 deletes
    it. host3 announces it with sequence 1, every host prefers host3, host1 goes stale and
    deletes it before it would re-assert it (directory.reassert_after_s): traffic moves to
    host3 and stays there, and no host reports a duplicate. The documented procedure (`endpoint
    add --wait` on the new host, then `endpoint del` on the old) loses at most one ping at 10 ms
    (issue 16): before --wait waited for host1's withdrawal, host1 could delete the workload
    while host2 still routed to it."""
    old_ns, new_ns = f"{MOVER_NETNS}1", f"{MOVER_NETNS}3"
    addresses = ("10.0.0.13", "fd10::13")
    host3 = str(env.datapath.lab.topology.host("host3").prefix[1])
    holders: list[str] = []
    with namespaces(old_ns, new_ns):
        try:
            add_mover(env, "host1", old_ns, addresses)
            holders.append("host1")
            for address in addresses:
                reach(env, "blue2", address, time.monotonic())
            logs = {h: len(env.agents[h].log()) for h in ("host1", "host3")}
            running = [Ping(env, "blue2", a, interval=0.01) for a in addresses]
            started = time.monotonic()
            add_mover(env, "host3", new_ns, addresses)
            holders.append("host3")
            ready = time.monotonic() - started
            endpoint_cmd(env, "host1", "del", "mover")
            holders.remove("host1")
            deleted = time.monotonic() - started
            first_new, last_old = until_only(old_ns, new_ns, started)
            time.sleep(1)
            moved = losses(running)
            print(f"\nmake-before-break host1 -> host3: host3 READY {ready:.2f} s, host1's del "
                  f"READY {deleted:.2f} s, first echo at host3 {first_new:.2f} s, last at "
                  f"host1 {last_old:.2f} s; (sent, lost) IPv4, IPv6 {moved}")  # fmt: skip
            assert [lost <= 1 for _, lost in moved] == [True, True], moved
            for address in addresses:
                until_mirrored(env, "host2", address, f"{host3} dev")
                assert "window 1" in until_mirrored(env, "host2", address, "window")
            # host3 keeps it: nothing re-asserted, no duplicate anywhere
            at_new = echo_requests_received(new_ns)
            reach(env, "blue2", addresses[0], time.monotonic())
            assert echo_requests_received(new_ns) > at_new
            assert_no_duplicate(env, logs)
            assert stale_on(env, "host1") == set()
            announced = sh(env.datapath, ns("host1"), "ip route show table all proto 230")
            assert addresses[0] not in announced, where_is(env, addresses[0])
        finally:
            for host in holders:
                endpoint_cmd(env, host, "del", "mover")


def test_route_reflector_crashes_and_restarts_lose_no_packet(env: BgpAgents) -> None:
    paths = {rr: env.birds.bgp_routes(rr) for rr in ("rr1", "rr2")}
    running = pings(env)
    env.birds.kill("rr1")
    time.sleep(2)
    env.birds.kill("rr2")
    time.sleep(3)
    both_down = env.agents["host2"].status()["directory"]
    # one at a time, as an operator would: the second once the first has relearned
    for sessions, rr in enumerate(("rr1", "rr2"), 1):
        env.birds.start(rr)
        env.birds.wait_established(sessions)
        env.birds.wait_relearned(rr, paths[rr])
    lost = losses(running)
    print(f"\nrr1 then rr2 kill -9, restart one at a time: (sent, lost) {lost}")
    assert not both_down["in_sync"], both_down
    assert [x for _, x in lost] == [0, 0]


def test_both_route_reflectors_restarting_at_once_lose_no_packet(env: BgpAgents) -> None:
    # Each restarted RR sends End-of-RIB to whichever host reconnects first, before the others
    # have re-announced: that host flushes the RR's stale paths, and with both RRs back at once
    # no path of a late host is left until it reconnects. Here host1 is the late one: its
    # connections to the RRs are refused until host2 is back with both, then it reconnects at
    # its next connect retry, as a host whose retry timer fired last would. The agents' hold
    # after a session comes back (bgp_source.RECONNECT_S) outlasts that.
    for rr in ("rr1", "rr2"):  # crashed after they have run a while, not during recovery
        env.birds.wait_recovered(rr)
    paths = {rr: env.birds.bgp_routes(rr) for rr in ("rr1", "rr2")}
    refuse = [
        ["OUTPUT", "-p", "tcp", "--dport", "179", "-d", str(bgp_address(rr)), "-j", "REJECT",
         "--reject-with", "tcp-reset"]
        for rr in env.datapath.lab.topology.route_reflectors
    ]  # fmt: skip

    def ip6tables(*args: str) -> None:
        done = env.datapath.lab.exec(ns("host1"), ["ip6tables-legacy", *args], timeout=60)
        assert done.returncode == 0, done.stderr

    running = pings(env)
    env.birds.kill("rr1")
    env.birds.kill("rr2")
    for rule in refuse:
        ip6tables("-I", *rule)
    try:
        time.sleep(3)
        env.birds.start("rr1")
        env.birds.start("rr2")
        # the gap the agents must ride out: host1's paths flushed from host2's BIRD
        mirror = markers.mirror_table(BLUE)

        def gone() -> bool:
            return not routes_for(env, "host2", "10.0.0.1", mirror)

        wait_for("host2's mirror without blue1", gone)
    finally:  # also when the wait failed: the tests after this one need host1's sessions
        for rule in refuse:
            ip6tables("-D", *rule)
    env.birds.wait_established()
    for rr, held in paths.items():
        env.birds.wait_relearned(rr, held)
    # past the hold: a route missing now would be deleted
    time.sleep(bgp_source.RECONNECT_S + bgp_source.QUIET_S)
    lost = losses(running)
    print(f"\nrr1 and rr2 kill -9, restart at once, host1 late: (sent, lost) {lost}")
    assert [x for _, x in lost] == [0, 0]


def test_agent_restart_loses_no_packet(env: BgpAgents) -> None:
    running = pings(env)
    agent = env.agents["host1"]
    assert agent.stop() == 0
    started = time.monotonic()
    ready = agent.start()
    in_sync = in_sync_after({"host1": agent}, started)["host1"]
    time.sleep(1)
    lost = losses(running)
    print(
        f"\nhost1 agent restart (READY in {ready:.2f} s, in sync in {in_sync:.2f} s): "
        f"(sent, lost) {lost}"
    )
    assert [x for _, x in lost] == [0, 0]


def test_host_bird_crash_and_graceful_restart_lose_no_packet(env: BgpAgents) -> None:
    running = pings(env)
    env.birds.kill("host1")
    time.sleep(1)
    env.birds.start("host1")  # -R: graceful-restart recovery
    seen = []
    deadline = time.monotonic() + REACH_TIMEOUT_S
    while time.monotonic() < deadline:
        directory = env.agents["host1"].status()["directory"]
        seen.append(directory["in_sync"])
        if directory["in_sync"]:
            break
        time.sleep(0.1)
    time.sleep(1)
    lost = losses(running)
    out_of_sync = f"not in sync for {len(seen) - 1} status polls 0.1 s apart"
    print(f"\nhost1 BIRD kill -9 + start -R: (sent, lost) {lost}; {out_of_sync}")
    assert seen[0] is False and seen[-1] is True
    assert [x for _, x in lost] == [0, 0]


def test_a_route_outside_the_tenant_subnets_is_rejected_not_programmed(env: BgpAgents) -> None:
    bad = "192.168.77.1"
    table = markers.publish_table(BLUE)
    link = env.datapath.lab.topology.workloads_on("host1")[0].host_link
    sh(env.datapath, ns("host1"), f"ip route add {bad}/32 dev {link} table {table} proto 230")
    agent = env.agents["host2"]
    try:
        deadline = time.monotonic() + REACH_TIMEOUT_S
        while True:
            done = agent.status_command("-o", "json")
            rejected = json.loads(done.stdout)["directory"]["rejected"]
            if any(bad in r["route"] for r in rejected) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert [r["reason"] for r in rejected if bad in r["route"]] == ["outside-tenant-subnets"]
        metrics = metrics_of(env, "host2")
        counter = 'routed_nv_rejected_routes_total{reason="outside-tenant-subnets"} 1.0'
        assert counter in metrics, metrics
        mirror = markers.mirror_table(BLUE)
        programmed = sh(env.datapath, ns("host2"), f"ip -4 route show table all {bad}")
        assert [x for x in programmed.splitlines() if f"table {mirror}" not in x] == []
    finally:
        sh(env.datapath, ns("host1"), f"ip route del {bad}/32 table {table} proto 230")


@contextlib.contextmanager
def bird_extra(env: BgpAgents, host: str, extra: str) -> Iterator[None]:
    """`host`'s BIRD runs its agent's config plus `extra` (what a misbehaving host announces),
    from a copy: the agent's own file stays as it rendered it. Back to that file afterwards."""
    bird = env.birds.node(host)
    injected = bird.config.with_name("injected.conf")
    injected.write_text(bird.config.read_text() + extra)
    with BirdClient(bird.socket) as client:
        client.configure(injected)
    try:
        yield
    finally:
        with BirdClient(bird.socket) as client:
            client.configure(bird.config)


def announce(
    name: str, address: str, communities: list[tuple[int, int]], next_hop: str = ""
) -> str:
    """A static protocol for bird_extra: BGP announces `address` with these large communities
    (ASN 65000), as if it were one of the host's endpoints. The next hop is the host (next hop
    self), or `next_hop` when announced by a route reflector (which reflects it unchanged)."""
    tags = " ".join(f"bgp_large_community.add((65000, {k}, {v}));" for k, v in communities)
    if next_hop:
        tags += f" bgp_next_hop = {next_hop};"
    route = f"route {address}/32 blackhole {{ {tags} }};"
    return f"protocol static {name} {{ ipv4 {{ table bgp4; }}; {route} }}\n"


def rejected_on(env: BgpAgents, host: str, address: str) -> list[str]:
    """The reasons `host`'s agent gives for the directory routes of `address` it refused,
    once there are any (or after the deadline: none)."""
    deadline = time.monotonic() + REACH_TIMEOUT_S
    while True:
        rejected = env.agents[host].status()["directory"]["rejected"]
        found = sorted(r["reason"] for r in rejected if f"{address}/" in r["route"])
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def metrics_of(env: BgpAgents, host: str) -> str:
    scrape = (
        "import urllib.request as u; "
        "print(u.urlopen('http://127.0.0.1:9573/metrics').read().decode())"
    )
    return env.datapath.lab.exec(env.agents[host].namespace, [sys.executable, "-c", scrape]).stdout


def test_a_route_tagged_for_two_tenants_is_rejected_and_programmed_nowhere(
    env: BgpAgents,
) -> None:
    """host1 announces 10.0.0.77/32 with blue's and red's tenant communities: host2's BIRD puts
    it in both tenants' tables, and its agent refuses it in both (multiple-tenants)."""
    bad = "10.0.0.77"
    with bird_extra(env, "host1", announce("two_tenants", bad, [(1, BLUE), (1, 200)])):
        until_mirrored(env, "host2", bad, "via inet6")  # BIRD did deliver it
        assert rejected_on(env, "host2", bad) == ["multiple-tenants"] * 2
        for table in (markers.vrf_table(BLUE), markers.vrf_table(200)):
            assert routes_for(env, "host2", bad, table) == ""
        metrics = metrics_of(env, "host2")
        assert 'routed_nv_rejected_routes_total{reason="multiple-tenants"} 2.0' in metrics
        assert "directory.rejected reason=multiple-tenants" in env.agents["host2"].log()
    deadline = time.monotonic() + REACH_TIMEOUT_S
    while routes_for(env, "host2", bad, markers.mirror_table(BLUE)):
        assert time.monotonic() < deadline, "host1's injected route was never withdrawn"
        time.sleep(0.2)


def test_a_route_with_a_foreign_next_hop_is_reported_and_programmed_nowhere(
    env: BgpAgents,
) -> None:
    """rr1 reflects 10.0.0.78/32 for blue with a next hop outside the underlay (2001:db9::/32).
    BIRD cannot write it into host2's mirror table (no gateway: the export filter fails), so
    the mirror watch never sees it; host2's agent asks BIRD what that export refused and reports
    it (bad-next-hop) in status, metrics and log. Before, it was dropped unseen."""
    bad = "10.0.0.78"
    host2 = env.agents["host2"]
    offset = len(host2.log())
    foreign = announce("foreign", bad, [(1, BLUE)], next_hop="2001:db9:0:7::1")
    with bird_extra(env, "rr1", foreign):
        assert rejected_on(env, "host2", bad) == ["bad-next-hop"]
        rejected = host2.status()["directory"]["rejected"]
        assert next(r["route"] for r in rejected if f"{bad}/" in r["route"]).startswith(
            f"{bad}/32 via 2001:db9:0:7::1 (table {markers.mirror_table(BLUE)}): bad-next-hop"
        )
        counter = 'routed_nv_rejected_routes_total{reason="bad-next-hop"} 1.0'
        assert counter in metrics_of(env, "host2")
        assert "directory.rejected reason=bad-next-hop" in host2.log()[offset:]
        assert routes_for(env, "host2", bad) == ""  # in no table: neither mirrored nor programmed
    deadline = time.monotonic() + REACH_TIMEOUT_S
    while any(f"{bad}/" in r["route"] for r in host2.status()["directory"]["rejected"]):
        assert time.monotonic() < deadline, "still reported after the withdrawal"
        time.sleep(0.2)


def published_sequence(env: BgpAgents, host: str, address: str) -> int:
    """The mobility sequence `host` announces `address` with (its publish route's metric)."""
    route = routes_for(env, host, address, markers.publish_table(BLUE))
    found = re.search(r"metric (\d+)", route)
    return int(found.group(1)) if found else 0


def hijack(address: str, sequence: int) -> str:
    """What host1's BIRD adds to announce blue `address` as its own with `sequence`."""
    return announce("hijack", address, [(1, BLUE), (2, sequence)])


@contextlib.contextmanager
def reassert_after(env: BgpAgents, host: str, seconds: int) -> Iterator[None]:
    """`host`'s agent reloaded with directory.reassert_after_s = `seconds`; back to its own
    config afterwards. With the default (30 s) each re-assertion a test waits for is 30 s."""
    agent, config = env.agents[host], env.datapath.configs[host]
    directory = config.directory.model_copy(update={"reassert_after_s": seconds})
    agent.config_path.write_text(to_toml(config.model_copy(update={"directory": directory})))
    agent.reload()
    try:
        yield
    finally:
        agent.config_path.write_text(to_toml(config))
        if agent.proc is not None and agent.proc.poll() is None:
            agent.reload()


# long enough to see host2 stale before it re-asserts, in a loaded guest (the default is 30)
REASSERT_AFTER_S = 10


def test_a_hijacked_endpoint_comes_back_and_a_repeated_hijack_is_frozen_as_a_duplicate(
    env: BgpAgents,
) -> None:
    """host1 announces blue2's 10.0.0.2 (on host2) with a higher mobility sequence. Before,
    host2 went stale for good and blue2 was black-holed. Now host2, whose endpoint is still
    attached, re-asserts it after directory.reassert_after_s (REASSERT_AFTER_S here, set by a
    reload) and reports host1; host1 doing it again and again freezes the address at host2
    (more than 5 moves in 180 s): reported as a frozen duplicate in status, metrics and log,
    until the operator clears it."""
    with reassert_after(env, "host2", REASSERT_AFTER_S):
        hijack_until_frozen(env)


def hijack_until_frozen(env: BgpAgents) -> None:
    address = "10.0.0.2"
    host1 = str(env.datapath.lab.topology.host("host1").prefix[1])
    host2 = env.agents["host2"]
    offset = len(host2.log())
    started = time.monotonic()
    sequence = published_sequence(env, "host2", address) + 1
    with bird_extra(env, "host1", hijack(address, sequence)):
        until_mirrored(env, "host2", address, f"{host1} dev")
        deadline = time.monotonic() + REACH_TIMEOUT_S
        while (f"{address}/32", sequence, host1) not in stale_on(env, "host2"):
            assert time.monotonic() < deadline, where_is(env, address)  # the hijack took hold
            time.sleep(0.1)
        back = reach(env, "blue3", address, started)  # host3 routes it to host2 again
        print(f"\nhijack with sequence {sequence}: blue2 reachable again after {back:.2f} s")
        deadline = time.monotonic() + REACH_TIMEOUT_S
        while not (dups := host2.status()["directory"]["duplicates"]):
            assert time.monotonic() < deadline, where_is(env, address)
            time.sleep(0.2)
        assert [(d["prefix"], d["hosts"], d["other_address"]) for d in dups] == [
            (f"{address}/32", ["host2", "host1"], host1)
        ]
    # host1 keeps doing it: each time host2 takes it back, until the address is frozen there
    frozen: list[dict[str, object]] = []
    for _ in range(4):
        sequence = published_sequence(env, "host2", address) + 1
        with bird_extra(env, "host1", hijack(address, sequence)):
            deadline = time.monotonic() + REACH_TIMEOUT_S
            while published_sequence(env, "host2", address) <= sequence:
                assert time.monotonic() < deadline, where_is(env, address)
                time.sleep(0.2)
            dups = host2.status()["directory"]["duplicates"]
            frozen = [d for d in dups if d["frozen"]]
            if frozen:
                break
    print(f"frozen after {time.monotonic() - started:.2f} s: {frozen}")
    assert [(d["prefix"], d["hosts"], d["held_by"]) for d in frozen] == [
        (f"{address}/32", ["host2", "host1"], "host2")
    ]
    reach(env, "blue3", address, time.monotonic())
    assert 'routed_nv_duplicate_addresses{state="frozen"} 1.0' in metrics_of(env, "host2")
    log = host2.log()[offset:]
    assert (
        "mobility.reassert" in log and "mobility.duplicate " in log and "hosts=host2,host1" in log
    )
    cleared = subprocess.run(
        [*ROUTED_NV, "directory", "clear-duplicate", "blue", address, "--run-dir",
         str(host2.run_dir)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert cleared.returncode == 0, cleared.stderr
    deadline = time.monotonic() + REACH_TIMEOUT_S
    while host2.status()["directory"]["duplicates"]:
        assert time.monotonic() < deadline, host2.status()["directory"]
        time.sleep(0.2)
    # after all that, restarting the agents (the defender's, then the hijacker's) loses nothing
    running = [Ping(env, "blue1", address), Ping(env, "blue3", address)]
    for host in ("host2", "host1"):
        assert env.agents[host].stop() == 0
        env.agents[host].start()
    time.sleep(1)
    lost = losses(running)
    print(f"agents of host2 and host1 restarted after the hijack: (sent, lost) {lost}")
    assert [x for _, x in lost] == [0, 0]
    assert not host2.status()["directory"]["stale"]


def tor_routes(env: BgpAgents) -> str:
    """The router's (ToR's) kernel routes that its BIRD learned."""
    lab = env.datapath.lab
    return sh(env.datapath, lab.topology.router_namespace, "ip -6 route show proto bird")


def wait_for(what: str, check: Callable[[], bool], timeout: float = SESSION_TIMEOUT_S) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def test_the_underlay_is_learned_from_the_tor_not_static(env: BgpAgents) -> None:
    topology = env.datapath.lab.topology
    routes = tor_routes(env)
    for node in topology.underlay_nodes:
        # via the node's link-local address: fe80::2, or its kernel-made one after a restart
        assert re.search(rf"^{node.prefix} via fe80:\S+ dev {node.router_link} ", routes, re.M)
    router = sh(env.datapath, topology.router_namespace, "ip -6 route show")
    assert [x for x in router.splitlines() if "2001:db8" in x and "proto bird" not in x] == []
    host = sh(env.datapath, ns("host2"), f"ip -6 route show {topology.aggregate}")
    assert host.startswith(f"{topology.aggregate} via fe80:") and "proto bird" in host, host


def test_a_host_whose_upstream_session_drops_is_withdrawn_until_it_returns(
    env: BgpAgents,
) -> None:
    prefix = str(env.datapath.lab.topology.host("host1").prefix)
    reach(env, "blue2", "10.0.0.1", time.monotonic())
    # More blue packets from host1 to host2 than reach() sends in its deadline: host2's inbound
    # SA has counted them, so an outbound SA host1 made anew (sequence 1) would be dropped there
    # as replays for all of that deadline. Before, host1 deleted its remote routes and SAs while
    # its uplink was down (BIRD withdrew every mirror route) and made them anew afterwards.
    burst = ["ping", "-c", "2000", "-i", "0.002", "-q", "-W", "1", "10.0.0.2"]
    env.datapath.lab.exec(ns("blue1"), burst)
    sas_before = host_sas(env, "host1")
    with BirdClient(env.birds.node("host1").socket) as bird:
        down = time.monotonic()
        bird.command(f"disable {upstream_protocol(1)}")
    withdrawn = wait_for(f"{prefix} gone", lambda: prefix not in tor_routes(env))
    ping = env.datapath.lab.exec(ns("blue2"), ["ping", "-c", "3", "-W", "1", "10.0.0.1"])
    assert ping.returncode != 0, ping.stdout
    with BirdClient(env.birds.node("host1").socket) as bird:
        up = time.monotonic()
        bird.command(f"enable {upstream_protocol(1)}")
    back = wait_for(f"{prefix} back", lambda: prefix in tor_routes(env))
    resumed = reach(env, "blue2", "10.0.0.1", up)
    reach(env, "blue1", "10.0.0.2", time.monotonic())
    assert host_sas(env, "host1") == sas_before  # kept, not made anew
    print(
        f"\nhost1 upstream disabled -> /64 gone from the ToR: {withdrawn:.2f} s "
        f"(after {time.monotonic() - down:.1f} s: blue2 -> blue1 fails); enabled -> /64 back: "
        f"{back:.2f} s, blue2 -> blue1 answers: {resumed:.2f} s"
    )


def host_sas(env: BgpAgents, host: str) -> list[str]:
    """Each SA of `host` with the time it was added (`ip -s xfrm state`)."""
    out = sh(env.datapath, ns(host), "ip -s xfrm state")
    sas = re.findall(r"^src (\S+ dst \S+)\n\s+proto esp spi (\S+)", out, re.M)
    added = re.findall(r"^\s+add (\S+ \S+) use", out, re.M)
    assert len(sas) == len(added), out
    return sorted(f"{a} spi {b} added {t}" for (a, b), t in zip(sas, added, strict=True))


def md5_failures(env: BgpAgents, rr: str) -> int:
    """Segments the route reflector's kernel dropped for a wrong TCP-MD5 signature."""
    out = sh(env.datapath, ns(rr), "nstat -asz TcpExtTCPMD5Failure")
    return int(next(x.split()[1] for x in out.splitlines() if x.startswith("TcpExtTCPMD5")))


def rr_sessions(env: BgpAgents, host: str) -> dict[str, str]:
    peers = env.agents[host].status()["directory"]["peers"]
    return {p["name"]: p["info"] for p in peers if p["name"].startswith("rr")}


def test_a_wrong_bgp_password_gets_no_session_and_the_right_one_does(env: BgpAgents) -> None:
    password = env.password_file("host3")
    failures = md5_failures(env, "rr1")
    try:
        password.write_text("not-the-password\n")
        env.agents["host3"].reload()
        wait_for("rr1 dropping bad signatures", lambda: md5_failures(env, "rr1") > failures + 2)
        sessions = rr_sessions(env, "host3")
        assert len(sessions) == 2 and "Established" not in " ".join(sessions.values())
        status = env.agents["host3"].status_command().stdout
        assert re.search(r"rr1 .*(Connect|Active)", status), status
        with BirdClient(env.birds.node("host3").socket) as bird:
            info = "\n".join(x.text for x in bird.command("show protocols all rr1").lines)
        assert "BGP state:" in info and "Established" not in info, info
        print(f"\nwrong password: host3 rr sessions {sessions}; rr1 MD5 failures "
              f"{md5_failures(env, 'rr1') - failures}")  # fmt: skip
    finally:
        password.write_text(PASSWORD + "\n")
        env.agents["host3"].reload()
    again = wait_for(
        "host3 re-established",
        lambda: list(rr_sessions(env, "host3").values()) == ["Established"] * 2,
    )
    print(f"right password again: both rr sessions Established in {again:.2f} s")
    # leave the lab as found: the reset sessions' routes back in every agent's VRFs
    print(f"directory converged again {env.wait_converged():.2f} s later")
