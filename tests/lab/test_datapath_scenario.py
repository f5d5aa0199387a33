"""The datapath scenario on a real kernel: 3 hosts, 2 tenants whose IPv4 and IPv6 spaces overlap
(blue and red both use 10.0.0.0/24 and fd10::/64), one workload per tenant per host, every host
programmed by routed_nv's own Datapath from its own config (static keying)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from routed_nv.agent.wiring import build_datapath
from routed_nv.config.model import Config
from routed_nv.config.views import static_view
from routed_nv.lab.checks import (
    ContinuousPing,
    decap_drops,
    echo_counters,
    plaintext_tunnel_pings,
    tenant_matrix,
    underlay_capture,
)
from routed_nv.lab.datapath import LabDatapath, programmed_lab
from routed_nv.lab.topology import default_topology
from routed_nv.model import markers, spi

pytestmark = pytest.mark.kernel

BLUE, RED = 100, 200


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDatapath]:
    with programmed_lab(default_topology(), tmp_path_factory.mktemp("lab")) as datapath:
        yield datapath


def sh(lab: LabDatapath, namespace: str, command: str) -> str:
    done = lab.lab.exec(namespace, ["sh", "-c", command], timeout=60)
    return done.stdout + done.stderr


def ns(name: str) -> str:
    return f"rnv-lab-{name}"


def test_a_second_apply_and_a_restarted_agent_change_nothing(lab: LabDatapath) -> None:
    for host in lab.lab.topology.hosts:
        assert not lab.plan(host.name).changed
        config = lab.configs[host.name]
        fresh = build_datapath(config, netns=host.namespace)  # no memory, like a restarted agent
        outcome = fresh.plan(config, static_view(config))
        assert outcome.ok and not outcome.changed, [s.lines for s in outcome.stages]


def test_full_tenant_matrix_over_esp_only(lab: LabDatapath) -> None:
    with underlay_capture(lab.lab) as wire_reports:
        reaches = tenant_matrix(lab.lab)
    (wire,) = wire_reports

    # 6 workloads x 2 same-tenant peers on other hosts x 2 families
    assert len(reaches) == 24
    assert [r for r in reaches if not r.ok] == []
    assert wire.leaks == []
    assert wire.esp_packets >= 24 * 2 * 2  # every echo and reply, seen on two router links
    # the SPI names tenant and sender: exactly one per (tenant, sending host) in use
    predicted = {spi.encode(t, h.id, 0) for t in (BLUE, RED) for h in lab.lab.topology.hosts}
    assert wire.esp_spis == predicted


def test_plaintext_ip_in_ipv6_from_the_underlay_is_dropped(lab: LabDatapath) -> None:
    host1, host2 = lab.configs["host1"].host, lab.configs["host2"].host
    target = host1.tenant_address(BLUE)
    before_drops, before_echo = (
        decap_drops(lab.lab, ns("host1")),
        echo_counters(lab.lab)["blue1"][0],
    )
    # host2 sends IPv4-in-IPv6 straight to host1's blue tenant address, outside any SA
    plaintext_tunnel_pings(lab.lab, ns("host2"), host2.address, target)

    assert decap_drops(lab.lab, ns("host1")) - before_drops >= 3
    assert echo_counters(lab.lab)["blue1"][0] == before_echo


def src_drops(lab: LabDatapath, host: str, ifname: str, family: str) -> int:
    tool = "ip6tables-legacy" if family == "6" else "iptables-legacy"
    out = sh(lab, ns(host), f"{tool} -t raw -L RNV-SRC-{ifname} -v -x -n")
    return int(next(x for x in out.splitlines() if " DROP " in x).split()[0])


@pytest.mark.parametrize(
    ("family", "spoofed", "target"), [("4", "10.0.0.99", "10.0.0.2"), ("6", "fd10::99", "fd10::2")]
)
def test_spoofed_workload_sources_are_dropped(
    lab: LabDatapath, family: str, spoofed: str, target: str
) -> None:
    index = 0 if family == "4" else 1
    before = src_drops(lab, "host1", "wl-blue1", family)
    before_echo = echo_counters(lab.lab)["blue2"][index]
    nodad = " nodad" if family == "6" else ""
    sh(lab, ns("blue1"), f"ip addr add {spoofed}/{32 if family == '4' else 128} dev eth0{nodad}")
    try:
        out = sh(lab, ns("blue1"), f"ping -{family} -c 3 -i 0.2 -W 1 -I {spoofed} {target}")
    finally:
        sh(lab, ns("blue1"), f"ip addr del {spoofed}/{32 if family == '4' else 128} dev eth0")

    assert " 0 received" in out
    assert src_drops(lab, "host1", "wl-blue1", family) - before >= 3
    assert echo_counters(lab.lab)["blue2"][index] == before_echo


def test_tenant_mtu_1426_passes_and_1427_gets_packet_too_big(lab: LabDatapath) -> None:
    # A guest that ignores the tenant MTU (1500 on its eth0) learns it from the host.
    sh(lab, ns("blue1"), "ip link set eth0 mtu 1500")
    try:
        fits4 = sh(lab, ns("blue1"), "ping -4 -M do -c 2 -i 0.2 -W 2 -s 1398 10.0.0.2")
        big4 = sh(lab, ns("blue1"), "ping -4 -M do -c 2 -i 0.2 -W 2 -s 1399 10.0.0.2")
        fits6 = sh(lab, ns("blue1"), "ping -6 -M do -c 2 -i 0.2 -W 2 -s 1378 fd10::2")
        big6 = sh(lab, ns("blue1"), "ping -6 -M do -c 2 -i 0.2 -W 2 -s 1379 fd10::2")
    finally:
        sh(lab, ns("blue1"), "ip link set eth0 mtu 1426; ip route flush cache")

    assert " 0% packet loss" in fits4 and " 0% packet loss" in fits6
    assert re.search(r"Frag needed and DF set \(mtu = 1426\)|mtu = 1426", big4), big4
    assert re.search(r"[Pp]acket too big.*mtu ?= ?1426|mtu=1426", big6), big6


class Ping(ContinuousPing):
    """A continuous ping every 10 ms; stop() returns (sent, lost)."""

    def __init__(self, lab: LabDatapath, source: str, target: str) -> None:
        super().__init__(lab.lab, ns(source), target, interval=0.01)


def write_keys(lab: LabDatapath, tenant: str, lines: list[str]) -> None:
    (lab.secrets_dir / f"{tenant}.key").write_text("\n".join(lines) + "\n")


def test_key_rotation_and_reapply_under_continuous_ping_lose_nothing(lab: LabDatapath) -> None:
    hosts = [h.name for h in lab.lab.topology.hosts]
    old = {t: (lab.secrets_dir / f"{t}.key").read_text().split()[1] for t in ("blue", "red")}
    new = {t: f"{i + 1:02x}" * 32 for i, t in enumerate(("blue", "red"))}
    pings = [Ping(lab, "blue1", "10.0.0.2"), Ping(lab, "red3", "fd10::1")]

    def everywhere() -> None:
        for host in hosts:
            outcome = lab.apply(host)
            assert outcome.ok, [s.errors for s in outcome.stages]

    # make-before-break: everyone accepts generation 1, then everyone sends it, then 0 goes
    for t in old:
        write_keys(lab, t, [f"0 {old[t]} active", f"1 {new[t]}"])
    everywhere()
    for t in old:
        write_keys(lab, t, [f"0 {old[t]}", f"1 {new[t]} active"])
    everywhere()
    for t in old:
        write_keys(lab, t, [f"1 {new[t]} active"])
    everywhere()
    time.sleep(lab.configs["host1"].keying.rotation_grace_s + 0.5)
    everywhere()  # the old inbound SAs go once their grace period is over
    for host in hosts:  # and a restarted agent re-applying changes nothing
        config = lab.configs[host]
        fresh = build_datapath(config, netns=ns(host)).apply(config, static_view(config))
        assert fresh.ok and not fresh.changed
    time.sleep(0.5)
    results = [p.stop() for p in pings]

    for sent, lost in results:
        assert sent > 100 and lost == 0, results
    states = sh(lab, ns("host1"), "ip xfrm state")
    spis = [int(s, 16) for s in re.findall(r"spi 0x([0-9a-f]+)", states)]
    assert spis and {spi.decode(s).generation for s in spis} == {1}


OBJECT_VIEWS = (
    "ip -o link",
    "ip -o addr",
    "ip route show table all",
    "ip -6 route show table all",
    "iptables-legacy-save -t raw | grep -v '^[#:*]'",
    "ip6tables-legacy-save -t raw | grep -v '^[#:*]'",
)


def xfrm_records(text: str, keep_lines: int) -> set[str]:
    """One line per XFRM record (they start at 'src'); states keep only their identity lines,
    since the lines after them hold counters that traffic changes."""
    records: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("src "):
            records.append([])
        if records:
            records[-1].append(line.strip())
    return {" ".join(r[:keep_lines]) for r in records}


def kernel_objects(lab: LabDatapath, host: str) -> set[str]:
    lines: set[str] = set()
    for view in OBJECT_VIEWS:
        lines |= {" ".join(x.split()) for x in sh(lab, ns(host), view).splitlines() if x.strip()}
    lines |= xfrm_records(sh(lab, ns(host), "ip xfrm state"), keep_lines=2)
    lines |= xfrm_records(sh(lab, ns(host), "ip xfrm policy"), keep_lines=99)
    return lines


def without_tenant(config: Config, tenant: str) -> Config:
    data = config.model_dump(mode="json")
    data["tenants"].pop(tenant)
    for section in ("endpoints", "remote_endpoints"):
        data[section] = {k: v for k, v in data[section].items() if v["tenant"] != tenant}
    return Config.model_validate(data)


RED_MARKERS = re.compile(
    "|".join(
        [
            "rnv-v200",
            "rnv-t200",
            "wl-red",
            "RNV-SRC-wl-red",
            r"::1:c8\b",
            f"reqid {markers.reqid(RED)}",
            str(markers.vrf_table(RED)),
            str(markers.publish_table(RED)),
            r"spi 0x00c8",
        ]
    )
)


def assert_removes_exactly(
    lab: LabDatapath, host: str, config: Config, belongs: re.Pattern[str], port: str
) -> None:
    """Applying `config` removes exactly the objects matching `belongs` (only `port` stays,
    released), while a ping of another tenant's workload on the same host loses nothing."""
    before = kernel_objects(lab, host)
    ping = Ping(lab, "blue3", "10.0.0.1" if host == "host1" else "10.0.0.2")
    outcome = lab.apply(host, config)
    sent, lost = ping.stop()
    after = kernel_objects(lab, host)
    try:
        assert outcome.ok, [s.errors for s in outcome.stages]
        removed, added = before - after, after - before
        assert removed, "nothing was removed"
        assert [x for x in sorted(removed) if not belongs.search(x)] == []
        assert [x for x in sorted(added) if port not in x] == []
        assert sent > 0 and lost == 0  # the rest of the host never noticed
    finally:
        assert lab.apply(host).ok
    # putting it back restores it completely
    assert not lab.plan(host).changed


