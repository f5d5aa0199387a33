"""The variants as setups on one built Lab: the same hosts, tenants and workloads, wired as
the plain underlay, routed_nv, or (bridged.py) VXLAN with and without IPsec.

A setup programs the hosts and configures the workloads as their guest OS would, says which
addresses peers use, which devices carry a path (for the MTU probe), how a workload moves to
another host, and which of the kernel's routes are its own (for the state count).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from ipaddress import IPv6Address, IPv6Network
from pathlib import Path

from routed_nv.bench import overhead
from routed_nv.bench.results import PROTECTION, Variant
from routed_nv.config.model import Config
from routed_nv.lab.builder import Lab, LabError, ip_batch
from routed_nv.lab.datapath import LabDatapath, host_config
from routed_nv.lab.topology import WORKLOAD_IFNAME, Node, Topology, Workload, default_topology
from routed_nv.model import markers

# Workloads of the plain underlay live in their host's /64: <prefix>:d000::<tenant id>.
UNDERLAY_WORKLOAD_BASE = 0xD000_0000_0000_0000
UNKNOWN_HOST_PART = 0x99  # an address nobody has, in each workload subnet


def bench_topology(hosts: int) -> Topology:
    """The default lab (3 hosts, 2 overlapping tenants, one workload per tenant per host) plus
    hosts without workloads that only take part in the overlay (flood lists, routed_nv peers)."""
    base = default_topology()
    extra = tuple(
        Node(id=i, name=f"host{i}", prefix=IPv6Network(f"2001:db8:0:{i}::/64"))
        for i in range(len(base.hosts) + 1, hosts + 1)
    )
    return replace(base, hosts=base.hosts + extra)


def workload_mac(lab: Lab, workload: Workload) -> str:
    path = f"/sys/class/net/{WORKLOAD_IFNAME}/address"
    return lab.exec(workload.namespace, ["cat", path], check=True).stdout.strip()


def moved(topology: Topology, workload: Workload, host: str) -> Topology:
    workloads = tuple(replace(w, host=host) if w == workload else w for w in topology.workloads)
    return replace(topology, workloads=workloads)


@dataclass(frozen=True)
class Moved:
    """When a move's steps happened (time.time())."""

    broken: float  # the port left its old host: the path broke
    steps: Mapping[str, float]  # host -> when the variant's last step on that host returned


class Setup(ABC):
    variant: Variant
    route_protos: tuple[str, ...] = ()  # protocols of the routes this variant installs

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.mtu = overhead.workload_mtu(self.variant)

    @property
    def topology(self) -> Topology:
        return self.lab.topology

    @abstractmethod
    def build(self) -> None:
        """Program every host and configure every workload."""

    @abstractmethod
    def configure_workload(self, workload: Workload) -> None:
        """What the workload's guest OS does when its link comes up (addresses, routes, MTU)."""

    def addresses(self, workload: Workload) -> list[str]:
        """The workload's addresses as its peers reach it; the first one is used for traffic."""
        return [str(workload.ipv6), str(workload.ipv4)]

    def unknown_addresses(self, workload: Workload) -> list[str]:
        """Addresses in the workload's subnets that nobody has."""
        tenant = self.topology.tenant(workload.tenant)
        return [str(tenant.ipv6[UNKNOWN_HOST_PART]), str(tenant.ipv4[UNKNOWN_HOST_PART])]

    @abstractmethod
    def path_devices(self, a: Workload, b: Workload) -> list[tuple[str, str]]:
        """(namespace, device) of every device whose MTU bounds the path between a and b."""

    def esp_keys(self) -> Mapping[int, bytes]:
        """SPI -> key of the ESP SAs whose traffic the flood count may open."""
        return {}

    def move(self, workload: Workload, host: str) -> Moved:
        """Move the workload's port to another host, as a live migration does, and do what the
        variant does on a move."""
        raise NotImplementedError

    move_method: str = ""  # empty: the variant cannot move a workload

    def _move_port(self, workload: Workload, host: str) -> float:
        # Moving the host end keeps the guest's eth0 (addresses, MAC, neighbours) as migration
        # does, and keeps the port's MAC, as libvirt derives a tap's MAC from the guest's.
        source = self.topology.host(workload.host).namespace
        target = self.topology.host(host).namespace
        ip_batch(source, [f"link set {workload.host_link} netns {target}"])
        return time.time()


