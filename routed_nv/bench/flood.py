"""Broadcast and multicast on the underlay: what crosses hosts when a workload resolves a
neighbour, probes an address nobody has, and boots, decoded frame by frame.

One capture on the underlay router, inbound only (every packet counted once, at the link it
came in on), for the whole sequence; each event owns a time window of it. A packet "crosses
hosts" when its outer source and destination are in two different hosts' /64s. The bridged
variants' packets are opened (VXLAN, and ESP with the variant's static keys) and the copies of
one inner frame are grouped, so every crossing is named and the count is frames x copies.

A window also holds what the guests send on their own: router solicitations (nothing answers
them on a bridged segment, so every guest keeps soliciting with RFC 7559 back-off) and the
kernel's reachability probes (unicast ARP/NS) of neighbours it talked to 5 s earlier
(delay_first_probe_time), with their replies. Those are kept apart as background: an event's
frames are the kinds the event makes its workload send (EVENT_KINDS), sent by it, and the
replies addressed to it.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path

from routed_nv.bench import tools, wire
from routed_nv.bench.results import EventFlood, Flood, FrameCount
from routed_nv.bench.variants import Setup, workload_mac
from routed_nv.lab.builder import Lab, LabError, ip_batch
from routed_nv.lab.checks import start_capture
from routed_nv.lab.topology import WORKLOAD_IFNAME, Workload

RESOLVE_TIMEOUT_S = 3.0
ADD_TRIES = 5
# Long enough for link-local DAD (1 s), MLD reports and the first RS (each within 1 s).
BOOT_WINDOW_S = 3.0
SETTLE_S = 0.3  # between events, so that late packets stay in their own event's window
# One solicitation per unresolved neighbour, so the unknown-address event counts exactly one ARP
# request and one NS per request: the kernel sends up to ucast_solicit + app_solicit +
# mcast_solicit probes (3 + 0 + 3 by default, 1 s apart), all broadcast while no address is
# known, so both limits are needed (with mcast_solicit alone a second ARP request came 1 s later).
SOLICIT_ONCE = {
    "net.ipv4.neigh.{}.mcast_solicit": "1",
    "net.ipv4.neigh.{}.ucast_solicit": "0",
    "net.ipv6.neigh.{}.mcast_solicit": "1",
    "net.ipv6.neigh.{}.ucast_solicit": "0",
}
CAPTURE_RING = ("-s", "1600", "-B", "16384")
# What each event makes its workload send (and the replies it gets): the guest also keeps
# sending router solicitations and MLD reports on its own timers, which are not the event's.
EVENT_KINDS = {
    "resolve": frozenset({"ARP request", "ARP reply", "NS", "NA"}),
    "unknown": frozenset({"ARP request", "NS"}),
    "boot": frozenset({"MLD report", "DAD NS", "RS", "gratuitous ARP"}),
}
REPLIES = frozenset({"ARP reply", "NA"})


IPAddress = IPv4Address | IPv6Address


@contextmanager
def router_capture(lab: Lab, workdir: Path) -> Iterator[Path]:
    """A pcap of every IPv6 packet entering the underlay router while the block runs, complete
    when the block ends. --immediate-mode: without it, packets still in the capture ring when
    tcpdump stops are counted by the kernel but never written. The ring: immediate mode uses
    one slot per snapshot length (256 KiB by default), so the default 2 MiB ring holds 8
    packets and a 9-copy flood overflowed it ("dropped by kernel"): a snapshot of a whole
    1500-byte packet (ESP needs its trailing ICV) and a 16 MiB ring."""
    pcap = workdir / "underlay.pcap"
    argv = ["tcpdump", "-i", "any", "-Q", "in", "--immediate-mode", *CAPTURE_RING, "-nn", "-U"]
    capture = start_capture(lab, [*argv, "-w", str(pcap), "ip6"], workdir)
    try:
        yield pcap
    finally:
        time.sleep(SETTLE_S)
        capture.send_signal(signal.SIGINT)
        capture.wait(timeout=10)


def _next_hop(lab: Lab, workload: Workload, address: str) -> str:
    route = json.loads(lab.exec(workload.namespace, ["ip", "-j", "route", "get", address]).stdout)
    return route[0].get("gateway", address)


def resolve(setup: Setup, workload: Workload, peer: Workload) -> None:
    """The workload's kernel resolves its next hop towards each of the peer's addresses, with no
    data sent (`managed` neighbour entries are resolved by the kernel on its own, Linux 5.16+)."""
    lab, ns = setup.lab, workload.namespace
    hops = sorted({_next_hop(lab, workload, a) for a in setup.addresses(peer)})
    _add_managed(ns, hops)
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


def _add_managed(namespace: str, hops: Sequence[str]) -> None:
    """New `managed` entries for the hops: the kernel starts resolving a new one at once (a
    replaced one waits for its managed timer, 5 s: CI said "could not resolve"). An entry can
    reappear between the flush and the add (an ARP request or NS from the host makes the
    kernel note its sender; CI said "File exists"): then flush and add again."""
    for attempt in range(1, ADD_TRIES + 1):
        ip_batch(namespace, [f"neigh flush dev {WORKLOAD_IFNAME}"])
        try:
            ip_batch(namespace, [f"neigh add {h} dev {WORKLOAD_IFNAME} managed" for h in hops])
            return
        except LabError as exc:
            if "File exists" not in str(exc) or attempt == ADD_TRIES:
                raise


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


@contextmanager
def solicit_once(lab: Lab, workload: Workload) -> Iterator[None]:
    keys = [k.format(WORKLOAD_IFNAME) for k in SOLICIT_ONCE]
    before = lab.exec(workload.namespace, ["sysctl", "-n", *keys], check=True).stdout.split()
    once = [f"{k.format(WORKLOAD_IFNAME)}={v}" for k, v in SOLICIT_ONCE.items()]
    lab.exec(workload.namespace, ["sysctl", "-qw", *once], check=True)
    try:
        yield
    finally:
        restore = [f"{k}={v}" for k, v in zip(keys, before, strict=True)]
        lab.exec(workload.namespace, ["sysctl", "-qw", *restore], check=True)


def unknown(setup: Setup, workload: Workload) -> None:
    """One ping to an address nobody has in each of the workload's subnets."""
    addresses = setup.unknown_addresses(workload)
    argv = ["ping", "-n", "-c", "1", "-W", "1"]
    with solicit_once(setup.lab, workload), ThreadPoolExecutor(len(addresses)) as pool:
        list(pool.map(lambda a: setup.lab.exec(workload.namespace, [*argv, a]), addresses))


