"""A workload reaches nothing of its own host but the gateway (issue 14, item 1; docs/isolation.md).

The lab's host1 is programmed by routed_nv; workload blue1 on it probes every address host1 has
(host and tenant outer addresses, uplink, loopback, the gateway and the kernel's link-local on the
workload's link), IPv4 and IPv6, with TCP SYNs, UDP datagrams and ICMP echo, while host1 has
listeners on [::], 0.0.0.0 and the gateway addresses, and with tcp/udp_l3mdev_accept 0 and 1
(1 lets sockets of the default VRF take connections that arrive in a tenant VRF). The probe
waits for anything to come back: a connection, a reply, an RST or an ICMP error (connected
sockets with IP_RECVERR report them all). Only the gateway's echo replies may come back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from routed_nv.agent.wiring import build_datapath
from routed_nv.config.views import static_view
from routed_nv.lab.builder import Lab
from routed_nv.lab.checks import tenant_matrix
from routed_nv.lab.datapath import LabDatapath, programmed_lab
from routed_nv.lab.topology import UPLINK, Workload, default_topology
from routed_nv.model import markers

pytestmark = pytest.mark.kernel

HOST, WORKLOAD, PEER = "host1", "blue1", "blue2"
UPLINK_V4 = "192.0.2.1"  # an IPv4 address of the host outside any tenant (management, say)
DUAL_STACK_PORT, V4_PORT, GATEWAY_PORT, CLOSED_PORT = 7001, 7002, 7003, 179
PORTS = (DUAL_STACK_PORT, V4_PORT, GATEWAY_PORT, CLOSED_PORT)
SILENT, ECHO_REPLY = "silent", "echo reply"

# Listens on (address, port, interface or "") with TCP and UDP; UDP echoes what it receives.
# IP_FREEBIND: the gateway address lives in a tenant VRF, not in the default VRF's local table.
LISTEN = r"""
import json, select, socket, sys
socks = []
for addr, port, dev in json.loads(sys.argv[1]):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        s = socket.socket(family, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind((addr, port, 0, socket.if_nametoindex(dev) if dev else 0))
        else:
            s.bind((addr, port))
        if kind == socket.SOCK_STREAM:
            s.listen(64)
        socks.append(s)
print("ready", flush=True)
accepted = []
while True:
    for s in select.select(socks, [], [])[0]:
        if s.type == socket.SOCK_STREAM:
            accepted.append(s.accept()[0])
        else:
            data, peer = s.recvfrom(2048)
            s.sendto(data, peer)
"""

# From a workload: every (address, port) by TCP and UDP, every address by ICMP echo, all at
# once; then what came back within WAIT seconds, per probe.
PROBE = r"""
import errno, json, re, socket, subprocess, sys, time
WAIT = 3
listed = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True).stdout
own = {line.split()[3].split("/")[0] for line in listed.splitlines()}
targets, ports, sources = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
probes, outcome = [], {}
for addr in targets:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    scope = socket.if_nametoindex("eth0") if addr.startswith(("fe80", "ff02")) else 0
    source = sources["6" if family == socket.AF_INET6 else "4"]
    for port in ports:
        where = (addr, port, 0, scope) if family == socket.AF_INET6 else (addr, port)
        for kind in ("tcp", "udp"):
            s = socket.socket(family, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
            s.setblocking(False)
            s.bind((source, 0))  # the workload's own address: what anti-spoofing lets pass
            label = f"{kind} [{addr}]:{port}"
            try:
                if kind == "udp":  # report every ICMP error, not only port unreachable
                    if family == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, 25, 1)  # IPV6_RECVERR
                    else:
                        s.setsockopt(socket.SOL_IP, 11, 1)  # IP_RECVERR
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                    s.connect(where)
                    s.send(b"probe")
                else:
                    code = s.connect_ex(where)
                    if code not in (0, errno.EINPROGRESS):
                        raise OSError(code, "")
            except OSError as exc:  # the workload's own kernel refused: it never left
                outcome[label] = "not sent: " + errno.errorcode.get(exc.errno, str(exc))
                continue
            probes.append((label, kind, s))
