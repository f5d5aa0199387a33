"""The iproute2 name files: the generated rt_tables.d and the shipped rt_protos.d."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from routed_nv.cli.iproute2_names import iproute2_names_command, render, table_names
from routed_nv.model import markers

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
RT_PROTOS = CONFIGS / "iproute2" / "rt_protos.d" / "routed-nv.conf"


def _entries(text: str) -> dict[int, str]:
    """Parse an iproute2 name file as iproute2 does: `id name`, '#' comments, hex or decimal."""
    entries = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            number, name = fields
            entries[int(number, 0)] = name
    return entries


def test_each_tenant_names_its_three_tables() -> None:
    assert table_names([("blue", 100)]) == [
        (markers.vrf_table(100), "rnv-blue"),
        (markers.publish_table(100), "rnv-blue.publish"),
        (markers.mirror_table(100), "rnv-blue.mirror"),
    ]


def test_names_of_different_tenants_never_collide() -> None:
    # "blue.publish" is not a valid tenant name, so a tenant named like a suffix cannot clash.
    names = [name for _, name in table_names([("blue", 100), ("blue-publish", 101), ("x", 1)])]
    assert len(set(names)) == len(names)


def test_rendered_file_parses_back_to_the_tables() -> None:
    text = render([("red", 200), ("blue", 100)])
    assert _entries(text) == dict(table_names([("blue", 100), ("red", 200)]))


def test_command_prints_the_shipped_examples_tenants() -> None:
    result = CliRunner().invoke(
        iproute2_names_command, ["-c", str(CONFIGS / "routed-nv.toml")], catch_exceptions=False
    )
    assert result.exit_code == 0
    assert _entries(result.stdout) == dict(table_names([("blue", 100), ("red", 200)]))


def test_command_exits_2_on_an_invalid_configuration(tmp_path: Path) -> None:
    bad = tmp_path / "routed-nv.toml"
    bad.write_text("[host]\nname = 'Not Valid'\n")
    result = CliRunner().invoke(iproute2_names_command, ["-c", str(bad)])
    assert result.exit_code == 2
    assert result.stderr


def test_shipped_rt_protos_match_the_markers() -> None:
    assert _entries(RT_PROTOS.read_text()) == {
        markers.RTPROT_ENDPOINT: "rnv-endpoint",
        markers.RTPROT_REMOTE: "rnv-remote",
        markers.RTPROT_INFRA: "rnv-infra",
        markers.RTPROT_STALE: "rnv-stale",
    }


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare"
)
def test_ip_resolves_the_names(tmp_path: Path) -> None:
    """`ip` reads both files: names in, names out (plain tables and protos: any kernel has them).

    The files are bind-mounted over /etc/iproute2 inside a private mount namespace, so the host's
    own iproute2 configuration is never touched. Debian 13 has no /etc/iproute2 (iproute2 6.15
    keeps its defaults in /usr/share/iproute2): /etc is overlaid first, so the mount point can
    be made without writing to the host's /etc.
    """
    etc = tmp_path / "iproute2"
    (etc / "rt_tables.d").mkdir(parents=True)
    (etc / "rt_protos.d").mkdir()
    (etc / "rt_tables.d" / "routed-nv.conf").write_text(render([("blue", 100)]))
    shutil.copy(RT_PROTOS, etc / "rt_protos.d" / "routed-nv.conf")
    netns = f"rnv-test-{uuid.uuid4().hex[:8]}"
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    script = f"""
        set -e
        mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc
        mkdir -p /etc/iproute2
        mount --bind {etc} /etc/iproute2
        ip netns add {netns}
        trap 'ip netns del {netns}' EXIT
        ip -n {netns} link set lo up
        ip -n {netns} route add 10.0.0.0/24 dev lo table rnv-blue proto rnv-endpoint
        ip -n {netns} route add 10.0.1.0/24 dev lo table {markers.mirror_table(100)} proto 231
        ip -n {netns} route show table rnv-blue
        ip -n {netns} route show table rnv-blue.mirror
    """
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["10.0.0.0/24", "dev", "lo", "proto", "rnv-endpoint"]
    assert lines[1].split()[:5] == ["10.0.1.0/24", "dev", "lo", "proto", "rnv-remote"]


def test_the_file_says_which_vrf_device_each_table_belongs_to() -> None:
    # issue 17 item 8: `ip route show vrf rnv-blue` fails: vrf takes the device (rnv-v100)
    text = render([("red", 200), ("blue", 100)])
    assert "#   ip route show table rnv-blue  =  ip route show vrf rnv-v100" in text.splitlines()
    assert "#   ip route show table rnv-red  =  ip route show vrf rnv-v200" in text.splitlines()
    assert markers.vrf_name(100) == "rnv-v100"  # the device the datapath creates
