"""Per-tenant protection modes: overhead and MTU, keys, SAs, IKE proposals, config checks."""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from routed_nv.calc.ike import esp_proposals
from routed_nv.calc.routing import desired_routing
from routed_nv.calc.xfrm import desired_xfrm
from routed_nv.config import ConfigError, crosscheck, load_config, loader
from routed_nv.config.model import Config, Keying, KeyingMode
from routed_nv.config.views import static_view
from routed_nv.esp.xfrm import Op, Verb, parse_states, render
from routed_nv.kernel_features import MachineFacts, evaluate, protection_support
from routed_nv.model import markers, spi
from routed_nv.model.keys import TenantKeys, derive_sa_key
from routed_nv.model.protection import Protection, suite
from routed_nv.model.routing import LinkKind
from routed_nv.model.secret import Secret
from routed_nv.model.xfrm import XfrmState
from tests.factories import HOST1

SECRET = Secret(bytes(range(32)))
MODES = list(Protection)


def config(keying: str = "static", **blue: Any) -> Config:
    return Config.model_validate(
        {
            "host": HOST1,
            "keying": {"mode": keying, "psk_file": "/etc/psk"},
            "tenants": {"blue": {"id": 100, "ipv4": ["10.0.0.0/24"], **blue}},
            "peers": {"host2": {"id": 2, "underlay_prefix": "2001:db8:0:2::/64"}},
            "remote_endpoints": {
                "b2": {"tenant": "blue", "addresses": ["10.0.0.2"], "host": "host2"},
            },
        }
    )


@pytest.mark.parametrize(
    ("mode", "mtu"),
    [("aes-gcm", 1426), ("chacha20-poly1305", 1426), ("integrity", 1426), ("none", 1450)],
)
def test_workload_and_tunnel_mtu_follow_the_mode(mode: str, mtu: int) -> None:
    cfg = config(protection=mode)
    assert cfg.tenant_mtu("blue") == cfg.tunnel_mtu("blue") == mtu
    assert suite(Protection(mode)).overhead(1500) == 1500 - mtu
    tunnel = next(
        link
        for link in desired_routing(cfg, static_view(cfg)).links
        if link.kind is LinkKind.IP6TNL
    )
    assert tunnel.mtu == mtu


def test_the_mtu_counts_the_padding_to_four_bytes() -> None:
    # 1499 - 40 - 8 - 8 - 16 = 1427 bytes for payload + trailer: 1424 of them usable
    assert suite(Protection.AES_GCM).workload_mtu(1499) == 1422
    assert suite(Protection.NONE).workload_mtu(1499) == 1446


def test_during_a_mode_change_the_mtu_fits_both_modes() -> None:
    cfg = config(protection="none", generation_protection={"0": "aes-gcm"})
    assert cfg.tenant_mtu("blue") == 1426


def test_aes_gcm_keys_are_the_ones_static_keying_always_derived() -> None:
    info = b"routed_nv/esp/v1 rfc4106(gcm(aes)) 128" + struct.pack("!IHHB", 100, 1, 2, 0)
    hkdf = HKDF(algorithm=SHA256(), length=20, salt=b"routed_nv static keying", info=info)
    assert derive_sa_key(SECRET, 100, 1, 2, 0).value == hkdf.derive(SECRET.value)


def test_each_mode_derives_its_own_key_of_its_length() -> None:
    keys = {m: derive_sa_key(SECRET, 100, 1, 2, 0, m).value for m in MODES}
    assert {m: len(k) for m, k in keys.items()} == {
        Protection.AES_GCM: 20,
        Protection.CHACHA20_POLY1305: 36,
        Protection.INTEGRITY: 20,
        Protection.NONE: 0,
    }
    assert len({k for k in keys.values() if k}) == 3  # a mode change is a key change


@pytest.mark.parametrize("mode", MODES)
def test_sas_use_the_tenants_mode(mode: Protection) -> None:
    cfg = config(protection=str(mode))
    keys = {"blue": TenantKeys("blue", Path("/k/blue.key"), {0: SECRET}, 0)}
    states = desired_xfrm(cfg, static_view(cfg), keys).states
    assert states is not None and len(states) == 2
    cipher = suite(mode)
    for s in states.values():
        assert (s.algorithm, s.icv_bits, s.aead) == (cipher.algorithm, cipher.icv_bits, cipher.aead)
        sender = spi.decode(s.spi).sender_id
        receiver = 2 if sender == 1 else 1
        assert s.key_material == derive_sa_key(SECRET, 100, sender, receiver, 0, mode)


def test_a_generation_keeps_its_own_mode_during_a_change() -> None:
    cfg = config(protection="chacha20-poly1305", generation_protection={"0": "aes-gcm"})
    keys = {"blue": TenantKeys("blue", Path("/k/blue.key"), {0: SECRET, 1: SECRET}, 0)}
    states = desired_xfrm(cfg, static_view(cfg), keys).states
    assert states is not None
    modes = {(spi.decode(s.spi).generation, s.algorithm) for s in states.values()}
    assert modes == {(0, "rfc4106(gcm(aes))"), (1, "rfc7539esp(chacha20,poly1305)")}


A = ipaddress.IPv6Address("2001:db8:0:1::1:64")
B = ipaddress.IPv6Address("2001:db8:0:2::1:64")


def shown(transform: str) -> str:
    """An SA from A to B as `ip xfrm state` (iproute2 6.1) shows it, with this transform line."""
    return f"""\
src {A} dst {B}
\tproto esp spi 0x00640004 reqid {markers.reqid(100)} mode transport
\treplay-window 0
\t{transform}
\tanti-replay esn context:
\t seq-hi 0x0, seq 0x0, oseq-hi 0x0, oseq 0x0
\t replay_window 64, bitmap-length 2
\t 00000000 00000000
\tsel src ::/0 dst ::/0
"""