pings = {}
for addr in targets:
    six = ":" in addr
    scoped = addr + ("%eth0" if addr.startswith(("fe80", "ff02")) else "")
    source = sources["6" if six else "4"]
    argv = ["ping", "-n", "-c", "2", "-i", "0.5", "-W", str(WAIT), "-I", source]
    pings[addr] = subprocess.Popen(
        [*argv, *([] if six else ["-b"]), scoped],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
time.sleep(WAIT)
for label, kind, s in probes:
    error = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        outcome[label] = errno.errorcode.get(error, str(error))
    elif kind == "tcp":
        try:
            s.getpeername()
            outcome[label] = "connected"
        except OSError:
            outcome[label] = "silent"
    else:
        try:
            s.recv(2048)
            outcome[label] = "answered"
        except BlockingIOError:
            outcome[label] = "silent"
        except OSError as exc:
            outcome[label] = errno.errorcode.get(exc.errno, str(exc))
for addr, ping in pings.items():
    text = ping.communicate(timeout=WAIT + 5)[0]
    # a ping to a group address is also answered by the workload itself: not its host's answer
    repliers = set(re.findall(r"bytes from ([^%\s]+?)(?:%\S+)?: ", text)) - own
    outcome[f"icmp {addr}"] = (
        "echo reply" if repliers else "icmp error" if "From " in text else "silent"
    )
print(json.dumps(outcome))
"""


def sh(lab: Lab, namespace: str, command: str) -> str:
    done = lab.exec(namespace, ["sh", "-c", command], timeout=60)
    assert done.returncode == 0, f"{namespace}: {command}: {done.stderr}"
    return done.stdout


def listen(lab: Lab, namespace: str, specs: list[tuple[str, int, str]]) -> None:
    """Start listeners (stopped by the lab's teardown, by pid) and wait until they listen."""
    proc = lab.spawn(
        namespace,
        [sys.executable, "-c", LISTEN, json.dumps(specs)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"


def probe(lab: Lab, source: Workload, targets: list[str], ports: tuple[int, ...]) -> dict[str, str]:
    sources = {"4": str(source.ipv4), "6": str(source.ipv6)}
    argv = [sys.executable, "-c", PROBE, *map(json.dumps, (targets, list(ports), sources))]
    done = lab.exec(source.namespace, argv, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabDatapath]:
    with programmed_lab(default_topology(), tmp_path_factory.mktemp("lab")) as datapath:
        built = datapath.lab
        host_ns = built.topology.host(HOST).namespace
        sh(built, host_ns, f"ip addr add {UPLINK_V4}/32 dev {UPLINK}")
        link = workload(built, WORKLOAD).host_link
        listen(
            built,
            host_ns,
            [
                ("::", DUAL_STACK_PORT, ""),
                ("0.0.0.0", V4_PORT, ""),
                (markers.GATEWAY_V4, GATEWAY_PORT, ""),
                (markers.GATEWAY_V6, GATEWAY_PORT, link),
            ],
        )
        listen(built, workload(built, PEER).namespace, [("::", DUAL_STACK_PORT, "")])
        yield datapath


def workload(lab: Lab, name: str) -> Workload:
    return next(w for w in lab.topology.workloads if w.name == name)


def host_addresses(lab: Lab) -> list[str]:
    """Every address host1 has on any interface (the gateways too) but loopback's. The
    workload gets a neighbour entry for each link-local one (all on other links but the
    gateway's and the kernel's on its own), so that they too reach the host."""
    host_ns = lab.topology.host(HOST).namespace
    link = workload(lab, WORKLOAD).host_link
    listed = sh(lab, host_ns, "ip -o addr show | awk '$2 != \"lo\" {print $4}' | cut -d/ -f1")
    mac = sh(lab, host_ns, f"cat /sys/class/net/{link}/address").strip()
    addresses = sorted(set(listed.split()))
    for addr in addresses:
        if addr.startswith("fe80:"):
            sh(
                lab,
                workload(lab, WORKLOAD).namespace,
                f"ip neigh replace {addr} lladdr {mac} dev eth0",
            )
    return addresses


def set_l3mdev_accept(lab: Lab, value: int) -> None:
    sh(
        lab,
        lab.topology.host(HOST).namespace,
        f"sysctl -qw net.ipv4.tcp_l3mdev_accept={value} net.ipv4.udp_l3mdev_accept={value}",
    )


def unexpected(outcome: dict[str, str], answering: set[str]) -> str:
    """Probes whose outcome is not silence (or, to a group address, refused by the workload's
    own kernel), but the echo replies of the `answering` addresses; one line each."""
    found = []
    for label, seen in sorted(outcome.items()):
        addr = label.split()[-1].rpartition("]")[0].lstrip("[") or label.split()[-1]
        if label.startswith("icmp ") and addr in answering:
            ok = seen == ECHO_REPLY
        else:
            ok = seen == SILENT or (addr in GROUPS and seen.startswith("not sent"))
        if not ok:
            found.append(f"{label}: {seen}")
    return "\n".join(found)


GATEWAYS = {markers.GATEWAY_V4, markers.GATEWAY_V6}
GROUPS = {"255.255.255.255", "224.0.0.1", "ff02::1"}  # the host would answer ff02::1 echoes


@pytest.mark.parametrize("l3mdev_accept", [0, 1])
def test_a_workload_reaches_nothing_of_its_host_but_the_gateways_echo(
    lab: LabDatapath, l3mdev_accept: int
) -> None:
    set_l3mdev_accept(lab.lab, l3mdev_accept)
    targets = [*host_addresses(lab.lab), *sorted(GROUPS)]
    assert GATEWAYS | {UPLINK_V4} <= set(targets)
    outcome = probe(lab.lab, workload(lab.lab, WORKLOAD), targets, PORTS)
    assert len(outcome) == len(targets) * (2 * len(PORTS) + 1)
    assert unexpected(outcome, GATEWAYS) == ""


@pytest.mark.parametrize("l3mdev_accept", [0, 1])
def test_nor_the_hosts_loopback(lab: LabDatapath, l3mdev_accept: int) -> None:
    """A workload's OS keeps 127.0.0.1 and ::1 to itself; one whose lo is down sends them to
    its gateway (the gateways' echo replies show that it still hears its host)."""
    set_l3mdev_accept(lab.lab, l3mdev_accept)
    source = workload(lab.lab, WORKLOAD)
    sh(lab.lab, source.namespace, "ip link set lo down")
    try:
        outcome = probe(lab.lab, source, ["127.0.0.1", "::1", *sorted(GATEWAYS)], PORTS)
    finally:
        sh(lab.lab, source.namespace, "ip link set lo up")
    assert unexpected(outcome, GATEWAYS) == ""


def test_the_probe_sees_a_listener_and_tenant_traffic_still_flows(lab: LabDatapath) -> None:
    """The same probe does see a listener where the tenant may reach one: on another workload."""
    peer = workload(lab.lab, PEER)
    set_l3mdev_accept(lab.lab, 1)
    outcome = probe(lab.lab, workload(lab.lab, WORKLOAD), [str(peer.ipv4), str(peer.ipv6)], (7001,))
    assert set(outcome.values()) == {"connected", "answered", ECHO_REPLY}, outcome
    assert [r for r in tenant_matrix(lab.lab) if not r.ok] == []


def test_the_local_table_is_looked_up_after_the_l3mdev_rule(lab: LabDatapath) -> None:
    host_ns = lab.lab.topology.host(HOST).namespace
    for family in ("-4", "-6"):
        rules = sh(lab.lab, host_ns, f"ip {family} rule show").splitlines()
        prefs = {line.split(":")[0]: line for line in rules}
        assert "0" not in prefs, rules
        assert "l3mdev" in prefs["1000"] and "lookup local" in prefs["32765"], rules
    assert not lab.plan(HOST).changed


def test_a_local_rule_put_back_at_pref_0_is_seen_by_a_dry_run_and_removed(lab: LabDatapath) -> None:
    host_ns = lab.lab.topology.host(HOST).namespace
    sh(lab.lab, host_ns, "ip -6 rule add pref 0 lookup local")
    config = lab.configs[HOST]
    # what `apply --dry-run` and a resync do: read afresh
    fresh = build_datapath(config, netns=host_ns)
    plan = fresh.plan(config, static_view(config))
    lines = [line for stage in plan.stages for line in stage.lines]
    assert lines == ["- rule -6 pref 0 from all lookup 255 proto 0"], lines
    assert fresh.apply(config, static_view(config)).ok
    assert "0:" not in sh(lab.lab, host_ns, "ip -6 rule show | cut -f1").split()
    assert not fresh.plan(config, static_view(config)).changed
