"""The bridged baselines: one Linux bridge + VXLAN device per tenant on every host, workloads on
one L2 segment per tenant, the way Neutron's linuxbridge agent and flannel build it.

Head-end replication: every host's VXLAN device has one all-zero FDB entry per other host, so
broadcast and unknown unicast are copied to each of them; remote MACs are learned from traffic.
The hosts take no part in the tenant segments (IPv6 disabled on bridges, VXLAN devices and
ports, as the linuxbridge agent does; multicast snooping off, see build()), so whatever
crosses the underlay comes from workloads.
The encrypted variant adds host-to-host ESP transport SAs on the VXLAN UDP port, and moves a
workload the way an orchestrator with l2population does (see VxlanIpsec).
"""

from __future__ import annotations

import secrets
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from routed_nv.bench import tools
from routed_nv.bench.results import PROTECTION, Variant
from routed_nv.bench.variants import Moved, Setup, workload_mac
from routed_nv.lab.builder import Lab, LabError, ip_batch
from routed_nv.lab.topology import WORKLOAD_IFNAME, Node, Workload
from routed_nv.model.protection import suite

VXLAN_PORT = 4789
ESP_REQID = 1
ZERO_MAC = "00:00:00:00:00:00"
MIGRATION_ANNOUNCE_ROUNDS = 5  # QEMU's announce-rounds default


def bridge_name(tenant_id: int) -> str:
    return f"br{tenant_id}"


def vxlan_name(tenant_id: int) -> str:
    return f"vx{tenant_id}"