class Underlay(Setup):
    """No overlay: each workload has an address in its host's /64, the host routes it."""

    variant = Variant.UNDERLAY
    route_protos = ("static",)

    def address(self, workload: Workload) -> IPv6Address:
        tenant = self.topology.tenant(workload.tenant)
        return self.topology.host(workload.host).prefix[UNDERLAY_WORKLOAD_BASE | tenant.id]

    def addresses(self, workload: Workload) -> list[str]:
        return [str(self.address(workload))]  # the underlay carries no IPv4

    def unknown_addresses(self, workload: Workload) -> list[str]:
        peer = next(h for h in self.topology.hosts if h.name != workload.host)
        return [str(peer.prefix[UNDERLAY_WORKLOAD_BASE | UNKNOWN_HOST_PART])]

    def build(self) -> None:
        for host in self.topology.hosts:
            lines = [f"route add unreachable {host.prefix} proto static"]
            for w in self.topology.workloads_on(host.name):
                lines += [
                    f"addr add {markers.GATEWAY_V6}/64 dev {w.host_link} nodad",
                    f"route add {self.address(w)}/128 dev {w.host_link} proto static",
                ]
            ip_batch(host.namespace, lines)
        for w in self.topology.workloads:
            self.configure_workload(w)

    def configure_workload(self, workload: Workload) -> None:
        ip_batch(
            workload.namespace,
            [
                f"link set {WORKLOAD_IFNAME} mtu {self.mtu} up",
                f"addr add {self.address(workload)}/128 dev {WORKLOAD_IFNAME} nodad",
                f"route add default via {markers.GATEWAY_V6} dev {WORKLOAD_IFNAME}",
            ],
        )

    def path_devices(self, a: Workload, b: Workload) -> list[tuple[str, str]]:
        return [(w.namespace, WORKLOAD_IFNAME) for w in (a, b)] + [
            (self.topology.host(w.host).namespace, w.host_link) for w in (a, b)
        ]


class Routed(Setup):
    """routed_nv itself, programmed by the same Datapath as `routed-nv apply` (static keys)."""

    variant = Variant.ROUTED
    route_protos = tuple(
        str(p) for p in (markers.RTPROT_ENDPOINT, markers.RTPROT_REMOTE, markers.RTPROT_INFRA)
    )
    move_method = "port moved; configs changed and applied on the new host, then on the others"

    def __init__(self, lab: Lab, workdir: Path) -> None:
        super().__init__(lab, workdir)
        self.datapath = LabDatapath(lab, workdir, self.adapt)

    def adapt(self, host: str, config: Config) -> Config:
        """A host's config as the variant runs it: the lab's."""
        return config

    def build(self) -> None:
        for host, config in self.datapath.configs.items():
            for tenant in config.tenants:
                if config.tenant_mtu(tenant) != self.mtu:
                    raise LabError(
                        f"{host}: routed_nv MTU {config.tenant_mtu(tenant)} for "
                        f"{tenant}, arithmetic says {self.mtu}"
                    )
        self.datapath.configure_workloads()
        self.datapath.apply_all()

    def configure_workload(self, workload: Workload) -> None:
        self.datapath.configure_workloads_of(workload.name)

    def path_devices(self, a: Workload, b: Workload) -> list[tuple[str, str]]:
        tunnel = markers.tunnel_name(self.topology.tenant(a.tenant).id)
        return [(w.namespace, WORKLOAD_IFNAME) for w in (a, b)] + [
            (self.topology.host(w.host).namespace, tunnel) for w in (a, b)
        ]

    def move(self, workload: Workload, host: str) -> Moved:
        broken = self._move_port(workload, host)
        after = moved(self.topology, workload, host)
        # The new host first (it must own the endpoint before anyone routes to it), then the
        # others: what the directory would deliver to them.
        order = [host, *(h.name for h in self.topology.hosts if h.name != host)]
        steps = {}
        for name in order:
            config = host_config(after, after.host(name), self.datapath.secrets_dir)
            outcome = self.datapath.apply(name, config)
            if not outcome.ok:
                raise LabError(f"{name}: apply after move failed")
            steps[name] = time.time()
        return Moved(broken, steps)


class RoutedMode(Routed):
    """routed_nv with every tenant in another protection mode (the tenants' `protection` key):
    the datapath derives the mode's keys, programs its SAs and the MTU that follows from it."""

    def adapt(self, host: str, config: Config) -> Config:
        protection = PROTECTION[self.variant]
        tenants = {
            name: t.model_copy(update={"protection": protection})
            for name, t in config.tenants.items()
        }
        return config.model_copy(update={"tenants": tenants})


class RoutedChacha(RoutedMode):
    variant = Variant.ROUTED_CHACHA


class RoutedIntegrity(RoutedMode):
    variant = Variant.ROUTED_INTEGRITY


class RoutedNone(RoutedMode):
    variant = Variant.ROUTED_NONE
