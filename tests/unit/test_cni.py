"""routed-nv-cni as a runtime runs it (libcni: CNI_* variables, the network config on stdin, the
result or error JSON on stdout), against the real agent loop and endpoint API with a fake
datapath (test_endpoint_api.start) and the real host-local IPAM from containernetworking-plugins:
every verb and version, bad input with the spec's codes, and nothing left behind on failure.
The namespaces are real (`ip netns add`): the plugin enters them to read eth0 back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_endpoint_api import Running, start

from routed_nv.cni import spec

PLUGIN = str(Path(sys.executable).with_name("routed-nv-cni"))
CNI_PATH = "/usr/lib/cni"
VERSIONS = ("0.4.0", "1.0.0", "1.1.0")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it makes namespaces")


class Cni:
    def __init__(self, tmp_path: Path, agent: Running) -> None:
        self.tmp = tmp_path
        self.agent = agent
        self.ipam_dir = tmp_path / "ipam"
        self.data_dir = tmp_path / "cni"

    def config(self, version: str = "1.1.0", **extra: Any) -> dict[str, Any]:
        return {
            "cniVersion": version,
            "name": "blue-net",
            "type": "routed-nv",
            "tenant": "blue",
            "agentSocket": str(self.agent.sock),
            "dataDir": str(self.data_dir),
            "ipam": {
                "type": "host-local",
                "dataDir": str(self.ipam_dir),
                "ranges": [
                    [{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.10", "rangeEnd": "10.0.0.19"}],
                    [{"subnet": "fd10::/64", "rangeStart": "fd10::10", "rangeEnd": "fd10::19"}],
                ],
            },
            **extra,
        }

    def run(
        self,
        command: str,
        config: dict[str, Any] | bytes,
        cid: str = "ctr1",
        netns: str | None = None,
        ifname: str = "eth0",
        **env: str,
    ) -> tuple[int, dict[str, Any] | None]:
        variables = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_PATH": CNI_PATH}
        if command not in ("VERSION", "STATUS", "GC"):
            variables |= {"CNI_CONTAINERID": cid, "CNI_IFNAME": ifname, "CNI_ARGS": ""}
            if netns is not None:
                variables["CNI_NETNS"] = netns
        stdin = config if isinstance(config, bytes) else json.dumps(config).encode()
        done = subprocess.run(
            [PLUGIN],
            input=stdin,
            env=variables | env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        out = done.stdout.decode().strip()
        assert done.returncode in (0, 1), done.stderr.decode()
        assert "Traceback" not in done.stderr.decode()
        return done.returncode, json.loads(out) if out else None

    def reserved(self) -> list[str]:
        """host-local's reservations: one file per address."""
        net = self.ipam_dir / "blue-net"
        if not net.exists():
            return []
        return sorted(p.name for p in net.iterdir() if p.name[0].isdigit() or ":" in p.name)

    def endpoints(self) -> list[str]:
        listed = self.agent.ask({"request": "endpoint.list"})["endpoints"]
        return [e["id"] for e in listed if e["origin"] == "runtime"]

    def states(self) -> list[str]:
        net = self.data_dir / "blue-net"
        return sorted(p.name for p in net.iterdir()) if net.exists() else []

    def assert_nothing_left(self) -> None:
        assert self.reserved() == []
        assert self.endpoints() == []
        assert self.states() == []
        assert not [n for n in os.listdir("/run/netns") if n.startswith("cni-")]


