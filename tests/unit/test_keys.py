from __future__ import annotations

from pathlib import Path

import pytest

from routed_nv.esp import keys
from routed_nv.model.keys import KeyFileError, TenantKeys, derive_sa_key
from routed_nv.model.protection import DEFAULT, suite
from routed_nv.model.secret import Secret

S0 = "00" * 31 + "01"
S1 = "ab" * 40


def write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "blue.key"
    path.write_text(text)
    path.chmod(mode)
    return path


def load(path: Path) -> TenantKeys:
    return keys.load_tenant_keys(path, "blue")


def test_generations_and_active_marker(tmp_path: Path) -> None:
    path = write(tmp_path, f"# blue\n\n0 {S0}\n1 0x{S1}   active  # new\n")
    got = load(path)
    assert got.active == 1
    assert got.generations == {0: Secret(bytes.fromhex(S0)), 1: Secret(bytes.fromhex(S1))}


def test_single_generation_needs_no_marker(tmp_path: Path) -> None:
    assert load(write(tmp_path, f"2 {S0}\n")).active == 2


def test_load_all_reads_each_tenants_file_and_keeps_its_error(tmp_path: Path) -> None:
    write(tmp_path, f"0 {S0}\n")
    loaded = keys.load_all(tmp_path, ["blue", "red"])
    assert isinstance(loaded["blue"], TenantKeys) and loaded["blue"].path == tmp_path / "blue.key"
    assert isinstance(loaded["red"], KeyFileError) and "red.key: secret file is missing" in str(
        loaded["red"]
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"0 {S0}\n4 {S1}\n", r"blue.key:2: generation '4' is not a number 0..3"),
        (f"0 {S0}\n0 {S1} active\n", r"blue.key:2: generation 0 is listed twice"),
        (f"0 {S0} current\n", r"blue.key:1: expected '<generation> <hex secret> \[active\]'"),
        ("0 zz" + S0 + "\n", r"blue.key:1: the secret is not hexadecimal"),
        ("0 " + "ab" * 31 + "\n", r"blue.key:1: the secret has 31 bytes; at least 32"),
        (f"0 {S0}\n1 {S1}\n", r"blue.key: several generations and none is marked active"),
        (f"0 {S0} active\n1 {S1} active\n", r"generations \[0, 1\] are all marked active"),
        ("# nothing\n", r"blue.key: no key generation in the file"),
    ],
)
def test_malformed_files_name_file_and_line_but_not_the_secret(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(KeyFileError, match=message) as err:
        load(write(tmp_path, text))
    assert S0 not in str(err.value) and S1 not in str(err.value)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_group_or_world_access_is_refused(tmp_path: Path, mode: int) -> None:
    with pytest.raises(KeyFileError, match=f"permissions {mode:04o} are too open"):
        load(write(tmp_path, f"0 {S0}\n", mode))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"red.key: secret file is missing"):
        keys.load_tenant_keys(tmp_path / "red.key", "red")


def test_symlink_is_not_followed(tmp_path: Path) -> None:
    target = write(tmp_path, f"0 {S0}\n")
    (tmp_path / "link.key").symlink_to(target)
    with pytest.raises(KeyFileError, match="cannot open secret file"):
        keys.load_tenant_keys(tmp_path / "link.key", "link")


def test_derived_keys_bind_tenant_direction_and_generation() -> None:
    secret = Secret(bytes.fromhex(S0))
    base = derive_sa_key(secret, 100, 1, 2, 0)
    assert len(base.value) == suite(DEFAULT).key_bytes == 20
    assert derive_sa_key(secret, 100, 1, 2, 0) == base  # the peer computes the same
    others = {
        derive_sa_key(secret, 100, 2, 1, 0),  # other direction
        derive_sa_key(secret, 101, 1, 2, 0),  # other tenant
        derive_sa_key(secret, 100, 1, 3, 0),  # other receiver
        derive_sa_key(secret, 100, 1, 2, 1),  # other generation
        derive_sa_key(Secret(bytes.fromhex(S1)), 100, 1, 2, 0),  # other secret
    }
    assert base not in others and len(others) == 5


def test_secrets_are_redacted() -> None:
    secret = Secret(bytes.fromhex(S0))
    assert S0 not in repr(secret) and S0 not in str(secret) and S0 not in f"{secret!r}"
    assert repr(secret) == "Secret(<32 bytes redacted>)"
    assert secret.hex() == S0
