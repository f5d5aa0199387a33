"""The bridged baselines: one Linux bridge + VXLAN device per tenant on every host, workloads on
one L2 segment per tenant, the way Neutron's linuxbridge agent and flannel build it.

Head-end replication: every host's VXLAN device has one all-zero FDB entry per other host, so
broadcast and unknown unicast are copied to each of them; remote MACs are learned from traffic.
The hosts take no part in the tenant segments (IPv6 disabled on bridges, VXLAN devices and
ports, as the linuxbridge agent does), so whatever crosses the underlay comes from workloads.
The encrypted variant adds host-to-host ESP transport SAs on the VXLAN UDP port.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Sequence
from pathlib import Path

from routed_nv.bench import tools
from routed_nv.bench.results import Variant
from routed_nv.bench.variants import Setup
from routed_nv.lab.builder import Lab, LabError, ip_batch
from routed_nv.lab.topology import WORKLOAD_IFNAME, Node, Workload

VXLAN_PORT = 4789
ESP_REQID = 1
AEAD = "rfc4106(gcm(aes))"
GCM_KEY_BYTES = 20  # 16-byte AES-128 key + 4-byte salt
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
                lines += [
                    f"link add {br} type bridge",
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

    def move(self, workload: Workload, host: str) -> float:
        broken = self._move_port(workload, host)
        target = self.topology.host(host)
        self._disable_ipv6(target, [workload.host_link])  # a new namespace, fresh defaults
        br = bridge_name(self._tenant_id(workload))
        ip_batch(target.namespace, [f"link set {workload.host_link} mtu {self.mtu} master {br} up"])
        # QEMU announces a migrated guest on its new link (announce-self); the lab sends
        # gratuitous ARPs on the same schedule, in the background as QEMU does.
        self.lab.spawn(
            workload.namespace,
            tools.announce_argv(
                WORKLOAD_IFNAME, ipv4=str(workload.ipv4), rounds=MIGRATION_ANNOUNCE_ROUNDS
            ),
        )
        return broken


class VxlanIpsec(Vxlan):
    variant = Variant.VXLAN_IPSEC

    def __init__(self, lab: Lab, workdir: Path) -> None:
        super().__init__(lab, workdir)
        # One key per direction of each host pair, known to both ends (static keying).
        self.keys = {
            (a.id, b.id): secrets.token_hex(GCM_KEY_BYTES)
            for a in self.topology.hosts
            for b in self.topology.hosts
            if a != b
        }

    @staticmethod
    def spi(source: Node, destination: Node) -> int:
        return 0x0B00_0000 | source.id << 12 | destination.id

    def _sa(self, source: Node, destination: Node) -> str:
        return (
            f"xfrm state add src {source.uplink_address} dst {destination.uplink_address} "
            f"proto esp spi {self.spi(source, destination)} reqid {ESP_REQID} mode transport "
            f"replay-window 64 aead '{AEAD}' 0x{self.keys[source.id, destination.id]} 128"
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
