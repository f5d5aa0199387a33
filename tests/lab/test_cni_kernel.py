"""routed-nv-cni on a real kernel: the BGP lab (3 hosts, 2 route reflectors, an agent per host
with directory.source = "bgp"), "containers" (named netns) on host1 and host2 in the two tenants
with overlapping subnets, attached through the plugin only, as libcni runs it (the executable
named by "type" in CNI_PATH, CNI_* variables, the plugin config derived from configs/cni's
conflists on stdin) with the real host-local IPAM. Each reaches its own tenant across hosts over
ESP and never the other; CHECK passes on what ADD made; DEL leaves the hosts as before."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_bgp_agent_kernel import REACH_TIMEOUT_S, diagnose
from test_datapath_scenario import ns, sh
from test_routing_kernel import echo_requests_received

from routed_nv.agent.control import SOCKET_NAME, ask
from routed_nv.lab import uml
from routed_nv.lab.bgp_agents import BgpAgents
from routed_nv.lab.builder import Lab
from routed_nv.lab.checks import underlay_capture
from routed_nv.lab.topology import directory_topology

pytestmark = pytest.mark.kernel

CONFLISTS = Path(__file__).resolve().parents[2] / "configs" / "cni"
PLUGIN = Path(sys.executable).with_name("routed-nv-cni")
# name: (host, tenant, first address of its host-local range: each host has its own per tenant,
# the tenants overlap: blue and red on host1 both get .100)
CONTAINERS = {
    "cblue1": ("host1", "blue", 100),
    "cred1": ("host1", "red", 100),
    "cblue2": ("host2", "blue", 110),
    "cred2": ("host2", "red", 120),
}


class Env:
    def __init__(self, bgp: BgpAgents, workdir: Path) -> None:
        self.bgp = bgp
        self.workdir = workdir
        self.cni_path = workdir / "cni-bin"  # "type" names the executable, as on a real host
        self.cni_path.mkdir()
        (self.cni_path / "routed-nv").symlink_to(PLUGIN)
        (self.cni_path / "host-local").symlink_to("/usr/lib/cni/host-local")
        self.results: dict[str, dict[str, Any]] = {}
        self.stderr: list[str] = []  # the plugin's own timing lines

    def config(self, name: str) -> dict[str, Any]:
        """The plugin's config as libcni derives it from the tenant's conflist (name and
        cniVersion from the list)."""
        conflist = self.conflist(*CONTAINERS[name])
        return {"cniVersion": "1.1.0", "name": conflist["name"], **conflist["plugins"][0]}

    def conflist(self, host: str, tenant: str, first: int) -> dict[str, Any]:
        """configs/cni's conflist of the tenant with this lab host's socket, range (first to
        first + 9) and state directories."""
        conflist = json.loads((CONFLISTS / f"{tenant}.conflist").read_text())
        plugin = conflist["plugins"][0]
        plugin["agentSocket"] = str(self.bgp.agents[host].run_dir / SOCKET_NAME)
        plugin["dataDir"] = str(self.workdir / host / "cni")
        plugin["ipam"]["dataDir"] = str(self.workdir / host / "ipam")
        v4, v6 = plugin["ipam"]["ranges"]
        v4[0] |= {"rangeStart": f"10.0.0.{first}", "rangeEnd": f"10.0.0.{first + 9}"}
        v6[0] |= {"rangeStart": f"fd10::{first}", "rangeEnd": f"fd10::{first + 9}"}
        return conflist

    def run(
        self, command: str, name: str, **extra: Any
    ) -> tuple[int, dict[str, Any] | None, float]:
        """The plugin in the host's namespace (libcni runs it in the runtime's)."""
        host = CONTAINERS[name][0]
        env = {
            "PATH": os.environ["PATH"],
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"ctr-{name}",
            "CNI_NETNS": f"/run/netns/{ns(name)}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(self.cni_path),
        }
        started = time.monotonic()
        done = subprocess.run(
            ["ip", "netns", "exec", ns(host), str(self.cni_path / "routed-nv")],
            input=json.dumps(self.config(name) | extra).encode(),
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        wall = time.monotonic() - started
        out = done.stdout.decode().strip()
        assert "Traceback" not in done.stderr.decode()
        self.stderr += done.stderr.decode().splitlines()
        return done.returncode, json.loads(out) if out else None, wall


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    workdir = tmp_path_factory.mktemp("cni")
    with Lab(directory_topology()) as built:
        bgp = BgpAgents(built, workdir)
        print(f"\nagent start -> READY=1: {bgp.start()}")
        bgp.wait_converged()
        for name in CONTAINERS:
            subprocess.run(["ip", "netns", "add", ns(name)], check=True)
            sh(bgp.datapath, ns(name), "ip link set lo up")
        try:
            yield Env(bgp, workdir)
        finally:
            for name in CONTAINERS:
                subprocess.run(["ip", "netns", "del", ns(name)], check=False)
            bgp.agents.stop_all()


def reaches(env: Env, source: str, address: str, deadline: float) -> bool:
    while True:
        done = env.bgp.datapath.lab.exec(ns(source), ["ping", "-c", "1", "-W", "0.5", address])
        if done.returncode == 0:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def test_containers_attached_by_the_plugin_reach_their_own_tenant_only(env: Env) -> None:
    walls = []
    for name in CONTAINERS:
        rc, result, wall = env.run("ADD", name)
        assert rc == 0, result
        assert result is not None
        env.results[name] = result
        walls.append(wall)
        first = CONTAINERS[name][2]
        assert [ip["address"] for ip in result["ips"]] == [
            f"10.0.0.{first}/32",
            f"fd10::{first}/128",
        ]
        host_if, eth0 = result["interfaces"]
        assert eth0["mtu"] == 1426 and host_if["mtu"] == 1426
        assert host_if["name"].startswith("rnv-ecni-") and eth0["sandbox"].endswith(ns(name))
        inside = sh(env.bgp.datapath, ns(name), "ip -o addr show dev eth0; ip route; ip -6 route")
        assert f"10.0.0.{first}/32" in inside and f"fd10::{first}/128" in inside
        assert "default via 169.254.0.1 dev eth0" in inside
        assert "default via fe80::1 dev eth0" in inside
        link = sh(env.bgp.datapath, ns(CONTAINERS[name][0]), f"ip -o link show {host_if['name']}")
        vrf = "rnv-v100" if CONTAINERS[name][1] == "blue" else "rnv-v200"
        assert f"master {vrf}" in link, link
    print(f"\nrouted-nv-cni ADD in UML (BGP agent): {', '.join(f'{w:.2f}' for w in walls)} s")
    print("\n".join(env.stderr))

    # CHECK on what ADD made: interface, addresses, routes, VRF, the agent's endpoint
    for name in CONTAINERS:
        rc, out, _ = env.run("CHECK", name, prevResult=env.results[name])
        assert (rc, out) == (0, None), out

    # across hosts, over ESP only; own tenant only, with the same addresses in both tenants
    deadline = time.monotonic() + REACH_TIMEOUT_S
    with underlay_capture(env.bgp.datapath.lab) as wire_reports:
        own = {
            ("cblue1", "10.0.0.110"): reaches(env, "cblue1", "10.0.0.110", deadline),
            ("cblue1", "fd10::110"): reaches(env, "cblue1", "fd10::110", deadline),
            ("cred1", "10.0.0.120"): reaches(env, "cred1", "10.0.0.120", deadline),
            ("cred1", "fd10::120"): reaches(env, "cred1", "fd10::120", deadline),
            ("cblue2", "10.0.0.100"): reaches(env, "cblue2", "10.0.0.100", deadline),
            ("cred2", "fd10::100"): reaches(env, "cred2", "fd10::100", deadline),
        }
    assert own == dict.fromkeys(own, True), diagnose(env.bgp)
    wire = wire_reports[0]
    assert wire.leaks == [] and wire.esp_packets > 0
    echoes = {n: echo_requests_received(ns(n)) for n in ("cblue2", "cred2")}
    never = time.monotonic()  # the other tenant's addresses: no answer, nothing arrives
    other = {
        ("cblue1", "10.0.0.120"): reaches(env, "cblue1", "10.0.0.120", never),
        ("cblue1", "fd10::120"): reaches(env, "cblue1", "fd10::120", never),
        ("cred1", "10.0.0.110"): reaches(env, "cred1", "10.0.0.110", never),
        ("cred1", "fd10::110"): reaches(env, "cred1", "fd10::110", never),
    }
    assert other == dict.fromkeys(other, False)
    assert {n: echo_requests_received(ns(n)) for n in ("cblue2", "cred2")} == echoes


def test_del_removes_every_attachment_and_leaves_the_hosts_clean(env: Env) -> None:
    walls = []
    for name in CONTAINERS:
        rc, out, wall = env.run("DEL", name, prevResult=env.results.get(name, {}))
        assert (rc, out) == (0, None)
        walls.append(wall)
        assert env.run("DEL", name)[:2] == (0, None)  # again: idempotent
    print(f"\nrouted-nv-cni DEL in UML (BGP agent): {', '.join(f'{w:.2f}' for w in walls)} s")
    for host in ("host1", "host2"):
        assert "rnv-ecni-" not in sh(env.bgp.datapath, ns(host), "ip -o link")
        ipam = env.workdir / host / "ipam"
        left = [p.name for d in ipam.iterdir() for p in d.iterdir() if p.name[0].isdigit()]
        assert left == []
        assert list((env.workdir / host / "cni").rglob("*.json")) == []
        sock = env.bgp.agents[host].run_dir / SOCKET_NAME
        listed = ask(sock, {"request": "endpoint.list"})["endpoints"]
        assert [e["id"] for e in listed if e["id"].startswith("cni-")] == []
    for name in CONTAINERS:
        assert "eth0" not in sh(env.bgp.datapath, ns(name), "ip -o link")


# Podman 4.3 (Debian 12), CNI network backend: the real client. Podman 5 (Debian 13) has no CNI
# backend any more (netavark only), so there the harness above is the whole coverage.
PODMAN = {"pblue1": ("host1", "blue", 130), "pblue2": ("host2", "blue", 140)}
PODMAN_WAIT_S = 120


def podman_has_cni() -> bool:
    done = subprocess.run(["podman", "--version"], capture_output=True, text=True, check=False)
    return done.returncode == 0 and done.stdout.split()[-1].startswith("4.")


class Podman:
    """One Podman per lab host: its own containers.conf (CNI backend, the plugin directory,
    this host's conflists), sharing one vfs image store. Podman runs in the guest's root
    namespace as on a real host; the plugin reaches the host's agent by its socket."""

    def __init__(self, env: Env, host: str) -> None:
        base = env.workdir / "podman"
        conf = base / host / "containers.conf"
        net_d = base / host / "net.d"
        net_d.mkdir(parents=True)
        conf.write_text(
            f'[network]\nnetwork_backend = "cni"\ncni_plugin_dirs = ["{env.cni_path}"]\n'
            f'network_config_dir = "{net_d}"\n'
            '[engine]\nevents_logger = "file"\ncgroup_manager = "cgroupfs"\n'
        )
        for h, tenant, first in PODMAN.values():
            if h == host:
                conflist = env.conflist(h, tenant, first)
                (net_d / f"{tenant}.conflist").write_text(json.dumps(conflist))
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.argv = ["podman", "--root", str(base / "storage"), "--runroot", str(base / "run")]
        self.argv += ["--storage-driver", "vfs"]

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.argv, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )


