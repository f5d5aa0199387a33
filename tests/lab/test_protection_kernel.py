"""The four protection modes on a real kernel, in one lab: 2 hosts, 4 tenants with the same IPv4
and IPv6 subnets, each in another mode (static keying), one workload per tenant per host. Every
tenant is every other one's twin, so isolation is checked between modes too."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest

from routed_nv.agent.wiring import build_datapath
from routed_nv.config import load_config
from routed_nv.config.model import Config
from routed_nv.config.views import static_view
from routed_nv.doctor import kernel_facts
from routed_nv.esp.xfrm import IprouteXfrm
from routed_nv.kernel_features import protection_support
from routed_nv.lab.checks import (
    ContinuousPing,
    decap_drops,
    echo_counters,
    plaintext_tunnel_pings,
    start_capture,
    tenant_matrix,
    underlay_capture,
)
from routed_nv.lab.datapath import LabDatapath, programmed_lab
from routed_nv.lab.topology import Node, Tenant, Topology, Workload
from routed_nv.model import markers, spi
from routed_nv.model.protection import Protection, suite
from tests.lab.test_datapath_scenario import ns, sh

pytestmark = pytest.mark.kernel

MODES = {
    "gcm": (100, Protection.AES_GCM),
    "chacha": (200, Protection.CHACHA20_POLY1305),
    "integ": (300, Protection.INTEGRITY),
    "null": (400, Protection.NONE),
}
SUBNET4, SUBNET6 = IPv4Network("10.0.0.0/24"), IPv6Network("fd10::/64")
PATTERN = "5ca1ab1e5ca1ab1e"  # a ping payload to look for on the wire


def topology() -> Topology:
    hosts = tuple(
        Node(id=i, name=f"host{i}", prefix=IPv6Network(f"2001:db8:0:{i}::/64")) for i in (1, 2)
    )
    tenants = tuple(Tenant(tid, name, SUBNET4, SUBNET6) for name, (tid, _) in MODES.items())
    workloads = tuple(
        Workload(f"{t.name}{h.id}", t.name, h.name, SUBNET4[h.id], SUBNET6[h.id])
        for t in tenants
        for h in hosts
    )
    return Topology(IPv6Network("2001:db8::/48"), hosts, tenants, workloads)


def with_modes(config: Config, modes: dict[str, dict[str, object]]) -> Config:
    data = config.model_dump(mode="json")
    for name, fields in modes.items():
        data["tenants"][name].update(fields)
    return Config.model_validate(data)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDatapath]:
    modes = {name: {"protection": str(mode)} for name, (_, mode) in MODES.items()}
    workdir = tmp_path_factory.mktemp("lab")
    with programmed_lab(topology(), workdir, lambda _, c: with_modes(c, modes)) as datapath:
        yield datapath


def test_each_mode_is_in_the_kernel_and_a_second_apply_changes_nothing(lab: LabDatapath) -> None:
    states = sh(lab, ns("host1"), "ip xfrm state")
    for name, (tid, mode) in MODES.items():
        transform = f"{'aead' if suite(mode).aead else 'enc'} {suite(mode).algorithm}"
        blocks = [b for b in states.split("src ") if f"reqid {markers.reqid(tid)} " in b]
        assert len(blocks) == 2 and all(transform in b for b in blocks), (name, blocks)
    assert "auth" not in states  # `none` has no ICV, the others are AEADs
    for host in lab.lab.topology.hosts:
        assert not lab.plan(host.name).changed
        config = lab.configs[host.name]
        fresh = build_datapath(config, netns=host.namespace)  # like a restarted agent
        assert not fresh.plan(config, static_view(config)).changed


def test_doctor_and_config_check_find_every_mode_in_this_kernel(lab: LabDatapath) -> None:
    # as root the kernel is asked: a test SA per mode in a scratch netns, which goes again
    support = protection_support(kernel_facts())
    assert support == dict.fromkeys(Protection, (True, "a test SA in a scratch netns was accepted"))
    assert (
        "rnv-probe-" not in subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    )
    for host, path in lab.config_files.items():  # the hosts' files, as on a real host
        assert load_config(path, env={}, check_files=True) == lab.configs[host]


def test_every_mode_reaches_its_own_tenant_only_over_esp(lab: LabDatapath) -> None:
    with underlay_capture(lab.lab) as wire_reports:
        reaches = tenant_matrix(lab.lab)
    (wire,) = wire_reports

    assert len(reaches) == 4 * 2 * 2  # 8 workloads x 1 peer on the other host x 2 families
    # ok: the target saw every probe, none of its 3 twins (same address, other modes) did
    assert [r for r in reaches if not r.ok] == []
    assert wire.leaks == []
    assert wire.esp_spis == {spi.encode(tid, h, 0) for tid, _ in MODES.values() for h in (1, 2)}


TCP_ECHO = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
if sys.argv[2] == "serve":
    s = socket.socket(family)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], 7007)); s.listen(1); s.settimeout(30)
    print("listening", flush=True)
    c, _ = s.accept()
    while data := c.recv(65536):
        c.sendall(data)
else:
    data = bytes(range(256)) * 1024
    c = socket.create_connection((sys.argv[1], 7007), timeout=30)
    c.sendall(data); c.shutdown(socket.SHUT_WR)
    got = b""
    while chunk := c.recv(65536):
        got += chunk
    print("echoed" if got == data else f"got {len(got)} of {len(data)} bytes")
"""


