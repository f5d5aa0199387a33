"""Isolation rules on a real kernel. Host h1 (rules under test) and peer h2 are namespaces joined
by a veth underlay; tenant 100 is a VRF with an NBMA ip6tnl on each, static ESP SAs between the
tenant outer addresses; workloads w1 (on h1) and w2 (on h2) hang off veths in the VRFs. h2 also
has a plain ip6tnl from a second address with no XFRM policy: its traffic reaches h1 in clear.
The routing and XFRM plumbing is hand-made with `ip` (those drivers are tested elsewhere)."""

from __future__ import annotations

import re
import socket
import struct
import subprocess
import time
from collections.abc import Iterator

import pytest

from routed_nv.calc.netfilter import DECAP, desired_rules
from routed_nv.config.model import Config
from routed_nv.model import markers
from routed_nv.model.netfilter import ChainKey, Family
from routed_nv.netfilter.driver import NetfilterDriver
from routed_nv.netfilter.restore import RestoreTables

pytestmark = pytest.mark.kernel

T = 100
NS = {n: f"rnvt-nf-{n}" for n in ("h1", "h2", "w1", "w2")}
PREFIX = {1: "2001:db8:0:1::", 2: "2001:db8:0:2::"}
CLEAR_SRC = "2001:db8:0:2::99"  # h2's address for the plaintext tunnel
KEYS = {1: "0x" + "11" * 20, 2: "0x" + "22" * 20}
SPI = {1: 0x1000, 2: 0x2000}  # SA from host n


def config(me: int, tenants: dict, endpoints: dict) -> Config:
    return Config.model_validate(
        {
            "host": {
                "name": f"h{me}",
                "id": me,
                "underlay_prefix": f"{PREFIX[me]}/64",
                "underlay_aggregate": "2001:db8::/48",
                "uplink": "u",
            },
            "tenants": tenants,
            "endpoints": endpoints,
        }
    )


BLUE = {"blue": {"id": T}}
WEB = {"web": {"tenant": "blue", "addresses": ["10.0.0.1", "fd10::1"], "interface": "wl-1"}}
RED = {"red": {"id": 200}}
DB = {"db": {"tenant": "red", "addresses": ["10.1.0.1", "fd11::1"], "interface": "wl-red"}}
H1 = config(1, BLUE, WEB)
OUTER = {h: str(config(h, BLUE, {}).host.tenant_address(T)) for h in (1, 2)}


def run(*args: str, check: bool = True, ns: str | None = None) -> str:
    cmd = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {proc.stderr or proc.stdout}")
    return proc.stdout


