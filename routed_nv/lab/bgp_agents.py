"""The BGP lab: directory_topology() with BIRD on every host and route reflector, and an agent
per host whose directory source is BGP.

Each host's config keeps `peers` (static keying derives SPIs from host ids, which BGP does not
carry) but has no `remote_endpoints`: where the other hosts' workloads are comes from BGP only.
The agent applies its host's BIRD config itself (bird_apply) to the BIRD the lab started with it.
Sessions between hosts and route reflectors are TCP-MD5 authenticated: every host reads the
password from its own file (password_file(host)), so a test can give one host a wrong one.
The underlay is BGP too (directory_topology): every host and route reflector announces its /64
to the router's BIRD, the top-of-rack router, and learns the underlay aggregate from it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from routed_nv.config.model import Config, DirectorySourceKind
from routed_nv.directory import bird_config
from routed_nv.lab.agents import LabAgents
from routed_nv.lab.bird import LabBird, with_directory
from routed_nv.lab.builder import Lab, LabError
from routed_nv.lab.datapath import LabDatapath
from routed_nv.lab.topology import Topology

CONVERGE_TIMEOUT_S = 60.0

PASSWORD = "rnv-lab-bgp"  # the TCP-MD5 password of every host <-> route reflector session


class BgpAgents:
    def __init__(
        self, lab: Lab, workdir: Path, adapt: Callable[[str, Config], Config] | None = None
    ) -> None:
        """`adapt(host, config)` changes each host's config further (IKE keying in the lab)."""
        self._secrets = workdir / "bgp-passwords"  # before LabDatapath: it asks _bgp_config
        self._adapt = adapt
        self.birds = LabBird(lab, workdir / "bird")
        self.datapath = LabDatapath(lab, workdir, self._bgp_config)
        self.agents = LabAgents(self.datapath, workdir)

    def password_file(self, host: str) -> Path:
        return self._secrets / f"{host}.password"

    def _bgp_config(self, host: str, config: Config) -> Config:
        bird = self.birds.node(host)
        config = with_directory(config, self.birds.lab.topology)
        password = self.password_file(host)
        bird_config.write_private(password, PASSWORD + "\n")
        directory = config.directory.model_copy(
            update={
                "source": DirectorySourceKind.BGP,
                "bird_socket": bird.socket,
                "bird_config": bird.config,
                "password_file": password,
            }
        )
        config = config.model_copy(update={"directory": directory, "remote_endpoints": {}})
        return self._adapt(host, config) if self._adapt else config

    def start_route_reflectors(self) -> None:
        """The ToR and the route reflectors, with the password every host's file holds."""
        self.birds.start_route_reflectors(PASSWORD)

    def start(self, *agent_args: str) -> dict[str, float]:
        """The ToR and route reflectors, workloads, agents, then the hosts' BIRD: the agents'
        first apply creates the host addresses BGP runs from, and a session that fails before
        they exist waits out BIRD's retry timers. A host's BIRD first brings up its eBGP
        session to the ToR (link-local: it needs no route), which gives it the aggregate and
        the ToR its /64; its route reflector sessions, which need both, connect once BIRD's
        retry comes (connect retry time 5 s). Returns each agent's seconds to READY=1 (the
        agent needs no BIRD for that: it applies BIRD's config once BIRD answers)."""
        self.start_route_reflectors()
        self.datapath.configure_workloads()
        ready = self.agents.start_all(*agent_args)
        self.birds.start_hosts(self.datapath.configs)
        self.birds.wait_established()
        return ready

    def wait_converged(self, timeout: float = CONVERGE_TIMEOUT_S) -> float:
        """Seconds until every agent is in sync with its route reflectors and has applied, without
        errors, a route to every address of its tenants' workloads on the other hosts (which it
        can only have learned from BGP). Raises LabError naming the hosts that are not there."""
        started = time.monotonic()
        expected = expected_remote_addresses(self.birds.lab.topology)
        while True:
            behind = {}
            for host, wanted in expected.items():
                status = self.agents[host].status()
                last = status["last_apply"] or {}
                have = (status["directory"]["in_sync"], last.get("ok"))
                have += (status["datapath"]["remote_addresses"],)
                if have != (True, True, wanted):
                    behind[host] = f"in sync, last apply ok, remote addresses: {have}"
            if not behind:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise LabError(f"BGP directory not converged after {timeout:g} s: {behind}")
            time.sleep(0.1)


def expected_remote_addresses(topology: Topology) -> dict[str, int]:
    """Per host: the addresses of the workloads on other hosts that share a tenant with it."""
    expected = {}
    for host in topology.hosts:
        tenants = {w.tenant for w in topology.workloads_on(host.name)}
        others = [w for w in topology.workloads if w.host != host.name and w.tenant in tenants]
        expected[host.name] = 2 * len(others)  # an IPv4 and an IPv6 address each
    return expected
