"""The qemu hook as libvirt runs it (`qemu <domain> <op> <sub-op> <extra>`, the domain XML on
stdin, stdout taken as a replacement XML for migrate/restore), against the real agent loop and
endpoint API with a fake datapath (test_endpoint_api.start). The taps are real (/dev/net/tun)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_cni import heavy_imports
from test_endpoint_api import Running, start

HOOK = str(Path(sys.executable).with_name("routed-nv-libvirt-hook"))
SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "libvirt" / "hooks" / "qemu"
NS = "https://routed-nv.org/xmlns/libvirt/1"
GUEST_MAC = "52:54:00:ab:cd:01"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it makes taps")


def meta(attrs: str) -> str:
    return f'<rnv:endpoint xmlns:rnv="{NS}" {attrs}/>'


def domain_xml(tap: str, metadata: str | None = None, managed: str = "no") -> bytes:
    if metadata is None:
        metadata = (
            f'<rnv:endpoint xmlns:rnv="{NS}" tenant="blue" ipv4="10.0.0.21" ipv6="fd10::21" '
            'owner="nobody" group="nogroup"/>'
        )
    return f"""<domain type='kvm'>
  <name>web1</name>
  <metadata>{metadata}</metadata>
  <devices>
    <interface type='ethernet'>
      <mac address='{GUEST_MAC}'/>
      <target dev='{tap}' managed='{managed}'/>
      <model type='virtio'/>
    </interface>
    <interface type='network'><source network='default'/></interface>
  </devices>