def batch(ns: str, lines: list[str]) -> None:
    proc = subprocess.run(
        ["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n", text=True,
        capture_output=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def host_lines(i: int) -> list[str]:
    other = 3 - i
    vrf, tnl, table = markers.vrf_name(T), markers.tunnel_name(T), markers.vrf_table(T)
    lines = [
        f"link set u{i} up",
        f"route add {PREFIX[other]}/64 via fe80::{other} dev u{i}",
        "link add rnv0 type dummy", "link set rnv0 up",
        f"addr add {PREFIX[i]}1/128 dev rnv0 nodad",
        f"addr add {OUTER[i]}/128 dev rnv0 nodad",
        f"link add {vrf} type vrf table {table}", f"link set {vrf} up",
        f"route add unreachable default metric 4278198272 vrf {vrf}",
        f"route add unreachable ::/0 metric 4278198272 vrf {vrf}",
        f"link add {tnl} type ip6tnl mode any local {OUTER[i]} remote any encaplimit none",
        f"link set {tnl} mtu 1426 master {vrf} up",
        f"link set wl-{i} master {vrf} up",
        f"addr add 169.254.0.1/32 dev wl-{i}", f"addr add fe80::1/64 dev wl-{i} nodad",
        f"route add 10.0.0.{i}/32 dev wl-{i} vrf {vrf}",
        f"route add fd10::{i}/128 dev wl-{i} vrf {vrf}",
        f"route add 10.0.0.{other}/32 vrf {vrf} via inet6 {OUTER[other]} dev {tnl} onlink",
        f"route add fd10::{other}/128 vrf {vrf} via {OUTER[other]} dev {tnl} onlink",
    ]  # fmt: skip
    for proto in (4, 41):
        lines += [
            f"xfrm policy add src {OUTER[i]}/128 dst 2001:db8::/48 proto {proto} dir out"
            f" tmpl proto esp reqid {markers.reqid(T)} mode transport",
            f"xfrm policy add src ::/0 dst {OUTER[i]}/128 proto {proto} dir in"
            f" tmpl proto esp reqid {markers.reqid(T)} mode transport",
        ]
    for src, dst in ((1, 2), (2, 1)):
        lines.append(
            f"xfrm state add src {OUTER[src]} dst {OUTER[dst]} proto esp spi {SPI[src]}"
            f" reqid {markers.reqid(T)} mode transport replay-window 64"
            f" aead rfc4106(gcm(aes)) {KEYS[src]} 128"
        )
    return lines


def workload_lines(i: int) -> list[str]:
    return [
        "link set eth0 up", f"addr add 10.0.0.{i}/32 dev eth0", "addr add 10.9.9.9/32 dev eth0",
        "route add 169.254.0.1 dev eth0 scope link", "route add default via 169.254.0.1",
        f"addr add fd10::{i}/128 dev eth0 nodad", "addr add fd10::99/128 dev eth0 nodad",
        "route add ::/0 via fe80::1 dev eth0",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    try:
        for ns in NS.values():
            run("ip", "netns", "add", ns)
            batch(ns, ["link set lo up"])
        run("ip", "link", "add", "u1", "netns", NS["h1"], "type", "veth", "peer", "u2",
            "netns", NS["h2"])  # fmt: skip
        for i in (1, 2):
            h = NS[f"h{i}"]
            run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", "net.ipv4.ip_forward=1", ns=h)
            run("ip", "link", "add", f"wl-{i}", "netns", h, "type", "veth", "peer", "eth0",
                "netns", NS[f"w{i}"])  # fmt: skip
            batch(h, [f"addr add fe80::{i}/64 dev u{i} nodad", *host_lines(i)])
            batch(NS[f"w{i}"], workload_lines(i))
        # h2's plaintext path to h1's tenant address: no XFRM policy matches its source
        batch(NS["h2"], [
            f"addr add {CLEAR_SRC}/128 dev rnv0 nodad",
            f"link add clear type ip6tnl mode any local {CLEAR_SRC} remote {OUTER[1]}",
            "link set clear up", "addr add 10.7.0.2/32 dev clear",
        ])  # fmt: skip
        yield
    finally:
        for ns in NS.values():
            run("ip", "netns", "del", ns, check=False)


@pytest.fixture
def driver(lab: None) -> NetfilterDriver:
    driver = NetfilterDriver(RestoreTables(NS["h1"]))
    result = driver.reconcile(desired_rules(H1))
    assert result.ok, result.errors
    return driver


def counter(driver: NetfilterDriver, family: Family, chain: str, index: int) -> int:
    (table,) = [t for t in driver.read(desired_rules(H1)) if t.family == family]
    return table.counters[chain][index][0]


def ping(ns: str, dst: str, src: str | None = None, count: int = 3) -> bool:
    args = ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "1", *(["-I", src] if src else [])]
    return (
        subprocess.run(["ip", "netns", "exec", ns, *args, dst], capture_output=True).returncode == 0
    )


@pytest.mark.parametrize(
    ("family", "gateway", "own", "spoofed"),
    [
        (Family.IPV4, "169.254.0.1", "10.0.0.1", "10.9.9.9"),
        (Family.IPV6, "fe80::1%eth0", "fd10::1", "fd10::99"),
    ],
)
def test_workload_cannot_spoof_its_source(driver, family, gateway, own, spoofed) -> None:
    chain = "RNV-SRC-wl-1"
    drop = len(desired_rules(H1).chains[ChainKey(family, "raw", chain)]) - 1  # the final DROP
    dropped = counter(driver, family, chain, drop)
    allowed = counter(driver, family, chain, 1)  # 0 is the jump to RNV-HOST
    assert ping(NS["w1"], gateway, src=own)  # its own address (and ND, for IPv6) passes
    assert counter(driver, family, chain, 1) >= allowed + 3
    assert not ping(NS["w1"], gateway, src=spoofed)
    assert counter(driver, family, chain, drop) >= dropped + 3


def test_esp_between_workloads_passes_and_is_bound_to_the_tenant(driver) -> None:
    accepted = counter(driver, Family.IPV6, DECAP, 0)
    assert ping(NS["w1"], "10.0.0.2") and ping(NS["w1"], "fd10::2")
    assert counter(driver, Family.IPV6, DECAP, 0) >= accepted + 6  # replies, reqid of tenant 100


def test_plaintext_ip_in_ipv6_to_a_tenant_address_is_dropped(driver) -> None:
    plaintext = counter(driver, Family.IPV6, DECAP, 1)
    xfrm_before = xfrm_stat()
    run("ip", "route", "replace", "10.0.0.1/32", "dev", "clear", ns=NS["h2"])
    assert not ping(NS["h2"], "10.0.0.1", src="10.7.0.2")
    assert counter(driver, Family.IPV6, DECAP, 1) >= plaintext + 3
    # dropped in raw PREROUTING: the XFRM input policy check behind it never saw the packets
    assert xfrm_stat() == xfrm_before


def xfrm_stat() -> dict[str, int]:
    out = run("cat", "/proc/net/xfrm_stat", ns=NS["h1"])
    return {name: int(value) for name, value in (line.split() for line in out.splitlines())}


def test_icmpv6_packet_too_big_still_reaches_the_host(driver) -> None:
    """A PTB about h1's ESP packets to h2 lowers h1's path MTU: PMTUD through the rules works."""
    inner = struct.pack("!IHBB16s16s", 6 << 28, 1400, 50, 64,
                        socket.inet_pton(socket.AF_INET6, OUTER[1]),
                        socket.inet_pton(socket.AF_INET6, OUTER[2]))  # fmt: skip
    inner += struct.pack("!II", SPI[1], 1) + bytes(64)
    ptb = struct.pack("!BBHI", 2, 0, 0, 1280) + inner
    code = (
        "import socket,sys; s=socket.socket(socket.AF_INET6,socket.SOCK_RAW,socket.IPPROTO_ICMPV6);"
        f"s.bind(('{PREFIX[2]}1',0)); s.sendto(bytes.fromhex('{ptb.hex()}'),('{OUTER[1]}',0))"
    )
    run("python3", "-c", code, ns=NS["h2"])
    time.sleep(0.2)
    route = run("ip", "-6", "route", "get", OUTER[2], "from", OUTER[1], ns=NS["h1"])
    assert re.search(r"\bmtu 1280\b", route), route


def test_reapply_changes_nothing_and_keeps_counters(driver) -> None:
    desired = desired_rules(H1)
    assert ping(NS["w1"], "169.254.0.1", src="10.0.0.1", count=1)
    before = saved_raw_table()
    assert not driver.plan(desired), driver.plan(desired).lines()
    result = driver.reconcile(desired)
    assert (result.chains_set, result.chains_deleted, result.hooks_fixed) == (0, 0, 0)
    assert saved_raw_table() == before


def saved_raw_table() -> list[str]:
    """host1's raw table with counters, without iptables-save's timestamped comment lines (a
    second boundary between two saves is not a change)."""
    saved = run("iptables-legacy-save", "-c", "-t", "raw", ns=NS["h1"])
    return [line for line in saved.splitlines() if not line.startswith("#")]


def test_removing_a_tenant_removes_exactly_its_rules(driver) -> None:
    both = config(1, {**BLUE, **RED}, {**WEB, **DB})
    assert driver.reconcile(desired_rules(both)).ok
    with_red = {f: rules(f) for f in ("iptables", "ip6tables")}
    second_agent = NetfilterDriver(RestoreTables(NS["h1"]))  # a restarted agent, no memory
    assert second_agent.reconcile(desired_rules(H1)).ok
    for f, lines in with_red.items():
        gone = lines - rules(f)
        assert gone and all("wl-red" in line or "reqid 65736" in line for line in gone), gone
        assert rules(f) <= lines
    assert not second_agent.plan(desired_rules(H1))


def rules(cmd: str) -> set[str]:
    out = run(f"{cmd}-legacy-save", "-t", "raw", ns=NS["h1"])
    return {line for line in out.splitlines() if line.startswith(("-A", ":RNV"))}


def test_a_rule_we_did_not_write_reads_as_none_and_its_chain_is_rewritten(driver) -> None:
    """Someone lets a spoofed source through in our chain: the next apply puts the chain back."""
    run("iptables-legacy", "-t", "raw", "-I", "RNV-SRC-wl-1", "1", "-s", "10.9.9.9", "-j",
        "RETURN", ns=NS["h1"])  # fmt: skip
    ping(NS["w1"], "169.254.0.1", src="10.9.9.9", count=1)
    (table,) = [t for t in driver.read(desired_rules(H1)) if t.family == Family.IPV4]
    assert table.chains["RNV-SRC-wl-1"][0] is None
    assert table.counters["RNV-SRC-wl-1"][0][0] >= 1  # the hole is real: it let the packet by
    result = driver.reconcile(desired_rules(H1))
    assert (result.chains_set, result.ok) == (1, True), result.errors
    assert not driver.plan(desired_rules(H1))
    drop = len(desired_rules(H1).chains[ChainKey(Family.IPV4, "raw", "RNV-SRC-wl-1")]) - 1
    dropped = counter(driver, Family.IPV4, "RNV-SRC-wl-1", drop)
    ping(NS["w1"], "169.254.0.1", src="10.9.9.9", count=1)
    assert counter(driver, Family.IPV4, "RNV-SRC-wl-1", drop) >= dropped + 1