def bridge_batch(namespace: str, lines: Sequence[str]) -> None:
    done = subprocess.run(
        ["bridge", "-n", namespace, "-batch", "-"],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise LabError(f"{namespace}: bridge -batch failed: {done.stderr.strip()}")


class Vxlan(Setup):
    variant = Variant.VXLAN
    move_method = "port moved to the new host's bridge; the guest's gratuitous ARP is learned"

    def _tenant_id(self, workload: Workload) -> int:
        return self.topology.tenant(workload.tenant).id

    def _disable_ipv6(self, host: Node, devices: Sequence[str]) -> None:
        keys = [f"net.ipv6.conf.{d}.disable_ipv6=1" for d in devices]
        self.lab.exec(host.namespace, ["sysctl", "-qw", *keys], check=True)

    def build(self) -> None:
        for host in self.topology.hosts:
            devices, lines, fdb = [], [], []
            for tenant in self.topology.tenants:
                br, vx = bridge_name(tenant.id), vxlan_name(tenant.id)
                devices += [br, vx]
                # mcast_snooping 0: a snooping bridge joins the all-snoopers groups (RFC 4286,
                # 224.0.0.106 and ff02::6a) and, IPv4 being up on every device, sends IGMPv3
                # reports from its own MAC into the segment: every peer's VXLAN device learned
                # every bridge's MAC. Without a querier a snooping bridge floods multicast to
                # every port anyway, so this changes no forwarding.
                lines += [
                    f"link add {br} type bridge mcast_snooping 0",
                    f"link add {vx} type vxlan id {tenant.id} local {host.uplink_address} "
                    f"dstport {VXLAN_PORT}",
                    f"link set {vx} mtu {self.mtu} master {br}",
                ]
                fdb += [
                    f"fdb append {ZERO_MAC} dev {vx} dst {peer.uplink_address} self permanent"
                    for peer in self.topology.hosts
                    if peer != host
                ]
            workloads = self.topology.workloads_on(host.name)
            ip_batch(host.namespace, lines)
            # Before the ports join: disabling IPv6 on an up port sends MLD leave reports, which
            # the bridge would flood and every other host would learn.
            self._disable_ipv6(host, devices + [w.host_link for w in workloads])
            ip_batch(
                host.namespace,
                [
                    f"link set {w.host_link} mtu {self.mtu} master "
                    f"{bridge_name(self._tenant_id(w))}"
                    for w in workloads
                ]
                + [f"link set {d} up" for d in devices],
            )
            bridge_batch(host.namespace, fdb)
            self._program_esp(host)
        for w in self.topology.workloads:
            self.configure_workload(w)

    def _program_esp(self, host: Node) -> None:
        """Nothing to do without encryption."""

    def configure_workload(self, workload: Workload) -> None:
        tenant = self.topology.tenant(workload.tenant)
        ip_batch(
            workload.namespace,
            [
                f"link set {WORKLOAD_IFNAME} mtu {self.mtu} up",
                f"addr add {workload.ipv4}/{tenant.ipv4.prefixlen} dev {WORKLOAD_IFNAME}",
                f"addr add {workload.ipv6}/{tenant.ipv6.prefixlen} dev {WORKLOAD_IFNAME} nodad",
            ],
        )

    def path_devices(self, a: Workload, b: Workload) -> list[tuple[str, str]]:
        devices = []
        for w in (a, b):
            host = self.topology.host(w.host).namespace
            devices += [
                (w.namespace, WORKLOAD_IFNAME),
                (host, w.host_link),
                (host, vxlan_name(self._tenant_id(w))),
            ]
        return devices

    def move(self, workload: Workload, host: str) -> Moved:
        broken = self._move_port(workload, host)
        target = self.topology.host(host)
        self._disable_ipv6(target, [workload.host_link])  # a new namespace, fresh defaults
        br = bridge_name(self._tenant_id(workload))
        ip_batch(target.namespace, [f"link set {workload.host_link} mtu {self.mtu} master {br} up"])
        attached = time.time()
        # QEMU announces a migrated guest on its new link (announce-self); the lab sends
        # gratuitous ARPs on the same schedule, in the background as QEMU does.
        self.lab.spawn(
            workload.namespace,
            tools.announce_argv(
                WORKLOAD_IFNAME, ipv4=str(workload.ipv4), rounds=MIGRATION_ANNOUNCE_ROUNDS
            ),
        )
        return Moved(broken, {host: attached, **self._relocate(workload, target)})

    def _relocate(self, workload: Workload, target: Node) -> dict[str, float]:
        """Nothing: the other hosts learn the new location from the guest's announcements."""
        return {}


class VxlanIpsec(Vxlan):
    """Moves need an orchestrator here. Learning alone never converges: when a learned MAC
    moves, the kernel's vxlan_snoop() rewrites the FDB entry's remote address in place but keeps
    the entry's cached route (dst_cache). With IPsec that cached route is an XFRM bundle bound
    to the old host's SA, so the packets for the new host carry the old host's SPI and the new
    host drops them (XfrmInNoStates). Plain VXLAN survives the same stale cache only because
    every host sits behind the same underlay next hop. `bridge fdb replace` alone does not help
    either: learning has already moved the entry to the new address, and replace with an
    address the entry already has returns before it resets the cache. So the orchestrator (as
    Neutron's l2population pushes locations) deletes the entry on every other host and puts it
    back, which gives it a fresh route cache."""

    variant = Variant.VXLAN_IPSEC
    move_method = (
        "port moved to the new host's bridge; the orchestrator deletes and re-adds the MAC's "
        "FDB entry on every other host (a fresh route cache)"
    )

    def __init__(self, lab: Lab, workdir: Path) -> None:
        super().__init__(lab, workdir)
        # the same AEAD (and key length) as routed_nv's mode
        self.suite = suite(PROTECTION[self.variant])  # type: ignore[arg-type]
        # One key per direction of each host pair, known to both ends (static keying).
        self.keys = {
            (a.id, b.id): secrets.token_hex(self.suite.key_bytes)
            for a in self.topology.hosts
            for b in self.topology.hosts
            if a != b
        }

    def esp_keys(self) -> Mapping[int, bytes]:
        return {
            self.spi(a, b): bytes.fromhex(self.keys[a.id, b.id])
            for a in self.topology.hosts
            for b in self.topology.hosts
            if a != b
        }

    def _relocate(self, workload: Workload, target: Node) -> dict[str, float]:
        mac = workload_mac(self.lab, workload)
        vx = vxlan_name(self._tenant_id(workload))
        done = {}
        for host in self.topology.hosts:
            if host != target:
                replace = f"fdb replace {mac} dev {vx} dst {target.uplink_address} self"
                # The first replace only makes sure there is an entry to delete (hosts that
                # never learned the MAC); the last one also copes with learning re-creating it
                # in between (a new entry has a fresh cache too).
                bridge_batch(host.namespace, [replace, f"fdb del {mac} dev {vx} self", replace])
                done[host.name] = time.time()
        return done

    @staticmethod
    def spi(source: Node, destination: Node) -> int:
        return 0x0B00_0000 | source.id << 12 | destination.id

    def _sa(self, source: Node, destination: Node) -> str:
        return (
            f"xfrm state add src {source.uplink_address} dst {destination.uplink_address} "
            f"proto esp spi {self.spi(source, destination)} reqid {ESP_REQID} mode transport "
            f"replay-window 64 aead '{self.suite.algorithm}' "
            f"0x{self.keys[source.id, destination.id]} {self.suite.icv_bits}"
        )

    def _program_esp(self, host: Node) -> None:
        me, aggregate = f"{host.uplink_address}/128", self.topology.aggregate
        lines = [
            f"xfrm policy add src {me} dst {aggregate} proto udp dport {VXLAN_PORT} dir out "
            f"tmpl proto esp reqid {ESP_REQID} mode transport",
            f"xfrm policy add src {aggregate} dst {me} proto udp dport {VXLAN_PORT} dir in "
            f"tmpl proto esp reqid {ESP_REQID} mode transport",
        ]
        for peer in self.topology.hosts:
            if peer != host:
                lines += [self._sa(host, peer), self._sa(peer, host)]
        ip_batch(host.namespace, lines)


class VxlanIpsecChacha(VxlanIpsec):
    """vxlan+ipsec with ChaCha20-Poly1305: the bridged peer of routed_nv's chacha20-poly1305."""

    variant = Variant.VXLAN_IPSEC_CHACHA
