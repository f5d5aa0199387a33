"""Reachability checks run against a built lab (shared by `lab demo` and the kernel tests)."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv6Address

from routed_nv.lab.builder import Lab


@dataclass(frozen=True)
class Ping:
    source: str
    target: str
    address: IPv6Address
    ok: bool
    detail: str


def _ping(lab: Lab, source: str, target: str) -> Ping:
    topology = lab.topology
    address = topology.host(target).uplink_address
    done = lab.exec(
        topology.host(source).namespace, ["ping", "-6", "-c1", "-W2", "-n", str(address)]
    )
    output = (done.stdout + done.stderr).strip()
    rtt = re.search(r"time=\S+ ms", output)
    detail = rtt[0] if rtt and done.returncode == 0 else (output.splitlines() or [""])[-1]
    return Ping(source, target, address, done.returncode == 0, detail)


def underlay_pings(lab: Lab) -> list[Ping]:
    """ping -6 from every host namespace to every other host's uplink address, in parallel."""
    pairs = [(a.name, b.name) for a in lab.topology.hosts for b in lab.topology.hosts if a != b]
    with ThreadPoolExecutor(max_workers=len(pairs) or 1) as pool:
        return list(pool.map(lambda pair: _ping(lab, *pair), pairs))
