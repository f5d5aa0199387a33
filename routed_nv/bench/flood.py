"""Broadcast and multicast on the underlay: what crosses hosts when a workload resolves a
neighbour, boots, and probes an address nobody has.

One capture on the underlay router, inbound direction only (every packet counted once, at the
link it came in on), for the whole sequence; each event owns a time window of it. A packet
"crosses hosts" when its outer source and destination are in two different hosts' /64s:
replicated VXLAN copies, ESP, or plain workload traffic; link-local ND/MLD between the router
and a host never leaves that link and is not counted.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from ipaddress import IPv6Address
from pathlib import Path

from routed_nv.bench import parse, tools
from routed_nv.bench.results import Flood
from routed_nv.bench.variants import Setup
from routed_nv.lab.builder import Lab, LabError, ip_batch
from routed_nv.lab.topology import WORKLOAD_IFNAME, Workload

RESOLVE_TIMEOUT_S = 3.0
# Long enough for link-local DAD (1 s), MLD reports and the first RS (each within 1 s).
BOOT_WINDOW_S = 3.0
# The kernel gives up on an unknown neighbour after 3 solicitations 1 s apart.
UNKNOWN_WINDOW_S = 3.5
SETTLE_S = 0.3  # between events, so that late packets stay in their own event's window
Packets = list[tuple[float, IPv6Address, IPv6Address]]


@contextmanager
def router_capture(lab: Lab, workdir: Path) -> Iterator[Packets]:
    """Every IPv6 packet entering the underlay router while the block runs; the list is filled
    when the block ends. --immediate-mode: without it, packets still in the capture ring when
    tcpdump stops are counted by the kernel but never written."""
    pcap, stderr = workdir / "underlay.pcap", workdir / "tcpdump.err"
    argv = ["tcpdump", "-i", "any", "-Q", "in", "--immediate-mode", "-nn", "-U", "-w", str(pcap)]
    with stderr.open("w") as err:
        capture = lab.spawn(lab.topology.router_namespace, [*argv, "ip6"], stderr=err)
    deadline = time.monotonic() + 10
    while "listening on" not in stderr.read_text():
        if capture.poll() is not None or time.monotonic() > deadline:
            raise LabError("tcpdump on the underlay router did not start")
        time.sleep(0.05)
    packets: Packets = []
    try:
        yield packets
    finally:
        time.sleep(SETTLE_S)
        capture.send_signal(signal.SIGINT)
        capture.wait(timeout=10)
    text = subprocess.run(
        ["tcpdump", "-nn", "-tt", "-r", str(pcap)], capture_output=True, text=True, check=True
    ).stdout
    packets.extend(parse.ip6_packets(text))


def _next_hop(lab: Lab, workload: Workload, address: str) -> str:
    route = json.loads(lab.exec(workload.namespace, ["ip", "-j", "route", "get", address]).stdout)
    return route[0].get("gateway", address)


def resolve(setup: Setup, workload: Workload, peer: Workload) -> None:
    """The workload's kernel resolves its next hop towards each of the peer's addresses, with no
    data sent (`managed` neighbour entries are resolved by the kernel on its own, Linux 5.16+)."""
    lab, ns = setup.lab, workload.namespace
    hops = sorted({_next_hop(lab, workload, a) for a in setup.addresses(peer)})
    ip_batch(ns, [f"neigh flush dev {WORKLOAD_IFNAME}"])
    ip_batch(ns, [f"neigh add {h} dev {WORKLOAD_IFNAME} managed" for h in hops])
    deadline = time.monotonic() + RESOLVE_TIMEOUT_S
    while time.monotonic() < deadline:
        entries = json.loads(
            lab.exec(ns, ["ip", "-j", "neigh", "show", "dev", WORKLOAD_IFNAME]).stdout
        )
        states = {e["dst"]: e.get("state", []) for e in entries}
        if all("REACHABLE" in states.get(h, []) for h in hops):
            break
        time.sleep(0.05)
    else:
        raise LabError(f"{workload.name}: could not resolve {', '.join(hops)}")
    ip_batch(ns, [f"neigh del {h} dev {WORKLOAD_IFNAME}" for h in hops])


def boot(setup: Setup, workload: Workload) -> None:
    """Link down, addresses gone, link up (the kernel: link-local DAD, MLD reports, RS), the
    guest's own configuration, then its gratuitous ARP and the DAD probe for its global IPv6."""
    ns = workload.namespace
    ip_batch(ns, [f"link set {WORKLOAD_IFNAME} down", f"addr flush dev {WORKLOAD_IFNAME}"])
    started = time.monotonic()
    setup.configure_workload(workload)
    ipv4 = next((a for a in setup.addresses(workload) if ":" not in a), None)
    ipv6 = next(a for a in setup.addresses(workload) if ":" in a)
    setup.lab.exec(ns, tools.announce_argv(WORKLOAD_IFNAME, ipv4=ipv4, ipv6=ipv6), check=True)
    time.sleep(max(0.0, started + BOOT_WINDOW_S - time.monotonic()))


def unknown(setup: Setup, workload: Workload) -> None:
    started = time.monotonic()
    addresses = setup.unknown_addresses(workload)
    with ThreadPoolExecutor(max_workers=len(addresses)) as pool:
        list(
            pool.map(
                lambda a: setup.lab.exec(
                    workload.namespace, ["ping", "-n", "-c", "1", "-W", "1", a]
                ),
                addresses,
            )
        )
    time.sleep(max(0.0, started + UNKNOWN_WINDOW_S - time.monotonic()))


def flood_events(setup: Setup, workload: Workload, peer: Workload) -> Flood:
    events: dict[str, Callable[[], None]] = {
        "resolve": lambda: resolve(setup, workload, peer),
        "unknown": lambda: unknown(setup, workload),
        # Last: a booted guest keeps soliciting routers (4 s, then backing off), which would
        # spill into a later event's window.
        "boot": lambda: boot(setup, workload),
    }
    windows = {}
    with router_capture(setup.lab, setup.workdir) as packets:
        for name, event in events.items():
            start = time.time()
            event()
            time.sleep(SETTLE_S)
            windows[name] = (start, time.time())
    prefixes = [h.prefix for h in setup.topology.hosts]
    return Flood(
        **{name: parse.crossing(packets, prefixes, *window) for name, window in windows.items()}
    )
