"""`routed-nv trace` on a real kernel, in the agent lab (static directory and keying): a packet
sent to its host over the SPI `sa list` shows, one dropped at the tenant boundary, and the first
reason after a route or an outbound SA was deleted by hand (a resync interval long enough that
the agent does not repair them while the test looks)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from test_datapath_scenario import ns, sh

from routed_nv.config.model import Config, RemoteEndpoint
from routed_nv.lab.agents import ROUTED_NV, LabAgent, LabAgents
from routed_nv.lab.builder import Lab
from routed_nv.lab.datapath import LabDatapath
from routed_nv.lab.topology import default_topology

pytestmark = pytest.mark.kernel

HOST1_BLUE = "2001:db8:0:1::1:64"
HOST2_BLUE = "2001:db8:0:2::1:64"
RED_ONLY = "10.0.0.9"  # an address only tenant red has (on host2), in host1's directory


@dataclass
class Env:
    lab: LabDatapath
    agents: LabAgents


def _red_only_address(host: str, config: Config) -> Config:
    if host != "host1":
        return config
    red9 = RemoteEndpoint(tenant="red", addresses=[RED_ONLY], host="host2")
    return config.model_copy(update={"remote_endpoints": {**config.remote_endpoints, "red9": red9}})


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("trace")
    with Lab(default_topology()) as built:
        lab = LabDatapath(built, workdir, adapt=_red_only_address)
        lab.configure_workloads()
        agents = LabAgents(lab, workdir)
        agents.start_all("--resync-interval", "3600")
        yield Env(lab, agents)
        agents.stop_all()


def trace(agent: LabAgent, *args: str) -> tuple[int, dict[str, Any], str]:
    """`routed-nv trace` as an operator runs it for host1: exit status, JSON answer, text."""
    common = ["-c", str(agent.config_path), "--run-dir", str(agent.run_dir)]
    common += ["--netns", agent.namespace]
    runs = [
        subprocess.run(
            [*ROUTED_NV, "trace", *args, *common, *out],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        for out in (["-o", "json"], [])
    ]
    assert runs[0].returncode == runs[1].returncode, runs
    assert runs[0].stderr == "", runs[0].stderr
    print(f"\n$ routed-nv trace {' '.join(args)}\n{runs[1].stdout}")
    return runs[0].returncode, json.loads(runs[0].stdout), runs[1].stdout


def repair(agent: LabAgent) -> None:
    """`routed-nv apply`: what the agent's next resync would do, now."""
    where = ["-c", str(agent.config_path), "--netns", agent.namespace]
    done = subprocess.run(
        [*ROUTED_NV, "apply", *where, "--run-dir", str(agent.run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done


def outbound_spi(agent: LabAgent, peer: str, tenant: int) -> str:
    where = ["-c", str(agent.config_path), "--netns", agent.namespace]
    done = subprocess.run(
        [*ROUTED_NV, "sa", "list", *where, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = [r for r in json.loads(done.stdout) if (r["peer"], r["tenant"]) == (peer, tenant)]
    assert len(rows) == 1, done.stdout
    return str(rows[0]["spi_out"])


def test_a_packet_to_blue2_is_sent_to_host2_over_the_spi_sa_list_shows(env: Env) -> None:
    host1 = env.agents["host1"]
    code, answer, text = trace(host1, "blue", "10.0.0.1", "10.0.0.2", "--proto", "tcp")
    spi = outbound_spi(host1, "host2", 100)
    assert (code, answer["verdict"], answer["host"], answer["spi"]) == (0, "sent", "host2", spi)
    assert f"verdict: sent: sent to host host2 over SPI {spi}" in text
    assert answer["view"] == "from the running agent, static"
    steps = {s["step"]: s["detail"] for s in answer["steps"]}
    assert f"via {HOST2_BLUE} dev rnv-t100" in steps["route"]
    assert "announced by host host2" in steps["directory"]
    assert "tenant 100, sender host id 1" in steps["sa"]
    # and the packet really goes that way
    assert " 0% packet loss" in sh(env.lab, ns("blue1"), "ping -c 2 -i 0.2 -W 2 10.0.0.2")
    code6, answer6, _ = trace(host1, "blue", "fd10::1", "fd10::2")
    assert (code6, answer6["host"], answer6["spi"]) == (0, "host2", spi)


def test_an_address_of_red_is_dropped_at_the_tenant_boundary(env: Env) -> None:
    code, answer, _ = trace(env.agents["host1"], "blue", "10.0.0.1", RED_ONLY)
    assert (code, answer["verdict"]) == (1, "dropped")
    assert answer["reason"].startswith(f"{RED_ONLY} is tenant red's, not blue's: VRF rnv-v100")
    assert "tenant boundary" in answer["reason"]
    # and red itself routes it to host2
    code, answer, _ = trace(env.agents["host1"], "red", "10.0.0.1", RED_ONLY)
    assert (code, answer["host"]) == (0, "host2")


def dropped_after(env: Env, damage: str) -> dict[str, Any]:
    """Trace blue1 -> blue2 on host1 after `damage` (a shell command in host1's namespace),
    then repair host1 and check the packet passes again; returns the dropped trace."""
    host1 = env.agents["host1"]
    sh(env.lab, ns("host1"), damage)
    try:
        code, answer, _ = trace(host1, "blue", "10.0.0.1", "10.0.0.2")
    finally:
        repair(host1)
    assert (code, answer["verdict"]) == (1, "dropped")
    assert trace(host1, "blue", "10.0.0.1", "10.0.0.2")[0] == 0
    return answer


def test_a_route_deleted_by_hand_is_the_first_reason(env: Env) -> None:
    answer = dropped_after(env, "ip route del 10.0.0.2/32 vrf rnv-v100")
    assert answer["reason"].startswith(
        "no route to 10.0.0.2 in VRF rnv-v100 although the directory has it (host host2)"
    )
    assert answer["steps"][-1]["step"] == "route"


def test_an_outbound_sa_deleted_by_hand_is_the_first_reason(env: Env) -> None:
    spi = outbound_spi(env.agents["host1"], "host2", 100)
    delete = f"ip xfrm state delete src {HOST1_BLUE} dst {HOST2_BLUE} proto esp spi {spi}"
    answer = dropped_after(env, delete)
    assert answer["reason"].startswith(
        f"no SA for the policy: src {HOST1_BLUE} dst {HOST2_BLUE} reqid 65636"
    )
    assert answer["steps"][-2]["step"] == "xfrm-policy"


def test_a_source_that_is_not_the_tenants_is_dropped_first(env: Env) -> None:
    code, answer, _ = trace(env.agents["host1"], "blue", "10.0.0.3", "10.0.0.2")
    assert (code, answer["steps"][0]["step"]) == (1, "source")
    assert answer["reason"].startswith("no endpoint for SRC 10.0.0.3 on host host1")


def test_the_host_itself_only_for_an_echo_request_to_the_gateway(env: Env) -> None:
    host1 = env.agents["host1"]
    code, answer, _ = trace(host1, "blue", "10.0.0.1", "169.254.0.1")
    assert (code, answer["verdict"]) == (0, "delivered"), answer
    code, answer, _ = trace(host1, "blue", "10.0.0.1", "169.254.0.1", "--proto", "tcp")
    assert (code, answer["steps"][-1]["step"]) == (1, "to-host"), answer
