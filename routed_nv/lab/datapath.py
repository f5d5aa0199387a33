"""The routed_nv datapath on a built lab: per-host configs, tenant secrets, workload guests.

Each lab host gets the Config a real host would have (static keying, the other hosts as peers,
their workloads as static remote endpoints) and is programmed in-process with the same Datapath
that `routed-nv apply` uses, in its own namespace. Workloads are set up the way a VM's guest OS
would set itself up (addresses on eth0, the host as gateway); the host side of each workload link
is an `interface` endpoint, as a hypervisor's tap would be.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from routed_nv.agent.datapath import Outcome
from routed_nv.agent.wiring import build_datapath
from routed_nv.config.model import Config
from routed_nv.config.views import static_view
from routed_nv.config.writer import to_toml
from routed_nv.lab.builder import Lab, LabError, ip_batch
from routed_nv.lab.topology import UPLINK, WORKLOAD_IFNAME, Node, Topology, Workload
from routed_nv.model import markers


def host_config(topology: Topology, host: Node, secrets_dir: Path) -> Config:
    others = [h for h in topology.hosts if h != host]
    return Config.model_validate(
        {
            "host": {
                "name": host.name,
                "id": host.id,
                "underlay_prefix": str(host.prefix),
                "underlay_aggregate": str(topology.aggregate),
                "uplink": UPLINK,
            },
            "keying": {"mode": "static", "secrets_dir": str(secrets_dir)},
            # one per host, beside its config file (LabDatapath): the run dir in the file, so
            # that ROUTED_NV_CONFIG alone finds the host's agent (lab.host_shell)
            "agent": {
                "state_dir": str(secrets_dir.parent.absolute() / host.name / "state"),
                "run_dir": str(secrets_dir.parent.absolute() / host.name / "run"),
            },
            "tenants": {
                t.name: {"id": t.id, "ipv4": [str(t.ipv4)], "ipv6": [str(t.ipv6)]}
                for t in topology.tenants
            },
            "endpoints": {
                w.name: _endpoint(w, interface=True) for w in topology.workloads_on(host.name)
            },
            "peers": {h.name: {"id": h.id, "underlay_prefix": str(h.prefix)} for h in others},
            "remote_endpoints": {
                w.name: {**_endpoint(w, interface=False), "host": w.host}
                for h in others
                for w in topology.workloads_on(h.name)
            },
        }
    )


def _endpoint(w: Workload, interface: bool) -> dict[str, object]:
    entry: dict[str, object] = {"tenant": w.tenant, "addresses": [str(w.ipv4), str(w.ipv6)]}
    if interface:
        entry["interface"] = w.host_link
    return entry


def write_secrets(topology: Topology, secrets_dir: Path) -> None:
    """One fresh random secret per tenant, generation 0, readable by root only."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    for tenant in topology.tenants:
        path = secrets_dir / f"{tenant.name}.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"0 {secrets.token_hex(32)} active\n")


def configure_workload(workload: Workload, mtu: int) -> None:
    """What a guest OS does on boot: its addresses, and its host as the gateway for everything."""
    gw4, gw6 = markers.GATEWAY_V4, markers.GATEWAY_V6
    ip_batch(
        workload.namespace,
        [
            f"link set {WORKLOAD_IFNAME} mtu {mtu} up",
            f"addr add {workload.ipv4}/32 dev {WORKLOAD_IFNAME}",
            f"addr add {workload.ipv6}/128 dev {WORKLOAD_IFNAME} nodad",
            f"route add {gw4} dev {WORKLOAD_IFNAME} scope link",
            f"route add default via {gw4} dev {WORKLOAD_IFNAME}",
            f"route add default via {gw6} dev {WORKLOAD_IFNAME}",
        ],
    )


class LabDatapath:
    """routed_nv on every host of a built lab; keeps one Datapath per host, like an agent."""

    def __init__(
        self, lab: Lab, workdir: Path, adapt: Callable[[str, Config], Config] | None = None
    ) -> None:
        """`adapt(host, config)` changes a host's config before it is written (the BGP lab)."""
        self.lab = lab
        self.secrets_dir = workdir / "keys"
        topology = lab.topology
        write_secrets(topology, self.secrets_dir)
        self.configs = {h.name: host_config(topology, h, self.secrets_dir) for h in topology.hosts}
        if adapt is not None:
            self.configs = {host: adapt(host, config) for host, config in self.configs.items()}
        # the same configs as files, so `routed-nv apply -c` and operators in `lab shell` see them
        self.config_files = {}
        for host, config in self.configs.items():
            path = workdir / host / "routed-nv.toml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(to_toml(config))
            self.config_files[host] = path
        self.datapaths = {
            h.name: build_datapath(self.configs[h.name], netns=h.namespace) for h in topology.hosts
        }

    def configure_workloads(self) -> None:
        for w in self.lab.topology.workloads:
            self.configure_workloads_of(w.name)

    def configure_workloads_of(self, name: str) -> None:
        w = next(w for w in self.lab.topology.workloads if w.name == name)
        configure_workload(w, self.configs[w.host].tenant_mtu(w.tenant))

    def apply(self, host: str, config: Config | None = None) -> Outcome:
        config = config or self.configs[host]
        return self.datapaths[host].apply(config, static_view(config))

    def plan(self, host: str, config: Config | None = None) -> Outcome:
        config = config or self.configs[host]
        return self.datapaths[host].plan(config, static_view(config))

    def apply_all(self) -> dict[str, Outcome]:
        outcomes = {h.name: self.apply(h.name) for h in self.lab.topology.hosts}
        failed = {h: o for h, o in outcomes.items() if not o.ok}
        if failed:
            raise LabError(
                "; ".join(
                    f"{h}: {s.name}: {e}"
                    for h, o in failed.items()
                    for s in o.stages
                    for e in s.errors
                )
            )
        return outcomes


@contextmanager
def programmed_lab(
    topology: Topology, workdir: Path, adapt: Callable[[str, Config], Config] | None = None
) -> Iterator[LabDatapath]:
    """A lab built from `topology`, its workloads configured and every host programmed by
    routed_nv (static keying; `adapt` as for LabDatapath); torn down when the block ends."""
    with Lab(topology) as built:
        datapath = LabDatapath(built, workdir, adapt)
        datapath.configure_workloads()
        datapath.apply_all()
        yield datapath
