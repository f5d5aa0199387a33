from __future__ import annotations

import json
from dataclasses import replace

import pytest
from click.testing import CliRunner

from routed_nv import doctor
from routed_nv.cli.agent_client import table
from routed_nv.cli.doctor import doctor_command
from routed_nv.kernel_features import (
    TABLE_HEADERS,
    MachineFacts,
    evaluate,
    iptables_backend,
    loadable_plugins,
    module_names,
    parse_release,
    table_rows,
)

CAPABLE = MachineFacts(
    release="6.1.176",
    loaded_modules=frozenset({"esp4", "vrf"}),
    modules_builtin="kernel/net/xfrm/xfrm_user.ko\n",
    modules_dep=(
        "kernel/net/ipv6/esp6.ko.xz: kernel/net/xfrm/xfrm_algo.ko.xz\n"
        "kernel/net/ipv6/ip6_tunnel.ko.zst: kernel/net/ipv6/tunnel6.ko.zst\n"
        "kernel/crypto/gcm.ko:\n"
    ),
    iptables_version="iptables v1.8.9 (nf_tables)\n",
    iptables_legacy="/usr/sbin/iptables-legacy-restore",
    charon="/usr/lib/ipsec/charon",
    bird="/usr/sbin/bird",
    birdc="/usr/sbin/birdc",
    linux_uml="/usr/bin/linux.uml",
    uml_module_releases=("6.1.176",),
)


def by_name(facts: MachineFacts) -> dict[str, tuple[bool, str]]:
    return {f.name: (f.ok, f.detail) for f in evaluate(facts).features}


def test_module_names_strip_paths_suffixes_and_dashes() -> None:
    listing = "kernel/crypto/ghash-generic.ko.xz: x.ko\nkernel/net/ipv4/esp4.ko\n\n"
    assert module_names(listing) == {"ghash_generic", "esp4"}


def test_loaded_builtin_and_loadable_modules_are_all_available() -> None:
    features = by_name(CAPABLE)
    assert features["esp4"] == (True, "loaded")
    assert features["xfrm_user"] == (True, "built in")
    assert features["esp6"] == (True, "loadable module")
    assert features["gcm"] == (True, "gcm template: loadable module")
    assert evaluate(CAPABLE).datapath_ready


def test_bare_kernel_misses_every_datapath_module() -> None:
    report = evaluate(MachineFacts(release="6.18.44-fc"))
    assert report.missing == [
        "esp4", "esp6", "xfrm_user", "vrf", "ip6_tunnel", "ip6tnl-nbma-ipv4", "gcm",
    ]  # fmt: skip
    assert not report.datapath_ready


def test_gcm_counts_when_registered_in_proc_crypto() -> None:
    facts = MachineFacts(release="6.1", proc_crypto="name         : rfc4106(gcm(aes))\n")
    assert by_name(facts)["gcm"] == (True, "rfc4106(gcm(aes)) in /proc/crypto")


@pytest.mark.parametrize(
    ("release", "ok"), [("5.17.0-1-amd64", False), ("5.18.0", True), ("6.1.176", True)]
)
def test_ipv4_over_nbma_needs_5_18(release: str, ok: bool) -> None:
    assert by_name(replace(CAPABLE, release=release))["ip6tnl-nbma-ipv4"][0] is ok


def test_unparsable_release_is_not_trusted() -> None:
    assert parse_release("weird") is None
    assert by_name(replace(CAPABLE, release="weird"))["ip6tnl-nbma-ipv4"][0] is False


@pytest.mark.parametrize(
    ("output", "backend"),
    [
        ("iptables v1.8.9 (nf_tables)", "nf_tables"),
        ("iptables v1.8.7 (legacy)", "legacy"),
        ("iptables v1.6.1", "legacy"),
        ("", None),
    ],
)
def test_iptables_backend(output: str, backend: str | None) -> None:
    assert iptables_backend(output) == backend


