"""ESP between two hosts on a real kernel: two netns joined by a veth, one tenant with an NBMA-less
(point-to-point) ip6tnl on each side, XFRM programmed by the driver from the desired state."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv6Network
from pathlib import Path

import pytest

from routed_nv.calc.xfrm import desired_xfrm
from routed_nv.config.model import Config
from routed_nv.config.views import static_view
from routed_nv.esp import keys
from routed_nv.esp.driver import XfrmDriver
from routed_nv.esp.seqstore import ReservationStore
from routed_nv.esp.xfrm import IprouteXfrm
from routed_nv.model import spi
from routed_nv.model.directory import tenant_outer_address

pytestmark = pytest.mark.kernel

TENANT = 100
PREFIX = {1: "2001:db8:0:1::", 2: "2001:db8:0:2::"}
OUTER = {h: str(tenant_outer_address(IPv6Network(f"{PREFIX[h]}/64"), TENANT)) for h in PREFIX}
INNER = {1: "10.9.0.1", 2: "10.9.0.2"}
GRACE_S = 1
RESYNC_S = 30.0


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check)


def ns_sh(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *args, check=check)


def config(me: int, secrets_dir: Path) -> Config:
    peer = 3 - me
    return Config.model_validate(
        {
            "host": {
                "name": f"host{me}",
                "id": me,
                "underlay_prefix": f"{PREFIX[me]}/64",
                "underlay_aggregate": "2001:db8::/48",
                "uplink": "veth0",
            },
            "keying": {"mode": "static", "secrets_dir": str(secrets_dir), "rotation_grace_s": 1},
            "tenants": {"blue": {"id": TENANT, "ipv4": ["10.9.0.0/24"]}},
            "peers": {f"host{peer}": {"id": peer, "underlay_prefix": f"{PREFIX[peer]}/64"}},
            "remote_endpoints": {
                "far": {"tenant": "blue", "addresses": [INNER[peer]], "host": f"host{peer}"}
            },
        }
    )


class Host:
    def __init__(self, me: int, ns: str, secrets_dir: Path) -> None:
        self.me, self.ns = me, ns
        self.config = config(me, secrets_dir)
        self.store = ReservationStore(secrets_dir.parent / f"state{me}")
        self.driver = XfrmDriver(
            IprouteXfrm(ns),
            self.config.host.underlay_prefix,
            self.config.keying.rotation_grace_s,
            self.store,
            RESYNC_S,
        )

    def desired(self):
        loaded = keys.load_all(self.config.keying.secrets_dir, self.config.tenants)
        return desired_xfrm(self.config, static_view(self.config), loaded)

    def apply(self):
        start = time.perf_counter()
        result = self.driver.reconcile(self.desired())
        APPLY_TIMES.append(time.perf_counter() - start)
        assert result.ok, result.errors
        return result

    def spis(self) -> set[int]:
        out = sh("ip", "-n", self.ns, "xfrm", "state").stdout
        return {int(s, 16) for s in re.findall(r"spi (0x[0-9a-f]+)", out)}

    def xfrm_in_errors(self) -> int:
        stat = ns_sh(self.ns, "cat", "/proc/net/xfrm_stat").stdout
        fields = dict(line.split() for line in stat.splitlines())
        return sum(int(fields[k]) for k in ("XfrmInTmplMismatch", "XfrmInNoPols", "XfrmInPolBlock"))


APPLY_TIMES: list[float] = []


def write_keys(secrets_dir: Path, generations: dict[int, str], active: int) -> None:
    path = keys.key_file(secrets_dir, "blue")
    lines = [f"{g} {s}{' active' if g == active else ''}" for g, s in generations.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[Host, Host]]:
    tag = f"rnvt-{os.getpid()}"
    ns = {1: f"{tag}-h1", 2: f"{tag}-h2"}
    created = []
    try:
        for h in (1, 2):
            sh("ip", "netns", "add", ns[h])
            created.append(ns[h])
        sh("ip", "link", "add", "veth0", "netns", ns[1], "type", "veth", "peer", "veth0",
           "netns", ns[2])  # fmt: skip
        for h in (1, 2):
            peer = 3 - h
            for cmd in (
                "link set lo up",
                "link set veth0 up",
                f"addr add 2001:db8:ff::{h}/64 dev veth0 nodad",
                f"route add {PREFIX[peer]}/64 via 2001:db8:ff::{peer}",
                "link add rnv0 type dummy",
                "link set rnv0 up",
                f"addr add {OUTER[h]}/128 dev rnv0 nodad",
                f"link add tnl100 type ip6tnl mode any local {OUTER[h]} remote {OUTER[peer]} "
                "encaplimit none hoplimit 64",
                "link set tnl100 mtu 1426 up",
                f"addr add {INNER[h]}/24 dev tnl100",
            ):
                sh("ip", "-n", ns[h], *cmd.split())
        wait_for_underlay(ns[1], "2001:db8:ff::2")
        secrets_dir = tmp_path / "keys"
        secrets_dir.mkdir(mode=0o700)
        write_keys(secrets_dir, {0: secrets.token_hex(32)}, active=0)
        yield Host(1, ns[1], secrets_dir), Host(2, ns[2], secrets_dir)
    finally:
        for name in created:
            sh("ip", "netns", "del", name, check=False)


def wait_for_underlay(ns: str, address: str) -> None:
    # A fresh veth needs a moment (carrier, neighbour discovery) before packets pass.
    for _ in range(50):
        if ns_sh(ns, "ping", "-6", "-c", "1", "-W", "1", address, check=False).returncode == 0:
            return
        time.sleep(0.1)
    pytest.fail(f"underlay {address} not reachable from {ns}")


def ping(h: Host, count: int = 3, interval: str = "0.2") -> subprocess.CompletedProcess[str]:
    return ns_sh(h.ns, "ping", "-n", "-q", "-c", str(count), "-i", interval, "-W", "1",
                 INNER[3 - h.me], check=False)  # fmt: skip


def lost(ping_output: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", ping_output)
    assert m, ping_output
    return int(m[1]), int(m[1]) - int(m[2])


def test_esp_on_the_wire_and_idempotent(hosts: tuple[Host, Host]) -> None:
    h1, h2 = hosts
    # Someone else's SA must survive our applies.
    sh("ip", "-n", h1.ns, "xfrm", "state", "add", "src", "2001:db8:ff::9", "dst", "2001:db8:ff::1",
       "proto", "esp", "spi", "0x4242", "reqid", "5", "mode", "transport", "aead",
       "rfc4106(gcm(aes))", "0x" + "11" * 20, "128")  # fmt: skip
    first = h1.apply()
    h2.apply()
    assert first.added == 2 and first.updated == 8

    expected = {spi.encode(TENANT, 1, 0), spi.encode(TENANT, 2, 0)}
    assert h1.spis() == expected | {0x4242}
    assert h2.spis() == expected

    # Re-apply, also from a fresh driver (a restarted agent): nothing to do.
    for h in (h1, h2):
        assert not h.driver.plan(h.desired())
        assert h.apply().added == h.apply().updated == h.apply().deleted == 0
        restarted = XfrmDriver(
            IprouteXfrm(h.ns), h.config.host.underlay_prefix, GRACE_S, h.store, RESYNC_S
        )
        assert restarted.plan(h.desired()).lines() == []

    # Unicast only: an MLD report behind a hop-by-hop header is not `icmp6` to tcpdump, and the
    # link's own unsolicited reports can fall into the capture (CI of 22b0832), though they are
    # no traffic between the hosts.
    dump = subprocess.Popen(
        ["ip", "netns", "exec", h2.ns, "tcpdump", "-l", "-n", "-i", "veth0",
         "ip6 and not icmp6 and not ip6 multicast"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    time.sleep(1)
    try:
        sent, missing = lost(ping(h1, count=5).stdout)
    finally:
        time.sleep(0.3)
        dump.terminate()
    lines = [line for line in dump.communicate()[0].splitlines() if line.strip()]
    assert missing == 0
    assert len(lines) >= 2 * sent
    seen = {int(s, 16) for line in lines for s in re.findall(r"ESP\(spi=(0x[0-9a-f]+)", line)}
    assert [line for line in lines if "ESP(spi=" not in line] == []
    assert seen == expected

    # ICMPv6 between the outer addresses is never caught by tenant policies (PMTUD).
    icmp6 = ns_sh(h1.ns, "ping", "-6", "-c", "1", "-W", "2", "-I", OUTER[1], OUTER[2], check=False)
    assert icmp6.returncode == 0, icmp6.stdout


def test_plaintext_tunnel_traffic_is_dropped(hosts: tuple[Host, Host]) -> None:
    h1, h2 = hosts
    h1.apply()
    h2.apply()
    before = h2.xfrm_in_errors()
    # A foreign, higher-priority policy on h1 lets IPv4-in-IPv6 out in plaintext.
    sh("ip", "-n", h1.ns, "xfrm", "policy", "add", "src", f"{OUTER[1]}/128", "dst",
       f"{OUTER[2]}/128", "proto", "4", "dir", "out", "priority", "1")  # fmt: skip
    assert lost(ping(h1, count=3).stdout)[1] == 3
    assert h2.xfrm_in_errors() >= before + 3
    # Not ours: apply leaves it alone.
    assert not h1.driver.plan(h1.desired())


def test_rotation_loses_nothing(hosts: tuple[Host, Host]) -> None:
    h1, h2 = hosts
    secrets_dir = h1.config.keying.secrets_dir
    old, new = secrets.token_hex(32), secrets.token_hex(32)
    write_keys(secrets_dir, {0: old}, active=0)
    h1.apply()
    h2.apply()
    assert lost(ping(h1, count=2).stdout)[1] == 0

    pinger = subprocess.Popen(
        ["ip", "netns", "exec", h1.ns, "ping", "-n", "-q", "-i", "0.01", "-w", "8", INNER[2]],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    time.sleep(0.5)
    write_keys(secrets_dir, {0: old, 1: new}, active=0)  # 1. accept the new generation
    h1.apply()
    h2.apply()
    time.sleep(0.5)
    write_keys(secrets_dir, {0: old, 1: new}, active=1)  # 2. send with it
    h1.apply()
    h2.apply()
    time.sleep(0.5)
    write_keys(secrets_dir, {1: new}, active=1)  # 3. retire the old one, after the grace period
    assert h1.apply().waiting == 1
    assert h2.apply().waiting == 1
    time.sleep(GRACE_S + 0.1)
    assert h1.apply().deleted == 1
    assert h2.apply().deleted == 1
    out = pinger.communicate()[0]
    sent, missing = lost(out)
    print(f"\nrotation: {sent} pings, {missing} lost; apply times ms: "
          f"{', '.join(f'{t * 1000:.0f}' for t in APPLY_TIMES)}")  # fmt: skip
    assert missing == 0
    assert h1.spis() == {spi.encode(TENANT, 1, 1), spi.encode(TENANT, 2, 1)}
    assert lost(ping(h1, count=2).stdout)[1] == 0
