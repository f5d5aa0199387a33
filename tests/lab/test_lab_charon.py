"""The lab's charons as `lab demo|shell --keying ike` run them, with the real charon, on this
machine's kernel: charon starts without the datapath, so these need no UML guest, only network
namespaces (root). Each host namespace holds nothing but charon here."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv6Network
from pathlib import Path

import pytest

from routed_nv.config.model import KeyingMode
from routed_nv.esp.vici_adapter import ViciSession
from routed_nv.lab.builder import Lab
from routed_nv.lab.charon import LabCharon
from routed_nv.lab.datapath import host_config
from routed_nv.lab.topology import Node, Topology

RESTART_WAIT_S = 20.0


@pytest.fixture
def charons(tmp_path: Path) -> Iterator[LabCharon]:
    # names of our own, so that nothing else's lab namespaces are touched
    hosts = tuple(
        Node(i, f"ck{os.getpid()}h{i}", IPv6Network(f"2001:db8:0:{i}::/64")) for i in (1, 2)
    )
    lab = Lab(Topology(IPv6Network("2001:db8::/48"), hosts, (), ()))
    try:
        for host in hosts:
            subprocess.run(["ip", "netns", "add", host.namespace], check=True)
            lab.namespaces.append(host.namespace)  # the teardown deletes them
        yield LabCharon(lab, tmp_path)
    finally:
        lab.teardown()  # and stops, by pid, whatever a failed test left running


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/exe").exists()  # not a zombie of ours


def test_each_host_gets_ike_keying_with_a_private_psk_file(charons: LabCharon) -> None:
    charons.start_all()
    for host in charons.nodes:
        config = host_config(charons.lab.topology, charons.lab.topology.host(host), Path("/k"))
        ike = charons.with_psk(host, config)
        psk = charons.psk_file(host)
        assert ike.keying.mode is KeyingMode.IKE
        assert (ike.keying.psk_file, ike.keying.vici_socket) == (psk, charons.nodes[host].socket)
        assert psk.parent == charons.workdir / host  # in the lab's run directory
        assert psk.stat().st_mode & 0o777 == 0o600
    first, second = (charons.psk_file(h).read_bytes() for h in charons.nodes)
    assert first == second and len(first) > 32  # one key, every host


def test_a_killed_charon_is_started_again_and_the_teardown_stops_every_one(
    charons: LabCharon,
) -> None:
    charons.start_all()
    node = charons.nodes[next(iter(charons.nodes))]
    old = node.pid
    assert old is not None and node.pid_file.read_text() == f"{old}\n"
    said: list[str] = []
    charons.keep_running(said.append)

    os.kill(old, signal.SIGKILL)  # as an operator in `lab shell` would
    deadline = time.monotonic() + RESTART_WAIT_S
    while not said:  # said once the new charon's VICI socket answers
        assert time.monotonic() < deadline
        time.sleep(0.1)

    new = node.pid
    assert new not in (None, old)
    assert said == [f"{node.host}: charon exited (-9); started again, pid {new}"]
    assert node.pid_file.read_text() == f"{new}\n"
    with ViciSession(node.socket) as vici:  # the new one answers on the same socket
        assert vici.list_sas() == []
    # as docs/ike.md has operators ask it, with the host's strongswan.conf
    stats = subprocess.run(
        ["swanctl", "--stats"],
        env={**os.environ, "STRONGSWAN_CONF": str(node.conf)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert (stats.returncode, stats.stderr) == (0, ""), stats.stderr
    (plugins,) = [x for x in stats.stdout.splitlines() if x.startswith("loaded plugins:")]
    assert {"kdf", "vici"} <= set(plugins.split()), stats.stdout
    pids = {h: n.pid for h, n in charons.nodes.items()}

    assert charons.stop_all() == pids
    assert not any(alive(pid) for pid in pids.values() if pid is not None)
    assert not any(n.directory.exists() for n in charons.nodes.values())
    assert not any(charons.psk_file(h).exists() for h in charons.nodes)