@pytest.mark.skipif(not podman_has_cni(), reason="Podman with a CNI backend (4.x) is not here")
def test_podman_containers_on_two_hosts_reach_each_other(env: Env) -> None:
    if not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        # the UML guest mounts no cgroup file system, and crun refuses to run without one
        assert uml.in_guest(), "a host without cgroup2 at /sys/fs/cgroup"
        subprocess.run(["mount", "-t", "cgroup2", "cgroup2", "/sys/fs/cgroup"], check=True)
    podmans = {host: Podman(env, host) for host in ("host1", "host2")}
    rootfs = env.workdir / "podman" / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")  # busybox-static: no libraries
    for tool in ("sh", "ping", "sleep", "ip"):
        (rootfs / "bin" / tool).symlink_to("busybox")
    image = env.workdir / "podman" / "rootfs.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(image), "."], check=True)
    imported = podmans["host1"]("import", str(image), "localhost/rnv-mini")
    assert imported.returncode == 0, imported.stderr
    try:
        for name, (host, tenant, _) in PODMAN.items():
            started = podmans[host](
                "run", "-d", "--name", name, "--network", tenant, "--ulimit", "host",
                "localhost/rnv-mini", "/bin/sleep", "600",
            )  # fmt: skip
            assert started.returncode == 0, started.stderr
        inspect = podmans["host1"]("inspect", "pblue1", "--format", "{{json .NetworkSettings}}")
        settings = json.loads(inspect.stdout)
        assert settings["Networks"]["blue"]["IPAddress"] == "10.0.0.130", settings
        deadline = time.monotonic() + PODMAN_WAIT_S
        while True:
            ping = podmans["host1"]("exec", "pblue1", "ping", "-c", "1", "-W", "1", "10.0.0.140")
            if ping.returncode == 0 or time.monotonic() > deadline:
                break
        assert ping.returncode == 0, ping.stdout + ping.stderr + diagnose(env.bgp)
        ping6 = podmans["host2"]("exec", "pblue2", "ping", "-c", "1", "-W", "2", "fd10::130")
        assert ping6.returncode == 0, ping6.stdout + ping6.stderr
    finally:
        for name, (host, _, _) in PODMAN.items():
            podmans[host]("rm", "-f", "-t", "0", name)  # CNI DEL
    for host in ("host1", "host2"):
        assert "rnv-ecni-" not in sh(env.bgp.datapath, ns(host), "ip -o link")
    assert [n for n in os.listdir("/run/netns") if n.startswith("cni-")] == []  # pins gone