def caused_by(
    frame: bytes | None, mac: bytes, event: str, asked: frozenset[IPAddress] | None = None
) -> bool:
    """Whether a crossing belongs to the event of the workload with this MAC: a frame of the
    event's kinds that the workload sent, or a reply addressed to it; with `asked`, a
    solicitation only when it asks for one of those addresses (the workload's kernel may
    re-resolve an older neighbour in the same window). Packets of the routed variants carry no
    frame to attribute: everything in the window is the event's."""
    if frame is None:
        return True
    kind = wire.classify(frame)
    if kind not in EVENT_KINDS[event]:
        return False
    if asked is not None and wire.solicited(frame) not in asked:
        return False
    return frame[:6] == mac if kind in REPLIES else frame[6:12] == mac


def _counts(groups: Sequence[list[wire.Crossing]]) -> list[FrameCount]:
    tally = Counter((g[0].kind, len(g)) for g in groups)
    return [FrameCount(kind=k, frames=n, copies=c) for (k, c), n in sorted(tally.items())]


def tally(
    crossings: Sequence[wire.Crossing],
    mac: bytes,
    event: str,
    start: float,
    end: float,
    asked: frozenset[IPAddress] | None = None,
) -> EventFlood:
    groups = wire.frames([c for c in crossings if start <= c.time <= end])
    mine = [g for g in groups if caused_by(g[0].frame, mac, event, asked)]
    others = [g for g in groups if not caused_by(g[0].frame, mac, event, asked)]
    return EventFlood(frames=_counts(mine), background=_counts(others))


def flood_events(setup: Setup, workload: Workload, peer: Workload) -> Flood:
    events: dict[str, Callable[[], None]] = {
        # Before resolve: a quick kernel test once counted a second ARP request in this
        # window after resolve (suspected: its `managed` entries being re-resolved).
        "unknown": lambda: unknown(setup, workload),
        "resolve": lambda: resolve(setup, workload, peer),
        # Last: a booted guest keeps soliciting routers (4 s, then backing off), which would
        # spill into a later event's window.
        "boot": lambda: boot(setup, workload),
    }
    windows = {}
    with router_capture(setup.lab, setup.workdir) as pcap:
        for name, event in events.items():
            start = time.time()
            event()
            time.sleep(SETTLE_S)
            windows[name] = (start, time.time())
    packets = wire.read_pcap(pcap.read_bytes())
    prefixes = [h.prefix for h in setup.topology.hosts]
    crossings = wire.crossings(packets, prefixes, setup.esp_keys())
    mac = bytes.fromhex(workload_mac(setup.lab, workload).replace(":", ""))
    # the unknown-address event is about its probes alone
    probed = frozenset(ip_address(a) for a in setup.unknown_addresses(workload))
    asked = {"unknown": probed}
    return Flood(
        **{name: tally(crossings, mac, name, *w, asked.get(name)) for name, w in windows.items()}
    )