def test_removing_a_tenant_removes_exactly_its_objects(lab: LabDatapath) -> None:
    assert_removes_exactly(
        lab, "host1", without_tenant(lab.configs["host1"], "red"), RED_MARKERS, "wl-red1"
    )
    red = sh(lab, ns("red1"), "ping -c 2 -i 0.2 -W 2 10.0.0.2")
    assert " 0% packet loss" in red


def test_removing_an_endpoint_removes_exactly_its_objects(lab: LabDatapath) -> None:
    data = lab.configs["host2"].model_dump(mode="json")
    data["endpoints"].pop("red2")
    belongs = re.compile(
        r"wl-red2|RNV-SRC-wl-red2|\b10\.0\.0\.2\b.*(200|268435656|536871112)|"
        r"fd10::2\b.*(268435656|536871112)"
    )
    assert_removes_exactly(lab, "host2", Config.model_validate(data), belongs, "wl-red2")
    red = sh(lab, ns("red2"), "ping -c 2 -i 0.2 -W 2 10.0.0.1")
    assert " 0% packet loss" in red


def routed_nv(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "routed_nv", *args], capture_output=True, text=True, timeout=120
    )


def test_apply_command_plans_applies_and_reports_by_exit_status(lab: LabDatapath) -> None:
    path = lab.config_files["host3"]
    original = path.read_text()
    common = ["apply", "--netns", ns("host3"), "-c", str(path)]
    assert routed_nv(*common, "--dry-run").returncode == 0  # in sync: nothing to do

    extra = '[remote_endpoints.extra]\ntenant = "blue"\naddresses = ["10.0.0.77"]\nhost = "host1"\n'
    path.write_text(original + extra)
    try:
        planned = routed_nv(*common, "--dry-run")
        assert planned.returncode == 1, planned.stderr
        assert "routing: + route 10.0.0.77/32" in planned.stdout
        assert "10.0.0.77" not in sh(lab, ns("host3"), "ip route show table all")  # dry
        assert routed_nv(*common, "--dry-run").returncode == 1  # still not applied
        applied = routed_nv(*common)
        assert applied.returncode == 0, applied.stderr
        assert "10.0.0.77" in sh(lab, ns("host3"), "ip route show vrf rnv-v100")
        assert routed_nv(*common, "--dry-run").returncode == 0
    finally:
        path.write_text(original)
        assert routed_nv(*common).returncode == 0

    path.write_text(original.replace("id = 100", "id = 70000", 1))
    try:
        broken = routed_nv(*common)
    finally:
        path.write_text(original)
    assert broken.returncode == 2
    assert "tenants.blue.id: 70000 is out of range 1..65535" in broken.stderr
    assert not lab.plan("host3").changed  # nothing was half-applied