</domain>""".encode()


class Hook:
    def __init__(self, agent: Running, tap: str) -> None:
        self.agent = agent
        self.tap = tap

    def run(self, op: str, sub: str, xml: bytes, **env: str) -> tuple[int, str, str]:
        done = subprocess.run(
            [HOOK, "web1", op, sub, "-"],
            input=xml,
            env={"PATH": os.environ["PATH"], "ROUTED_NV_RUN_DIR": str(self.agent.sock.parent)}
            | env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        err = done.stderr.decode()
        assert "Traceback" not in err
        return done.returncode, done.stdout.decode(), err

    def start(self, xml: bytes, **env: str) -> tuple[str, int, str, str]:
        """A domain start as libvirt runs the hook: prepare, start, started, up to the first
        failure, and then release (libvirt's clean-up of a failed start). The last op run."""
        for op in ("prepare", "start", "started"):
            rc, out, err = self.run(op, "begin", xml, **env)
            if rc != 0:
                assert self.run("release", "end", xml, **env)[0] in (0, 1)
                break
        return op, rc, out, err

    def endpoints(self) -> list[dict[str, Any]]:
        listed = self.agent.ask({"request": "endpoint.list"})["endpoints"]
        return [e for e in listed if e["origin"] == "runtime"]

    def link(self) -> str:
        out = subprocess.run(["ip", "-d", "link", "show", self.tap], capture_output=True, text=True)
        return out.stdout

    def assert_nothing_left(self) -> None:
        assert self.endpoints() == []
        assert not os.path.exists(f"/sys/class/net/{self.tap}")


@pytest.fixture
def hook(tmp_path: Path) -> Iterator[Hook]:
    agent, stop = start(tmp_path)
    tap = f"rnv-u{os.getpid() % 100000}"
    try:
        yield Hook(agent, tap)
    finally:
        stop()
        subprocess.run(["ip", "link", "del", tap], capture_output=True, check=False)


def test_prepare_makes_the_tap_started_registers_release_removes_both(hook: Hook) -> None:
    rc, out, err = hook.run("prepare", "begin", domain_xml(hook.tap))
    assert (rc, out) == (0, ""), err
    assert hook.endpoints() == []  # QEMU has not opened the tap yet: nothing routed to it
    assert hook.run("start", "begin", domain_xml(hook.tap))[:2] == (0, "")
    assert hook.run("started", "begin", domain_xml(hook.tap))[:2] == (0, "")
    link = hook.link()
    assert "tun type tap" in link and "persist on" in link
    assert "user nobody group nogroup" in link  # QEMU (not root) can open it
    assert "link/ether fe:54:00:ab:cd:01" in link  # the guest's MAC with fe: same on every host
    [ep] = hook.endpoints()
    assert ep["id"] == hook.tap and ep["interface"] == hook.tap and ep["tenant"] == "blue"
    assert sorted(ep["addresses"]) == ["10.0.0.21", "fd10::21"] and ep["programmed"]
    neigh = subprocess.run(["ip", "neigh", "show", "dev", hook.tap], capture_output=True, text=True)
    for address in ("10.0.0.21", "fd10::21"):  # no ARP/NDP needed: a paused guest answers none
        assert f"{address} lladdr {GUEST_MAC} PERMANENT" in neigh.stdout, neigh.stdout
    # libvirt repeats nothing, but a second start (a retried one) converges
    assert hook.start(domain_xml(hook.tap))[1:3] == (0, "")
    assert len(hook.endpoints()) == 1
    assert hook.run("stopped", "end", domain_xml(hook.tap))[:2] == (0, "")
    assert len(hook.endpoints()) == 1
    assert hook.run("release", "end", domain_xml(hook.tap))[:2] == (0, "")
    hook.assert_nothing_left()
    assert hook.run("release", "end", domain_xml(hook.tap))[:2] == (0, "")  # idempotent


def test_migrate_and_restore_leave_the_xml_unchanged(hook: Hook) -> None:
    """libvirt replaces the domain XML with a hook's stdout unless it is empty."""
    for op in ("migrate", "restore"):
        assert hook.run(op, "begin", domain_xml(hook.tap))[:2] == (0, "")
    hook.assert_nothing_left()


def test_reconnect_registers_a_running_domain_again(hook: Hook) -> None:
    assert hook.start(domain_xml(hook.tap))[1] == 0
    hook.agent.ask({"request": "endpoint.delete", "id": hook.tap})  # lost, say
    assert hook.run("reconnect", "begin", domain_xml(hook.tap))[:2] == (0, "")
    assert [e["id"] for e in hook.endpoints()] == [hook.tap]
    assert hook.run("release", "end", domain_xml(hook.tap))[0] == 0
    rc, _, err = hook.run("reconnect", "begin", domain_xml(hook.tap))
    assert rc == 1 and f"tap {hook.tap} is missing" in err
    hook.assert_nothing_left()


@pytest.mark.parametrize(
    "xml",
    [
        domain_xml("rnv-x", metadata=""),  # no metadata of ours
        domain_xml("vnet0", metadata='<other:thing xmlns:other="urn:x"/>'),
        b"<domain><name>x</name></domain>",
        b"not xml at all",  # not ours either: our namespace is not in it
        b"",
    ],
)
def test_a_domain_that_is_not_ours_is_left_alone(hook: Hook, xml: bytes) -> None:
    for op, sub in (("prepare", "begin"), ("release", "end"), ("migrate", "begin")):
        assert hook.run(op, sub, xml) == (0, "", "")
    hook.assert_nothing_left()


@pytest.mark.parametrize(
    ("xml_of", "says"),
    [
        (lambda t: f'<domain><metadata xmlns:rnv="{NS}"><rnv:endpoint'.encode(), "does not parse"),
        (lambda t: domain_xml(t, managed="yes"), "managed='no'"),
        (
            lambda t: domain_xml(t, meta('tenant="green" ipv4="10.0.0.21"')),
            "green",
        ),
        (lambda t: domain_xml(t, meta('tenant="blue"')), "ipv4="),
        (
            lambda t: domain_xml(t, meta('tenant="blue" ipv4="10.9.9.9"')),
            "10.9.9.9",
        ),
        (
            lambda t: domain_xml(t, meta('tenant="blue" ipv4="10.0.0.21" owner="nosuch"')),
            "owner 'nosuch'",
        ),
        (
            lambda t: domain_xml(
                t,
                meta('interface="rnv-other" tenant="blue" ipv4="10.0.0.21"'),
            ),
            "no <interface type='ethernet'> with <target dev='rnv-other'/>",
        ),
    ],
)
def test_bad_input_is_one_line_exit_1_and_nothing_left(hook: Hook, xml_of: Any, says: str) -> None:
    op, rc, out, err = hook.start(xml_of(hook.tap))
    assert rc == 1 and out == ""
    assert len(err.strip().splitlines()) == 1 and says in err, err
    assert err.startswith(f"routed-nv qemu hook: domain web1 {op}: ")
    hook.assert_nothing_left()


def test_reserved_tap_names_are_refused(hook: Hook) -> None:
    for name in ("rnv-e5", "rnv-v100", "rnv-t200"):
        rc, _, err = hook.run("prepare", "begin", domain_xml(name))
        assert rc == 1 and "a name of the agent's own links" in err
        assert not os.path.exists(f"/sys/class/net/{name}")


def test_agent_down_fails_the_start_before_qemu_runs(hook: Hook, tmp_path: Path) -> None:
    rc, _, err = hook.run("prepare", "begin", domain_xml(hook.tap), ROUTED_NV_RUN_DIR=str(tmp_path))
    assert rc == 1 and "the routed-nv agent is not answering" in err
    hook.assert_nothing_left()


def test_an_endpoint_the_agent_cannot_program_is_rolled_back(hook: Hook) -> None:
    hook.agent.datapath.errors = [f"routing: port {hook.tap}: no such device"]
    op, rc, _, err = hook.start(domain_xml(hook.tap))
    assert (op, rc) == ("started", 1) and "not-programmed" in err
    assert hook.endpoints() == []  # rolled back by started itself, before release
    hook.agent.datapath.errors = []
    hook.assert_nothing_left()


def test_the_shipped_hook_execs_the_console_script() -> None:
    text = SHIPPED.read_text()
    assert os.access(SHIPPED, os.X_OK)
    assert 'exec /usr/local/bin/routed-nv-libvirt-hook "$@"' in text


def test_the_hook_loads_no_agent_libraries() -> None:
    """libvirt waits for the hook: it imports the stdlib, routed_nv.libvirt and the agent socket."""
    ours = (
        "routed_nv.libvirt",
        "routed_nv.cni",
        "routed_nv.control_wire",
        "routed_nv.model",  # markers only: the package and its markers module
        "routed_nv.errors",
    )
    assert heavy_imports("routed_nv.libvirt.hook", ours) == "[]"


def test_prepare_and_release_wall_time(hook: Hook, capsys: pytest.CaptureFixture[str]) -> None:
    """Measured, not asserted (docs/libvirt.md quotes it): the whole hook process."""
    prepares, starteds, releases = [], [], []
    for _ in range(5):
        t0 = time.monotonic()
        assert hook.run("prepare", "begin", domain_xml(hook.tap))[0] == 0
        prepares.append(time.monotonic() - t0)
        t0 = time.monotonic()
        assert hook.run("started", "begin", domain_xml(hook.tap))[0] == 0
        starteds.append(time.monotonic() - t0)
        t0 = time.monotonic()
        assert hook.run("release", "end", domain_xml(hook.tap))[0] == 0
        releases.append(time.monotonic() - t0)
    t0 = time.monotonic()
    hook.run("prepare", "begin", domain_xml("vnet0", metadata=""))
    other = time.monotonic() - t0
    with capsys.disabled():
        print(
            f"\nqemu hook prepare p50 {sorted(prepares)[2] * 1000:.0f} ms, started p50 "
            f"{sorted(starteds)[2] * 1000:.0f} ms, release p50 "
            f"{sorted(releases)[2] * 1000:.0f} ms, a domain not ours {other * 1000:.0f} ms "
            "(fake datapath)"
        )
    hook.assert_nothing_left()
