"""BIRD in the lab: one daemon per underlay node (hosts and route reflectors), each with its own
config, control socket and log under a per-node directory of the lab's work directory; with a
BGP underlay (Topology.bgp_underlay) one more in the router's namespace, the top-of-rack router
(ToR), with which every node's BIRD exchanges underlay routes over eBGP on its uplink.

Daemons run in the foreground (`-f`) as processes of the Lab, so that the Lab knows their pids:
stop() and kill() signal exactly that pid, and the Lab's teardown stops whatever is left. Every
restart uses `-R` (graceful restart recovery), as production must (ARCHITECTURE.md §6); a
node's first start does not (see start()).
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from ipaddress import IPv6Address
from pathlib import Path
from subprocess import DEVNULL, Popen

from routed_nv.config.model import Config, Directory, Upstream
from routed_nv.directory import bird_config
from routed_nv.directory.birdc import GR_RECOVERY, BirdClient
from routed_nv.lab.builder import Lab, LabError, ip_batch
from routed_nv.lab.topology import ROUTER_LINK_LOCAL, UPLINK, Node, Topology
from routed_nv.model import markers

SOCKET_WAIT_S = 10.0
BGP_ADDRESS_INTERFACE = 1  # a node's BGP address is <node /64>::1, like a host address
TOR = "tor"  # the BIRD of the router's namespace
TOR_ASN = 65100
TOR_ID = 0xFFFF  # router id 0.0.255.255: clear of the hosts' and route reflectors' ids
# every node's upstream: the router's end of its point-to-point uplink
TOR_UPSTREAMS = (Upstream(address=ROUTER_LINK_LOCAL, asn=TOR_ASN),)


def bgp_address(node: Node) -> IPv6Address:
    return node.prefix[BGP_ADDRESS_INTERFACE]


@dataclass
class BirdNode:
    namespace: str
    directory: Path
    process: Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        return self.directory / "bird.conf"

    @property
    def socket(self) -> Path:
        return self.directory / "bird.ctl"

    @property
    def log(self) -> Path:
        return self.directory / "bird.log"


class LabBird:
    """The BIRD daemons of one built lab."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.nodes: dict[str, BirdNode] = {}

    def node(self, name: str) -> BirdNode:
        if name not in self.nodes:
            if name == TOR:
                self.nodes[name] = BirdNode(self.lab.topology.router_namespace, self.workdir / name)
            else:
                node = next(n for n in self.lab.topology.underlay_nodes if n.name == name)
                self.nodes[name] = BirdNode(node.namespace, self.workdir / name)
        return self.nodes[name]

    def start_top_of_rack(self) -> None:
        """The router's BIRD: passive towards every node, so it never waits out a retry timer
        for a node whose BIRD is not up yet; the nodes connect when theirs starts."""
        topology = self.lab.topology
        ports = [n.router_link for n in topology.underlay_nodes]
        log = self.node(TOR).log
        text = bird_config.render_top_of_rack(TOR_ID, TOR_ASN, topology.aggregate, ports, log)
        self.start(TOR, text, recover=False)

    def start_route_reflectors(self, password: str | None = None) -> None:
        """Give every route reflector its BGP address and start its BIRD (with a BGP underlay,
        the ToR's first: the route reflectors announce their /64s to it)."""
        topology = self.lab.topology
        if topology.bgp_underlay:
            self.start_top_of_rack()
        for rr in topology.route_reflectors:
            ip_batch(rr.namespace, [f"addr add {bgp_address(rr)}/128 dev lo"])
            bird = self.node(rr.name)
            upstreams = (
                bird_config.UpstreamSessions(rr.prefix, topology.aggregate, UPLINK, TOR_UPSTREAMS)
                if topology.bgp_underlay
                else None
            )
            text = bird_config.render_route_reflector(
                rr.id,
                bgp_address(rr),
                topology.aggregate,
                Directory().asn,
                password,
                bird.log,
                upstreams,
                version=bird_config.installed_version(),
            )
            self.start(rr.name, text, recover=False)

    def start_hosts(self, configs: dict[str, Config]) -> None:
        """Start every host's BIRD with the config rendered from its Config. The host address
        must exist first (the routing driver puts it on rnv0; see add_host_addresses)."""
        for name, config in configs.items():
            password = bird_config.read_password(config.directory.password_file)
            text = bird_config.render_host(
                config, password, self.node(name).log, version=bird_config.installed_version()
            )
            self.start(name, text, recover=False)

    def add_host_addresses(self) -> None:
        """rnv0 with the host address, as the routing driver makes it, for labs without the
        datapath: BGP sessions run between host addresses."""
        for host in self.lab.topology.hosts:
            ip_batch(
                host.namespace,
                [
                    f"link add {markers.HOST_DEVICE} type dummy",
                    f"link set {markers.HOST_DEVICE} up",
                    f"addr add {bgp_address(host)}/128 dev {markers.HOST_DEVICE} nodad",
                ],
            )

    def wait_established(self, sessions: int | None = None, timeout: float = 30.0) -> None:
        """Until every host has `sessions` (default: all) route-reflector sessions Established.
        Only those count: a host's eBGP session to the ToR is up throughout an RR restart."""
        count = len(self.lab.topology.route_reflectors)
        reflectors = {bird_config.rr_protocol(i) for i in range(1, count + 1)}
        wanted = len(reflectors) if sessions is None else sessions
        deadline = time.monotonic() + timeout
        pending = [h.name for h in self.lab.topology.hosts]
        while pending:
            with BirdClient(self.node(pending[0]).socket) as bird:
                states = {p.name: p.session for p in bird.protocols() if p.name in reflectors}
            if list(states.values()).count("Established") >= wanted:
                pending.pop(0)
            elif time.monotonic() > deadline:
                raise LabError(f"{pending[0]}: BGP sessions not established: {states}")
            else:
                time.sleep(0.1)

    def bgp_routes(self, name: str) -> int:
        """How many paths a node's BIRD holds in its BGP tables (both families)."""
        with BirdClient(self.node(name).socket) as bird:
            return sum(len(bird.routes(f"table {fam.bgp_table}")) for fam in bird_config.FAMILIES)

    def wait_relearned(self, name: str, paths: int, timeout: float = 30.0) -> None:
        """Until a restarted route reflector holds `paths` again (what it held before), i.e.
        every host has re-announced to it: what an operator checks before restarting the
        next one."""
        deadline = time.monotonic() + timeout
        while (held := self.bgp_routes(name)) < paths:
            if time.monotonic() > deadline:
                raise LabError(f"{name}: {held} of {paths} BGP paths relearned")
            time.sleep(0.1)

    def wait_recovered(self, name: str, timeout: float = 60.0) -> None:
        """Until a node's BIRD has left graceful-restart recovery."""
        deadline = time.monotonic() + timeout
        while True:
            with BirdClient(self.node(name).socket) as bird:
                status = bird.command("show status")
            if all(line.text != GR_RECOVERY for line in status.lines):
                return
            if time.monotonic() > deadline:
                raise LabError(f"{name}: BIRD still in graceful-restart recovery")
            time.sleep(0.2)

    def start(self, name: str, text: str | None = None, recover: bool = True) -> BirdNode:
        """(Re)start a node's BIRD, with a new config if given; wait for its control socket.
        `recover=False` is for a node's first start, and its first after a clean stop (SIGTERM:
        its neighbours withdrew everything, the ToR its /64 too): with no forwarding state to keep,
        graceful restart recovery would only hold back every export until BIRD's
        `graceful restart wait` (240 s) ran out, since a host's /64 reaches the ToR only once
        recovery is done, which waits for the route reflector sessions that need that /64."""
        bird = self.node(name)
        if text is not None:
            bird_config.write_private(bird.config, text)
            bird_config.check(bird.config)
        bird.socket.unlink(missing_ok=True)
        argv = ["bird", "-f", *(["-R"] if recover else []), "-c", str(bird.config)]
        argv += ["-s", str(bird.socket)]
        bird.process = self.lab.spawn(bird.namespace, argv, stdout=DEVNULL, stderr=DEVNULL)
        deadline = time.monotonic() + SOCKET_WAIT_S
        while not bird.socket.exists():
            if bird.process.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"{name}: BIRD did not start (see {bird.log})")
            time.sleep(0.02)
        return bird

    def signal(self, name: str, signum: signal.Signals) -> None:
        """Signal a node's BIRD by its pid and wait for it to exit."""
        process = self.node(name).process
        if process is None or process.poll() is not None:
            raise LabError(f"{name}: BIRD is not running")
        process.send_signal(signum)
        process.wait(timeout=SOCKET_WAIT_S)

    def kill(self, name: str) -> None:
        """kill -9: the crash that graceful restart is for."""
        self.signal(name, signal.SIGKILL)


def with_directory(config: Config, topology: Topology) -> Config:
    """A lab host's config with the lab's route reflectors as its directory, and with a BGP
    underlay the ToR as its upstream."""
    update: dict[str, object] = {
        "route_reflectors": [bgp_address(rr) for rr in topology.route_reflectors]
    }
    if topology.bgp_underlay:
        update["upstreams"] = list(TOR_UPSTREAMS)
    return config.model_copy(update={"directory": config.directory.model_copy(update=update)})