def test_proxy_style_workload_on_a_subnet_reaches_its_tenant_through_the_host(
    lab: LabDatapath,
) -> None:
    # blue1 becomes a classic guest: 10.0.0.1/24 and fd10::1/64 on-link, no gateway at all
    data = lab.configs["host1"].model_dump(mode="json")
    data["endpoints"]["blue1"]["style"] = "proxy"
    proxy = Config.model_validate(data)
    guest = ns("blue1")
    sh(lab, guest, "ip route flush dev eth0; ip -6 route flush dev eth0; ip addr flush dev eth0")
    sh(
        lab,
        guest,
        "ip addr add 10.0.0.1/24 dev eth0 && ip addr add fd10::1/64 dev eth0 nodad && "
        "ip -6 route del default 2>/dev/null; true",
    )
    try:
        assert lab.apply("host1", proxy).ok
        v4 = sh(lab, guest, "ping -c 2 -i 0.2 -W 2 10.0.0.2")
        v6 = sh(lab, guest, "ping -c 2 -i 0.2 -W 2 fd10::2")
        neighbours = sh(lab, guest, "ip neigh show dev eth0; ip -6 neigh show dev eth0")
        host_mac = sh(lab, ns("host1"), "cat /sys/class/net/wl-blue1/address").strip()
        routes = sh(lab, guest, "ip route; ip -6 route")
    finally:
        sh(lab, guest, "ip addr flush dev eth0")
        lab.configure_workloads_of("blue1")
        assert lab.apply("host1").ok

    assert "via" not in routes  # the guest really has no gateway
    assert " 0% packet loss" in v4 and " 0% packet loss" in v6
    # the host answered ARP and ND for the remote workload itself: nothing was flooded
    assert re.search(rf"10\.0\.0\.2 lladdr {host_mac}", neighbours), neighbours
    assert re.search(rf"fd10::2 lladdr {host_mac}", neighbours), neighbours
    assert " 0% packet loss" in sh(lab, guest, "ping -c 2 -i 0.2 -W 2 10.0.0.2")