@pytest.mark.parametrize("name", list(MODES))
@pytest.mark.parametrize("family", ["4", "6"])
def test_tcp_carries_256_kib_both_ways_in_every_mode(
    lab: LabDatapath, name: str, family: str
) -> None:
    target = str(SUBNET4[2] if family == "4" else SUBNET6[2])
    server = lab.lab.spawn(
        ns(f"{name}2"), [sys.executable, "-c", TCP_ECHO, target, "serve"], stdout=subprocess.PIPE
    )
    try:
        # python starts slowly in a loaded guest: connect once the server listens
        assert server.stdout is not None and server.stdout.readline() == b"listening\n"
        client = lab.lab.exec(
            ns(f"{name}1"), [sys.executable, "-c", TCP_ECHO, target, "connect"], timeout=60
        )
    finally:
        try:
            server.wait(timeout=10)  # it ends with the connection: at once after an echo
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert client.stdout.strip() == "echoed", client.stdout + client.stderr


def esp_packets(pcap: Path) -> dict[int, list[bytes]]:
    """Each captured ESP packet's bytes from the IPv6 header on, by SPI."""
    text = subprocess.run(
        ["tcpdump", "-nn", "-x", "-r", str(pcap)], capture_output=True, text=True, check=True
    ).stdout
    packets: list[tuple[int, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("\t0x"):
            if packets:
                packets[-1][1].append("".join(line.split(":", 1)[1].split()))
        elif esp := re.search(r"ESP\(spi=0x([0-9a-f]+),", line):
            packets.append((int(esp[1], 16), []))
    by_spi: dict[int, list[bytes]] = {}
    for spi_, hexes in packets:
        by_spi.setdefault(spi_, []).append(bytes.fromhex("".join(hexes)))
    return by_spi


def test_none_and_integrity_show_the_inner_packet_on_the_wire_the_ciphers_do_not(
    lab: LabDatapath,
) -> None:
    with tempfile.TemporaryDirectory() as workdir:
        pcap = Path(workdir) / "esp.pcap"
        argv = ["tcpdump", "-i", "any", "-nn", "--immediate-mode", "-s", "1600", "-U"]
        capture = start_capture(lab.lab, [*argv, "-w", str(pcap), "esp"], Path(workdir))
        try:
            for name in MODES:
                for target in (SUBNET4[2], SUBNET6[2]):
                    out = sh(lab, ns(f"{name}1"), f"ping -c 2 -i 0.2 -W 2 -p {PATTERN} {target}")
                    assert " 0% packet loss" in out, out
        finally:
            time.sleep(0.5)
            capture.send_signal(signal.SIGINT)
            capture.wait(timeout=10)
        seen = esp_packets(pcap)

    needle = bytes.fromhex(PATTERN) * 2
    for name, (tid, mode) in MODES.items():
        sent = seen.get(spi.encode(tid, 1, 0), []) + seen.get(spi.encode(tid, 2, 0), [])
        assert len(sent) >= 8, name  # 2 echoes + 2 replies, v4 and v6, seen at least once
        clear = [needle in p for p in sent]
        if mode in (Protection.NONE, Protection.INTEGRITY):
            assert all(clear), name
            # the inner header follows the ESP header (and GMAC's IV) at once
            at = 40 + 8 + suite(mode).iv_bytes
            assert {p[at] >> 4 for p in sent} == {4, 6}, name
        else:
            assert not any(clear), name


def test_mtu_of_every_mode_passes_and_one_byte_more_gets_packet_too_big(
    lab: LabDatapath,
) -> None:
    results = {}
    for name, (_, mode) in MODES.items():
        mtu = suite(mode).workload_mtu(1500)
        assert lab.configs["host1"].tenant_mtu(name) == mtu
        src = ns(f"{name}1")
        sh(lab, src, "ip link set eth0 mtu 1500")  # a guest ignoring its MTU learns it
        try:
            results[name] = (
                mtu,
                sh(lab, src, f"ping -4 -M do -c 2 -i 0.2 -W 2 -s {mtu - 28} {SUBNET4[2]}"),
                sh(lab, src, f"ping -4 -M do -c 2 -i 0.2 -W 2 -s {mtu - 27} {SUBNET4[2]}"),
                sh(lab, src, f"ping -6 -M do -c 2 -i 0.2 -W 2 -s {mtu - 48} {SUBNET6[2]}"),
                sh(lab, src, f"ping -6 -M do -c 2 -i 0.2 -W 2 -s {mtu - 47} {SUBNET6[2]}"),
            )
        finally:
            sh(lab, src, f"ip link set eth0 mtu {mtu}; ip route flush cache")

    for name, (mtu, fits4, big4, fits6, big6) in results.items():
        assert " 0% packet loss" in fits4 and " 0% packet loss" in fits6, (name, fits4, fits6)
        assert re.search(rf"mtu = {mtu}\b", big4), (name, big4)
        assert re.search(rf"mtu ?= ?{mtu}\b", big6), (name, big6)


def test_plaintext_to_a_none_tenant_is_still_dropped(lab: LabDatapath) -> None:
    host1, host2 = lab.configs["host1"].host, lab.configs["host2"].host
    target = host1.tenant_address(MODES["null"][0])
    before_drops, before_echo = decap_drops(lab.lab, ns("host1")), echo_counters(lab.lab)
    plaintext_tunnel_pings(lab.lab, ns("host2"), host2.address, target)

    assert decap_drops(lab.lab, ns("host1")) - before_drops >= 3
    assert echo_counters(lab.lab)["null1"][0] == before_echo["null1"][0]


FORGE = """
import socket, struct, sys
spi, seq, dst, src = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
icmp = bytes([8, 0, 0, 0, 0, 1, 0, 1]) + b"forged" * 8
inner = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0,
                    socket.inet_aton("10.0.0.2"), socket.inet_aton("10.0.0.1")) + icmp
pad = (-(len(inner) + 2)) % 4
esp = struct.pack("!II", spi, seq) + bytes(8) + inner + bytes(range(1, pad + 1)) + bytes([pad, 4])
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, 50)
s.bind((src, 0))
for _ in range(3):
    s.sendto(esp + bytes(16), (dst, 0))  # a made-up ICV
"""


def test_a_forged_esp_packet_fails_the_integrity_check(lab: LabDatapath) -> None:
    host1, host2 = lab.configs["host1"].host, lab.configs["host2"].host
    tid = MODES["integ"][0]
    key = (host1.tenant_address(tid), spi.encode(tid, 2, 0))
    xfrm = IprouteXfrm(ns("host1"))
    before_errors, before_echo = xfrm.read_counters()[key].errors, echo_counters(lab.lab)
    argv = [sys.executable, "-c", FORGE, str(key[1]), str(10**6), str(key[0])]
    done = lab.lab.exec(ns("host2"), [*argv, str(host2.tenant_address(tid))])
    assert done.returncode == 0, done.stderr
    time.sleep(0.3)

    assert xfrm.read_counters()[key].errors - before_errors == 3
    after = echo_counters(lab.lab)
    assert {w: after[w][0] - before_echo[w][0] for w in after} == dict.fromkeys(after, 0)


def write_keys(lab: LabDatapath, tenant: str, lines: list[str]) -> None:
    (lab.secrets_dir / f"{tenant}.key").write_text("\n".join(lines) + "\n")


def test_a_mode_change_is_make_before_break_under_a_10_ms_ping(lab: LabDatapath) -> None:
    """gcm: aes-gcm -> chacha20-poly1305 in the three steps of a key rotation (docs/keys.md)."""
    hosts = [h.name for h in lab.lab.topology.hosts]
    old = (lab.secrets_dir / "gcm.key").read_text().split()[1]
    new = "42" * 32
    pings = [
        ContinuousPing(lab.lab, ns("gcm1"), str(SUBNET4[2]), interval=0.01),
        ContinuousPing(lab.lab, ns("gcm2"), str(SUBNET6[1]), interval=0.01),
    ]

    def step(keys: list[str], **fields: object) -> None:
        write_keys(lab, "gcm", keys)
        for host in hosts:
            lab.configs[host] = with_modes(lab.configs[host], {"gcm": fields})
        for host in hosts:
            outcome = lab.apply(host)
            assert outcome.ok, [s.errors for s in outcome.stages]

    chacha = str(Protection.CHACHA20_POLY1305)
    # everyone accepts generation 1 in the new mode; generation 0 keeps the old one
    step([f"0 {old} active", f"1 {new}"], protection=chacha, generation_protection={"0": "aes-gcm"})
    step([f"0 {old}", f"1 {new} active"])  # everyone sends generation 1
    step([f"1 {new} active"], generation_protection={})  # generation 0 goes
    time.sleep(lab.configs["host1"].keying.rotation_grace_s + 0.5)
    for host in hosts:
        assert lab.apply(host).ok
    time.sleep(0.5)
    results = [p.stop() for p in pings]

    for sent, lost in results:
        assert sent > 100 and lost == 0, results
    states = sh(
        lab, ns("host1"), f"ip xfrm state | grep -A3 'reqid {markers.reqid(MODES['gcm'][0])} '"
    )
    assert states.count("aead rfc7539esp(chacha20,poly1305)") == 2, states
    assert "rfc4106" not in states