def test_nft_only_iptables_is_reported_as_unusable() -> None:
    ok, detail = by_name(replace(CAPABLE, iptables_legacy=None))["iptables"]
    assert not ok
    assert detail == (
        "v1.8.9, default backend nf_tables; no iptables-legacy-restore, and routed_nv programs the"
        " legacy tables with iptables-legacy-restore"
    )


def test_legacy_tools_make_iptables_usable() -> None:
    ok, detail = by_name(CAPABLE)["iptables"]
    assert ok
    assert detail.endswith("iptables-legacy-restore (/usr/sbin/iptables-legacy-restore)")


def test_tools_do_not_decide_datapath_readiness() -> None:
    facts = replace(CAPABLE, charon=None, bird=None, linux_uml=None)
    features = by_name(facts)
    assert not features["charon"][0] and not features["bird"][0]
    assert not features["user-mode-linux"][0]
    assert evaluate(facts).datapath_ready


def test_table_marks_optional_missing_features() -> None:
    features = evaluate(replace(CAPABLE, bird=None, release="5.10")).features
    lines = table(TABLE_HEADERS, table_rows(features)).splitlines()
    assert lines[1].split() == ["|", "FEATURE", "|", "STATUS", "|", "DETAIL", "|"]
    assert any(line.startswith("| bird ") and "missing (optional)" in line for line in lines)
    assert any(line.startswith("| ip6tnl-nbma-ipv4") and " missing " in line for line in lines)


@pytest.mark.parametrize(("facts", "code"), [(CAPABLE, 0), (MachineFacts(release="6.18"), 1)])
def test_command_json_and_exit_status(
    monkeypatch: pytest.MonkeyPatch, facts: MachineFacts, code: int
) -> None:
    monkeypatch.setattr(doctor, "gather_facts", lambda: facts)
    result = CliRunner().invoke(doctor_command, ["-o", "json"])
    assert result.exit_code == code
    data = json.loads(result.stdout)
    assert data["datapath_ready"] is (code == 0)
    assert {f["name"] for f in data["features"]} >= {"esp4", "gcm", "iptables", "charon"}


def test_help_ends_with_examples() -> None:
    result = CliRunner().invoke(doctor_command, ["--help"])
    text = result.stdout.split("Options:")[0].rstrip()
    assert "Exit status: 0" in text
    assert text.splitlines()[-1].strip().startswith("routed-nv doctor")


def test_distribution_and_tool_versions_are_reported() -> None:
    facts = replace(
        CAPABLE,
        distribution=doctor.distribution(
            'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nNAME="Debian GNU/Linux"\n', "13.1\n"
        ),
        iptables_version="iptables v1.8.11 (nf_tables)\n",
        bird_version="BIRD version 2.17.1\n",
        charon_version="Linux strongSwan 6.0.1\n",
        charon_plugins=frozenset({"random", "nonce", "openssl", "gcm", "vici", "kernel-netlink"}),
    )
    features = by_name(facts)
    assert features["distribution"] == (True, "Debian GNU/Linux 13 (trixie), 13.1")
    assert features["iptables"][1].startswith("v1.8.11, default backend nf_tables")
    assert features["bird"][1].startswith("BIRD version 2.17.1, ")
    assert features["user-mode-linux"][1] == "/usr/bin/linux.uml, kernel 6.1.176"
    ok, charon = features["charon"]
    assert ok and charon.startswith("strongSwan 6.0.1, /usr/lib/ipsec/charon; plugins the lab")
    assert "loads: random nonce gcm openssl kernel-netlink vici (not installed: aes " in charon


def test_the_lab_loads_only_installed_plugins_in_its_order() -> None:
    # strongSwan 6 has no aes/sha1/sha2/hmac/kdf/curve25519/gmp plugins: charon refused to load
    # them (7 'plugin not found' errors per charon) when the list was fixed
    installed = frozenset({"vici", "openssl", "nonce", "random", "unrelated"})
    assert loadable_plugins(installed) == ["random", "nonce", "openssl", "vici"]
