from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from routed_nv.calc.ike import credential_files, desired_ike
from routed_nv.config.model import Config
from routed_nv.config.views import static_view
from routed_nv.esp import keys
from routed_nv.model import markers
from routed_nv.model.ike import PSK_ID, Certificate, DesiredIke, PrivateKey, SharedSecret

CA = "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n"  # DER 00 01 02


def config(keying: dict[str, Any], **extra: Any) -> Config:
    return Config.model_validate(
        {
            "host": {
                "name": "host1",
                "id": 1,
                "underlay_prefix": "2001:db8:0:1::/64",
                "underlay_aggregate": "2001:db8::/48",
                "uplink": "eth0",
            },
            "keying": keying,
            "tenants": {"blue": {"id": 100}, "red": {"id": 200}},
            "peers": {
                "host2": {"id": 2, "underlay_prefix": "2001:db8:0:2::/64"},
                "host3": {"id": 3, "underlay_prefix": "2001:db8:0:3::/64"},
                "host4": {"id": 4, "underlay_prefix": "2001:db8:0:4::/64"},
            },
            "remote_endpoints": {
                "b2": {"tenant": "blue", "addresses": ["10.0.0.2"], "host": "host2"},
                "r2": {"tenant": "red", "addresses": ["10.0.0.2"], "host": "host2"},
                "r3": {"tenant": "red", "addresses": ["10.0.0.3"], "host": "host3"},
            },
            **extra,
        }
    )


@pytest.fixture
def psk(tmp_path: Path) -> Path:
    path = tmp_path / "psk"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"  the shared secret\n")
    os.close(fd)
    return path


def ike_desired(cfg: Config) -> DesiredIke:
    """What the agent calculates: the credential files read first, then passed in."""
    return desired_ike(cfg, static_view(cfg), keys.read_files(*credential_files(cfg.keying)))


def test_one_conn_per_peer_sharing_a_tenant_and_one_child_per_shared_tenant(psk: Path) -> None:
    cfg = config({"mode": "ike", "psk_file": str(psk)})
    desired = ike_desired(cfg)
    assert sorted(desired.conns) == ["rnv-host2", "rnv-host3"]  # host4 shares nothing
    host2 = desired.conns["rnv-host2"]
    assert [c.name for c in host2.children] == ["rnv-host2-t100", "rnv-host2-t200"]
    msg = host2.message
    assert msg["local_addrs"] == ["2001:db8:0:1::1"] and msg["remote_addrs"] == ["2001:db8:0:2::1"]
    assert msg["version"] == "2" and msg["proposals"] == ["aes128gcm16-prfsha256-x25519"]
    assert msg["local"] == {"auth": "psk", "id": "2001:db8:0:1::1"}
    assert msg["remote"] == {"auth": "psk", "id": "2001:db8:0:2::1"}
    child = msg["children"]["rnv-host2-t200"]  # type: ignore[index]
    assert child == {
        "mode": "transport_proxy",
        "local_ts": ["2001:db8:0:1::1:c8/128[4]", "2001:db8:0:1::1:c8/128[41]"],
        "remote_ts": ["2001:db8:0:2::1:c8/128[4]", "2001:db8:0:2::1:c8/128[41]"],
        "reqid": str(markers.reqid(200)),
        "esp_proposals": ["aes128gcm16-x25519"],
        "policies": "yes",
        "priority": "500",
        "rekey_time": "3600s",
        "start_action": "start",
        "dpd_action": "restart",
        "close_action": "none",
    }
    assert "unique" not in msg  # replace + restart loops (see calc/ike.py)
    assert msg["mobike"] == "no"  # MOBIKE moved the IKE_SA, then broke the CHILD_SAs


def test_the_configured_timers_are_what_charon_is_given(psk: Path) -> None:
    timers = {"ike_rekey_s": 7200, "child_rekey_s": 900, "dpd_delay_s": 0}
    cfg = config({"mode": "ike", "psk_file": str(psk), **timers})
    desired = ike_desired(cfg)
    for conn in desired.conns.values():
        assert conn.message["rekey_time"] == "7200s"
        assert conn.message["dpd_delay"] == "0s"  # charon: no DPD
        children = conn.message["children"].values()  # type: ignore[attr-defined]
        assert [c["rekey_time"] for c in children] == ["900s"] * len(conn.children)
    # a changed timer changes the digest, so a running agent reloads the connection
    default = config({"mode": "ike", "psk_file": str(psk)})
    before = ike_desired(default).conns["rnv-host2"]
    assert before.message["rekey_time"] == "14400s" and before.message["dpd_delay"] == "30s"
    assert before.digest != desired.conns["rnv-host2"].digest


def test_the_psk_is_one_shared_secret_for_this_host_and_its_peers(psk: Path) -> None:
    cfg = config({"mode": "ike", "psk_file": str(psk)})
    (secret,) = ike_desired(cfg).credentials
    assert isinstance(secret, SharedSecret) and secret.id == PSK_ID
    assert secret.secret.value == b"the shared secret"
    assert secret.owners == ("2001:db8:0:1::1", "2001:db8:0:2::1", "2001:db8:0:3::1")
    assert "shared secret" not in repr(secret)


def test_an_unusable_psk_file_is_an_error_that_keeps_what_charon_has(tmp_path: Path) -> None:
    path = tmp_path / "psk"
    path.write_text("secret")
    path.chmod(0o644)
    cfg = config({"mode": "ike", "psk_file": str(path)})
    desired = ike_desired(cfg)
    assert desired.conns == {} and desired.keep == {"rnv-host2", "rnv-host3"}
    (error,) = desired.errors
    assert "too open" in error and "secret" not in error.replace("secret file", "")


def test_x509_loads_ca_cert_and_key_and_pins_the_ca(tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem"):
        (tmp_path / name).write_text(CA)
    key = tmp_path / "key.pem"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n")
    os.close(fd)
    keying = {
        "mode": "ike",
        "ca_cert": str(tmp_path / "ca.pem"),
        "cert": str(tmp_path / "cert.pem"),
        "key": str(key),
    }
    cfg = config(keying)
    desired = ike_desired(cfg)
    ca, cert, private = desired.credentials
    assert isinstance(ca, Certificate) and ca.flag == "CA" and ca.der == b"\x00\x01\x02"
    assert isinstance(cert, Certificate) and cert.flag == "NONE"
    assert isinstance(private, PrivateKey)
    msg = desired.conns["rnv-host2"].message
    assert msg["local"] == {"auth": "pubkey", "id": "2001:db8:0:1::1"}
    assert msg["remote"]["cacerts"] == [CA.strip()]  # type: ignore[index]


def test_static_mode_wants_no_ike() -> None:
    cfg = config({"mode": "static"})
    desired = ike_desired(cfg)
    assert desired.conns == {} and desired.credentials == () and desired.keep == frozenset()


def test_digest_follows_every_field(psk: Path) -> None:
    a = config({"mode": "ike", "psk_file": str(psk)})
    b = config({"mode": "ike", "psk_file": str(psk), "esp_proposals": ["aes256gcm16"]})
    da = ike_desired(a).conns["rnv-host2"]
    db = ike_desired(b).conns["rnv-host2"]
    assert da.digest != db.digest
    assert da.digest == ike_desired(a).conns["rnv-host2"].digest