@pytest.fixture
def cni(tmp_path: Path) -> Iterator[Cni]:
    assert os.access(f"{CNI_PATH}/host-local", os.X_OK), "scripts/bootstrap installs it"
    agent, stop = start(tmp_path)
    try:
        yield Cni(tmp_path, agent)
    finally:
        stop()


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"rnvt-cni-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield f"/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_version_answers_every_version_it_speaks(cni: Cni) -> None:
    for version in (*VERSIONS, "0.3.1"):
        rc, out = cni.run("VERSION", {"cniVersion": version})
        assert rc == 0
        assert out == {"cniVersion": version, "supportedVersions": list(VERSIONS)}


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del_in_every_version(cni: Cni, netns: str, version: str) -> None:
    config = cni.config(version, dns={"nameservers": ["10.0.0.53"], "search": ["blue.example"]})
    rc, result = cni.run("ADD", config, netns=netns)
    assert rc == 0, result
    assert result is not None
    eid = spec.endpoint_id("blue-net", "ctr1", "eth0")
    # the agent has the endpoint: the tenant, IPAM's first addresses, the namespace by name
    state = cni.agent.ask({"request": "endpoint.get", "id": eid})
    assert state["tenant"] == "blue"
    assert state["addresses"] == ["10.0.0.10", "fd10::10"]
    assert state["netns"] == os.path.basename(netns)
    assert state["programmed"] is True
    assert cni.reserved() == ["10.0.0.10", "fd10::10"]
    # the result as the datapath holds it: host style /32 and /128 behind the host's gateways
    assert result["cniVersion"] == version
    ips = [{k: v for k, v in ip.items() if k != "version"} for ip in result["ips"]]
    assert ips == [
        {"address": "10.0.0.10/32", "gateway": "169.254.0.1", "interface": 1},
        {"address": "fd10::10/128", "gateway": "fe80::1", "interface": 1},
    ]
    assert [ip.get("version") for ip in result["ips"]] == (
        ["4", "6"] if version == "0.4.0" else [None, None]
    )
    assert result["routes"] == [
        {"dst": "0.0.0.0/0", "gw": "169.254.0.1"},
        {"dst": "::/0", "gw": "fe80::1"},
    ]
    assert result["dns"] == {"nameservers": ["10.0.0.53"], "search": ["blue.example"]}
    host, container = result["interfaces"]
    assert host["name"] == state["link"] and "sandbox" not in host
    assert container["name"] == "eth0" and container["sandbox"] == netns
    assert ("mtu" in container) == (version == "1.1.0")

    # CHECK: the fake datapath made no veth, so CHECK names what is missing
    rc, out = cni.run("CHECK", {**config, "prevResult": result}, netns=netns)
    assert rc == 1 and out is not None
    assert out["code"] == spec.CHECK_FAILED
    assert f"host link {state['link']} is missing" in out["msg"]
    assert f"eth0 is missing in {netns}" in out["msg"]

    rc, out = cni.run("DEL", {**config, "prevResult": result}, netns=netns)
    assert (rc, out) == (0, None)
    cni.assert_nothing_left()


def test_check_without_prev_result_or_endpoint(cni: Cni, netns: str) -> None:
    rc, out = cni.run("CHECK", cni.config(), netns=netns)
    assert rc == 1 and out is not None and out["code"] == spec.INVALID_CONFIG
    assert "prevResult" in out["msg"]
    rc, out = cni.run("CHECK", cni.config(prevResult={"ips": []}), netns=netns)
    assert rc == 1 and out is not None and out["code"] == spec.CHECK_FAILED
    assert "the agent has no endpoint cni-" in out["msg"]


def test_malformed_input_gets_the_spec_codes_and_changes_nothing(cni: Cni, netns: str) -> None:
    cases: list[tuple[dict[str, Any] | bytes, dict[str, str], int, str]] = [
        (b'{"cniVersion": "1.1.0", "name": ', {}, spec.DECODE_FAILURE, "not JSON"),
        (b"[1, 2]", {}, spec.DECODE_FAILURE, "not a JSON object"),
        (cni.config("0.2.0"), {}, spec.INCOMPATIBLE_VERSION, "cniVersion '0.2.0'"),
        ({**cni.config(), "tenant": 5}, {}, spec.INVALID_CONFIG, "field 'tenant'"),
        ({**cni.config(), "ipam": {}}, {}, spec.INVALID_CONFIG, "'ipam'"),
        ({**cni.config(), "timeout": 0}, {}, spec.INVALID_CONFIG, "timeout 0"),
        ({**cni.config(), "agentSocket": "rel"}, {}, spec.INVALID_CONFIG, "agentSocket 'rel'"),
        (cni.config(), {"CNI_COMMAND": "FROB"}, spec.INVALID_ENV, "CNI_COMMAND 'FROB'"),
        (cni.config(), {"CNI_CONTAINERID": "-x"}, spec.INVALID_ENV, "CNI_CONTAINERID '-x'"),
        (cni.config(), {"CNI_IFNAME": "net1"}, spec.INVALID_ENV, "CNI_IFNAME 'net1'"),
        (cni.config(), {"CNI_PATH": ""}, spec.INVALID_ENV, "CNI_PATH"),
        (
            {**cni.config(), "ipam": {"type": "nope"}},
            {},
            spec.INVALID_CONFIG,
            "IPAM plugin 'nope' not found",
        ),
    ]
    for config, env, code, words in cases:
        rc, out = cni.run("ADD", config, netns=netns, **env)
        assert rc == 1 and out is not None, (config, env)
        assert out["code"] == code and words in out["msg"], (out, config, env)
    cni.assert_nothing_left()