def test_null_encryption_renders_as_enc_without_auth_and_reads_back() -> None:
    cipher = suite(Protection.NONE)
    state = XfrmState(
        A, B, 0x640004, markers.reqid(100), Secret(b""), algorithm=cipher.algorithm,
        icv_bits=0, aead=False,
    )  # fmt: skip
    assert render(Op(Verb.ADD, state)).endswith(' enc ecb(cipher_null) ""')
    assert "enc ecb(cipher_null) <key redacted>" in state.describe()
    # iproute2 prints no key word for an empty key
    assert parse_states(shown("enc ecb(cipher_null) ")) == [state]


def test_an_algorithm_with_a_comma_reads_back_whole() -> None:
    key = bytes(range(36))
    state = XfrmState(
        A, B, 0x640004, markers.reqid(100), Secret(key),
        algorithm="rfc7539esp(chacha20,poly1305)",
    )  # fmt: skip
    assert parse_states(shown(f"aead rfc7539esp(chacha20,poly1305) 0x{key.hex()} 128")) == [state]


def test_ike_proposals_follow_the_mode_and_keep_the_dh_groups() -> None:
    keying = Keying(mode=KeyingMode.IKE, esp_proposals=["aes256gcm16-x25519", "aes128gcm16"])
    assert esp_proposals(keying, Protection.AES_GCM) == ["aes256gcm16-x25519", "aes128gcm16"]
    assert esp_proposals(keying, Protection.CHACHA20_POLY1305) == [
        "chacha20poly1305-x25519",
        "chacha20poly1305",
    ]
    assert esp_proposals(keying, Protection.INTEGRITY) == ["aes128gmac-x25519", "aes128gmac"]


def test_ike_refuses_none_and_generation_modes_naming_the_field() -> None:
    found = crosscheck.problems(config("ike", protection="none"))
    assert [(path, value) for path, value, _ in found] == [
        (("tenants", "blue", "protection"), "none")
    ]
    assert "strongSwan" in found[0][2]
    found = crosscheck.problems(config("ike", generation_protection={"1": "integrity"}))
    assert [path for path, _, _ in found] == [("tenants", "blue", "generation_protection")]
    assert crosscheck.problems(config("static", protection="none")) == []


def support(facts: MachineFacts) -> dict[str, bool]:
    return {str(mode): ok for mode, (ok, _) in protection_support(facts).items()}


UML_LIKE = MachineFacts(
    release="6.1.176",
    modules_builtin="kernel/crypto/crypto_null.ko\n",
    modules_dep="kernel/crypto/gcm.ko:\nkernel/crypto/authenc.ko:\n",
)


def test_doctor_lists_the_modes_the_kernel_can_do() -> None:
    assert support(MachineFacts(release="6.18")) == dict.fromkeys(map(str, MODES), False)
    assert support(UML_LIKE) == {
        "aes-gcm": True,
        "chacha20-poly1305": False,
        "integrity": True,
        "none": True,
    }
    registered = replace(UML_LIKE, proc_crypto="name         : rfc7539esp(chacha20,poly1305)\n")
    assert support(registered)["chacha20-poly1305"]
    features = {f.name: f for f in evaluate(UML_LIKE).features}
    chacha = features["protection chacha20-poly1305"]
    assert not chacha.ok and not chacha.needed
    assert "rfc7539esp(chacha20,poly1305) (module chacha20poly1305: not built in" in chacha.detail


def test_the_kernels_answer_to_a_test_sa_wins_over_the_modules() -> None:
    refused = "Error: Requested AEAD algorithm not found."
    probed = replace(
        UML_LIKE,
        xfrm_probe=tuple((m, refused if m is Protection.INTEGRITY else None) for m in MODES),
    )
    assert protection_support(probed) == {
        Protection.AES_GCM: (True, "a test SA in a scratch netns was accepted"),
        Protection.CHACHA20_POLY1305: (True, "a test SA in a scratch netns was accepted"),
        Protection.INTEGRITY: (False, f"the kernel refused a test SA: {refused}"),
        Protection.NONE: (True, "a test SA in a scratch netns was accepted"),
    }


def test_config_check_refuses_a_mode_this_kernel_cannot_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader, "kernel_facts", lambda: UML_LIKE)  # as if not root: no probe
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "blue.key").write_text(f"0 {'ab' * 32}\n")
    (keys / "blue.key").chmod(0o600)
    (tmp_path / "routed-nv.toml").write_text(
        "[host]\nname = 'host1'\nid = 1\nunderlay_prefix = '2001:db8:0:1::/64'\n"
        "underlay_aggregate = '2001:db8::/48'\nuplink = 'eth0'\n"
        f"[keying]\nmode = 'static'\nsecrets_dir = '{keys}'\n"
        "[tenants.blue]\nid = 100\nipv4 = ['10.0.0.0/24']\nprotection = 'none'\n"
        "generation_protection = { '1' = 'chacha20-poly1305' }\n"
    )
    load_config(tmp_path / "routed-nv.toml", env={})  # away from the host: not checked
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "routed-nv.toml", env={}, check_files=True)
    assert [str(p) for p in info.value.problems] == [
        "routed-nv.toml: tenants.blue.generation_protection.1: 'chacha20-poly1305' is not "
        "supported by this kernel (6.1.176): missing rfc7539esp(chacha20,poly1305) (module "
        "chacha20poly1305: not built in, loaded or loadable on 6.1.176) (routed-nv doctor "
        "lists the modes it supports)"
    ]
