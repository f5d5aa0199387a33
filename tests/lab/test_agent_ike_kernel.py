"""`routed-nv agent` in IKE keying mode on a real kernel: one agent process and one charon per
lab host namespace, all agents started at the same moment (as after a power cut), each agent
keying with a pre-shared key through its own charon. Measures agent start -> all of a host's
CHILD_SAs up, as `routed-nv sa list` shows them, and checks them in the kernel, on the wire and
in the agent's status and metrics, and that charon rekeys on the [keying] timers configured."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_ike_kernel import (
    CHILDREN_PER_HOST,
    HOSTS,
    IkeLab,
    assert_child_sas_carry_the_tenant_reqids,
    assert_tenant_traffic_is_esp_with_the_reported_spis,
    copy_logs,
    wait_for,
)

from routed_nv.config.model import Config
from routed_nv.lab.agents import LabAgents, sa_list
from routed_nv.lab.builder import Lab
from routed_nv.lab.charon import LabCharon, write_secret
from routed_nv.lab.datapath import LabDatapath
from routed_nv.lab.topology import default_topology

pytestmark = pytest.mark.kernel

RESYNC_S = 4
AGENT_ARGS = ("--resync-interval", str(RESYNC_S))
SAS_PER_HOST = 2 * CHILDREN_PER_HOST  # in + out
TIMERS = {"ike_rekey_s": 7200, "child_rekey_s": 1800, "dpd_delay_s": 20}  # not the defaults


@dataclass
class Env:
    ike: IkeLab
    lab: LabDatapath
    agents: LabAgents
    started: dict[str, float]  # time.monotonic() of each agent's start


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("agents-ike")
    with Lab(default_topology()) as built:
        charons = LabCharon(built, workdir)
        charons.start_all()

        def ike_mode(host: str, config: Config) -> Config:
            psk = workdir / host / "psk"
            write_secret(psk, b"lab agents' pre-shared key " + b"z" * 32 + b"\n")
            data = config.model_dump(mode="json")
            data["keying"] = {**charons.keying(host, {"psk_file": str(psk)}), **TIMERS}
            return Config.model_validate(data)

        lab = LabDatapath(built, workdir, adapt=ike_mode)
        lab.configure_workloads()
        agents = LabAgents(lab, workdir)
        ike = IkeLab(built, charons, lab.configs, lab.datapaths, workdir)
        started = {host: agents[host].spawn(*AGENT_ARGS) for host in HOSTS}
        try:
            yield Env(ike, lab, agents, started)
        finally:
            agents.stop_all()
            logs = Path(".rnv-lab") / "agent-ike-kernel"
            copy_logs(charons, logs)
            for host in HOSTS:
                (logs / f"{host}-agent.log").write_text(agents[host].log())


def duplicates(env: Env) -> dict[str, list[str]]:
    """IKE_SAs beyond one per peer (both ends initiated at once) and CHILD_SAs beyond one per
    peer and tenant (both ends initiated a missing one at once); the agents resolve both."""
    found = {}
    for host in HOSTS:
        with env.ike.vici(host) as vici:
            names = [name for name, _ in vici.list_sas()]
        children = [r.child for r in env.ike.up_rows(host)]
        found[host] = sorted({n for n in [*names, *children] if [*names, *children].count(n) > 1})
    return found


def test_agents_bring_all_child_sas_up(env: Env) -> None:
    # READY=1 first, without polling charon meanwhile: the poll would take the guest's CPU from
    # the starting agents
    for host in HOSTS:
        assert env.agents[host].until("READY")["READY"] == "1"  # sent after an apply without errors
    ready_s = {h: env.agents[h].first_seen["READY"] - env.started[h] for h in HOSTS}
    up_s: dict[str, float] = {}
    deadline = time.monotonic() + 120
    while len(up_s) < len(HOSTS):
        for host in HOSTS:
            pairs = {(r.peer, r.tenant) for r in env.ike.up_rows(host)}  # list-sas, as sa list
            if host not in up_s and len(pairs) == CHILDREN_PER_HOST:
                up_s[host] = time.monotonic() - env.started[host]
        assert time.monotonic() < deadline, (up_s, {h: env.agents[h].log() for h in HOSTS})
        time.sleep(0.2)
    first = min(env.started.values())
    overall = max(env.started[h] + up_s[h] for h in HOSTS) - first
    print(
        f"\nagent start -> READY=1 (first apply done, connections loaded): {_fmt(ready_s)}\n"
        f"agent start -> all {CHILDREN_PER_HOST} CHILD_SAs of the host up (list-sas polled "
        f"every ~0.2 s from READY on): {_fmt(up_s)}; "
        f"first agent start -> all {len(HOSTS) * CHILDREN_PER_HOST} up: {overall:.2f} s"
    )
    # both ends initiated at once: until the agents resolve the duplicates, a tenant has two
    # CHILD_SAs per peer and charon's policy names only one of them
    resolved = wait_for(lambda: not any(duplicates(env).values()) and env.ike.all_up(), 60, idle)
    print(f"... duplicate IKE_SAs resolved by the agents {resolved:.2f} s later")
    for host in HOSTS:  # where the time went: each apply's duration, changes and errors
        lines = [x[:160] for x in env.agents[host].log().splitlines() if x.startswith("agent.")]
        print(f"{host}:\n  " + "\n  ".join(lines[:12]))
    for host in HOSTS:
        rows = sa_list(env.lab.config_files[host])  # as an operator runs it on the host
        assert {r["tenant"] for r in rows} == {100, 200}  # the tenant from the CHILD_SA's reqid
        assert {r["peer"] for r in rows} == set(HOSTS) - {host}
    assert_child_sas_carry_the_tenant_reqids(env.ike)


def test_charon_rekeys_on_the_configured_timers(env: Env) -> None:
    # charon rekeys up to 10 % before the configured time (jitter), never after it; the margin
    # is the time since the SAs came up
    ike_s, child_s, margin = TIMERS["ike_rekey_s"], TIMERS["child_rekey_s"], 600
    for host in HOSTS:
        with env.ike.vici(host) as vici:
            sas = vici.list_sas()
        ike_rekeys = [int(sa["rekey-time"]) for _, sa in sas]
        child_rekeys = [r.rekey_in_s for r in env.ike.up_rows(host)]
        print(f"\n{host}: IKE_SAs rekey in {ike_rekeys} s, CHILD_SAs in {child_rekeys} s")
        assert ike_rekeys and all(0.9 * ike_s - margin < t <= ike_s for t in ike_rekeys)
        assert child_rekeys and all(
            t is not None and 0.9 * child_s - margin < t <= child_s for t in child_rekeys
        )


def test_same_tenant_traffic_flows_as_esp_with_the_reported_spis(env: Env) -> None:
    assert_tenant_traffic_is_esp_with_the_reported_spis(env.ike)


def test_status_and_metrics_show_the_sas(env: Env) -> None:
    def status_sas() -> list[object]:
        return [env.agents[h].status()["datapath"]["sas"] for h in HOSTS]

    # counted from the kernel after each apply: charon's SAs appear at the next resync
    wait_for(lambda: status_sas() == [SAS_PER_HOST] * len(HOSTS), 4 * RESYNC_S, idle)
    for host in HOSTS:
        agent = env.agents[host]
        assert agent.status()["agent"]["state"] == "ready", (host, agent.log())
        brief = agent.status_command("--brief").stdout
        assert f"{SAS_PER_HOST} SAs" in brief, brief
        scrape = (
            "import urllib.request as u; "
            "print(u.urlopen('http://127.0.0.1:9573/metrics').read().decode())"
        )
        metrics = env.lab.lab.exec(agent.namespace, [sys.executable, "-c", scrape]).stdout
        assert f"routed_nv_sas {SAS_PER_HOST}.0" in metrics, metrics
        print(f"{host}: {brief.strip()}")


def idle() -> None:
    """The agents reconcile by themselves: nothing to do between checks."""


def _fmt(seconds: dict[str, float]) -> str:
    return ", ".join(f"{h} {s:.2f} s" for h, s in seconds.items())