def test_unknown_tenant_is_invalid_config_and_releases_the_addresses(cni: Cni, netns: str) -> None:
    rc, out = cni.run("ADD", cni.config(tenant="green"), netns=netns)
    assert rc == 1 and out is not None
    assert out["code"] == spec.INVALID_CONFIG
    assert out["msg"] == "routed-nv agent: bad-request"
    assert "green" in out["details"]
    cni.assert_nothing_left()


def test_missing_netns_is_an_unknown_container(cni: Cni) -> None:
    rc, out = cni.run("ADD", cni.config(), netns="/run/netns/rnvt-cni-absent")
    assert rc == 1 and out is not None and out["code"] == spec.UNKNOWN_CONTAINER
    assert "/run/netns/rnvt-cni-absent" in out["msg"]
    rc, out = cni.run("ADD", cni.config(), cid="ctr2")
    assert rc == 1 and out is not None and out["code"] == spec.INVALID_ENV
    assert "CNI_NETNS" in out["msg"]
    cni.assert_nothing_left()


def test_duplicate_add_fails_and_keeps_the_first(cni: Cni, netns: str) -> None:
    assert cni.run("ADD", cni.config(), netns=netns)[0] == 0
    rc, out = cni.run("ADD", cni.config(), netns=netns)
    assert rc == 1 and out is not None and out["code"] == spec.ATTACHMENT_EXISTS
    assert "already attached" in out["msg"]
    assert cni.reserved() == ["10.0.0.10", "fd10::10"]
    assert cni.endpoints() == [spec.endpoint_id("blue-net", "ctr1", "eth0")]
    assert cni.run("DEL", cni.config(), netns=netns) == (0, None)
    cni.assert_nothing_left()


def test_del_without_add_and_twice_succeeds(cni: Cni, netns: str) -> None:
    assert cni.run("DEL", cni.config()) == (0, None)  # no CNI_NETNS at all
    assert cni.run("DEL", cni.config(), netns="/run/netns/rnvt-cni-gone") == (0, None)
    assert cni.run("ADD", cni.config(), netns=netns)[0] == 0
    subprocess.run(["ip", "netns", "del", os.path.basename(netns)], check=True)
    for _ in range(2):  # the namespace is gone, then everything is
        assert cni.run("DEL", cni.config(), netns=netns) == (0, None)
    cni.assert_nothing_left()


def test_agent_down_is_try_again_and_touches_nothing(cni: Cni, netns: str) -> None:
    config = cni.config(agentSocket=str(cni.tmp / "nobody.sock"))
    rc, out = cni.run("ADD", config, netns=netns)
    assert rc == 1 and out is not None and out["code"] == spec.TRY_AGAIN
    assert "nobody.sock" in out["details"]
    rc, out = cni.run("DEL", config, netns=netns)  # the endpoint may exist: the runtime retries
    assert rc == 1 and out is not None and out["code"] == spec.TRY_AGAIN
    cni.assert_nothing_left()


def test_an_endpoint_the_agent_cannot_program_is_rolled_back(cni: Cni, netns: str) -> None:
    cni.agent.datapath.errors = [f"routing: netns {os.path.basename(netns)}: gone"]
    rc, out = cni.run("ADD", cni.config(), netns=netns)
    assert rc == 1 and out is not None and out["code"] == spec.NOT_PROGRAMMED
    assert "the apply failed for endpoint" in out["details"]
    cni.assert_nothing_left()


def test_status_says_whether_the_agent_can_take_an_add(cni: Cni) -> None:
    assert cni.run("STATUS", cni.config()) == (0, None)
    rc, out = cni.run("STATUS", cni.config(agentSocket=str(cni.tmp / "nobody.sock")))
    assert rc == 1 and out is not None and out["code"] == spec.NOT_AVAILABLE
    rc, out = cni.run("STATUS", cni.config("1.0.0"))
    assert rc == 1 and out is not None and out["code"] == spec.INCOMPATIBLE_VERSION
    assert out["msg"] == "STATUS needs cniVersion 1.1.0, not 1.0.0"


def test_gc_removes_the_attachments_not_listed(cni: Cni, netns: str) -> None:
    for cid in ("ctr1", "ctr2", "ctr3"):
        assert cni.run("ADD", cni.config(), cid=cid, netns=netns)[0] == 0
    assert len(cni.reserved()) == 6 and len(cni.endpoints()) == 3
    valid = [{"containerID": "ctr2", "ifname": "eth0"}]
    assert cni.run("GC", cni.config(**{"cni.dev/valid-attachments": valid})) == (0, None)
    kept = spec.endpoint_id("blue-net", "ctr2", "eth0")
    assert cni.endpoints() == [kept]
    assert cni.states() == [f"{kept}.json"]
    assert cni.reserved() == ["10.0.0.11", "fd10::11"]  # ctr2's
    # another network's endpoints and the configuration's are not this GC's
    assert {"blue-web", "red-db"} <= {
        e["id"] for e in cni.agent.ask({"request": "endpoint.list"})["endpoints"]
    }
    assert cni.run("GC", cni.config(**{"cni.dev/valid-attachments": []})) == (0, None)
    cni.assert_nothing_left()


def test_a_namespace_without_a_name_is_pinned_for_the_agent(cni: Cni) -> None:
    """Containerd and CRI-O pass /proc/PID/ns/net, Podman a 42-character name: the agent gets a
    bind mount at /run/netns/<endpoint id>, which DEL removes."""
    holder = subprocess.Popen(["unshare", "-n", "sleep", "120"])
    try:
        path = f"/proc/{holder.pid}/ns/net"
        for _ in range(100):  # unshare has entered its namespace when the link differs
            if os.readlink(path) != os.readlink("/proc/self/ns/net"):
                break
            time.sleep(0.02)
        rc, result = cni.run("ADD", cni.config(), netns=path)
        assert rc == 0, result
        eid = spec.endpoint_id("blue-net", "ctr1", "eth0")
        assert cni.agent.ask({"request": "endpoint.get", "id": eid})["netns"] == eid
        pinned = os.stat(f"/run/netns/{eid}")
        assert pinned.st_ino == os.stat(path).st_ino  # the container's namespace itself
        assert cni.run("DEL", cni.config(), netns=path) == (0, None)
        cni.assert_nothing_left()
    finally:
        holder.kill()
        holder.wait()


def heavy_imports(module: str, ours: tuple[str, ...]) -> str:
    """The agent's libraries and the routed_nv modules outside `ours` that importing `module`
    loads, in a fresh interpreter."""
    code = (
        f"import sys, {module}\n"
        f"ours = {ours!r}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'pydantic', 'pyroute2', 'iptc', 'click', 'vici', 'prometheus_client'}"
        " or m.startswith('routed_nv.') and not m.startswith(ours)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_the_plugin_loads_no_agent_libraries() -> None:
    """A runtime waits for every ADD: the plugin imports the stdlib, routed_nv.cni and the
    stdlib-only netns, control_wire and errors modules."""
    ours = ("routed_nv.cni", "routed_nv.netns", "routed_nv.control_wire", "routed_nv.errors")
    assert heavy_imports("routed_nv.cni.plugin", ours) == "[]"


def test_add_and_del_wall_time(cni: Cni, netns: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Measured, not asserted (docs/cni.md quotes it): the whole plugin process, IPAM included,
    against an agent with a fake datapath."""
    adds, dels = [], []
    for i in range(5):
        t0 = time.monotonic()
        assert cni.run("ADD", cni.config(), cid=f"t{i}", netns=netns)[0] == 0
        adds.append(time.monotonic() - t0)
        t0 = time.monotonic()
        assert cni.run("DEL", cni.config(), cid=f"t{i}", netns=netns) == (0, None)
        dels.append(time.monotonic() - t0)
    with capsys.disabled():
        print(
            f"\nrouted-nv-cni ADD p50 {sorted(adds)[2] * 1000:.0f} ms, DEL p50 "
            f"{sorted(dels)[2] * 1000:.0f} ms (fake datapath)"
        )
    cni.assert_nothing_left()
