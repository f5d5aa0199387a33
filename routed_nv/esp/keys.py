"""Static keying: per-tenant secret files and the HKDF derivation of every SA key from them.

`<secrets_dir>/<tenant name>.key`, mode 0600 (group/world access is refused, as ssh does):

    # comments and blank lines are ignored
    0 <hex secret, >= 32 bytes>
    1 <hex secret, >= 32 bytes> active

Each line is one key generation (0..3, the SPI's generation bits). The generation marked `active`
is used for sending; every listed generation is accepted on receive, which is what makes rotation
make-before-break (docs/keys.md). With a single generation the marker may be left out.

This is the only module that imports `cryptography`.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from routed_nv.esp import spi
from routed_nv.esp.secret import Secret

MIN_SECRET_BYTES = 32
AEAD_KEY_BYTES = 16 + 4  # AES-128 key + the 4-byte salt (nonce prefix) of rfc4106(gcm(aes))
_HKDF_SALT = b"routed_nv static keying"
_HKDF_LABEL = b"routed_nv/esp/v1 rfc4106(gcm(aes)) 128"
_ACTIVE = "active"


class KeyFileError(Exception):
    """A secret file that cannot be used; the message names the file (and line), never the key."""


@dataclass(frozen=True)
class TenantKeys:
    tenant: str
    path: Path
    generations: Mapping[int, Secret]  # generation -> secret, all accepted on receive
    active: int  # the generation used for sending


KeyLoader = Callable[[str], TenantKeys]


def key_file(secrets_dir: Path, tenant: str) -> Path:
    return secrets_dir / f"{tenant}.key"


def loader(secrets_dir: Path) -> KeyLoader:
    """Reads `<secrets_dir>/<tenant>.key` afresh on each call: rotation is edit + apply."""
    return lambda tenant: load_tenant_keys(key_file(secrets_dir, tenant), tenant)


def load_tenant_keys(path: Path, tenant: str) -> TenantKeys:
    return parse_key_file(read_private(path), path, tenant)


def parse_key_file(text: str, path: Path, tenant: str) -> TenantKeys:
    generations: dict[int, Secret] = {}
    active: list[int] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue

        def fail(problem: str, lineno: int = lineno) -> KeyFileError:
            return KeyFileError(f"{path}:{lineno}: {problem}")

        if len(words) not in (2, 3) or (len(words) == 3 and words[2] != _ACTIVE):
            raise fail(f"expected '<generation> <hex secret> [{_ACTIVE}]'")
        gen = _generation(words[0], fail)
        if gen in generations:
            raise fail(f"generation {gen} is listed twice")
        generations[gen] = _secret(words[1], fail)
        if len(words) == 3:
            active.append(gen)
    if not generations:
        raise KeyFileError(f"{path}: no key generation in the file")
    if len(active) > 1:
        raise KeyFileError(f"{path}: generations {active} are all marked {_ACTIVE}; mark one")
    if not active and len(generations) > 1:
        raise KeyFileError(f"{path}: several generations and none is marked {_ACTIVE}")
    return TenantKeys(tenant, path, generations, active[0] if active else next(iter(generations)))


def derive_sa_key(
    secret: Secret, tenant_id: int, sender_id: int, receiver_id: int, generation: int
) -> Secret:
    """The AEAD key (16-byte key + 4-byte salt) of one SA; both ends compute the same bytes for
    the same direction, and the two directions of a pair get different keys."""
    info = _HKDF_LABEL + struct.pack("!IHHB", tenant_id, sender_id, receiver_id, generation)
    hkdf = HKDF(algorithm=SHA256(), length=AEAD_KEY_BYTES, salt=_HKDF_SALT, info=info)
    return Secret(hkdf.derive(secret.value))


def read_private(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: secret file is missing") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open secret file: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())  # of the file we opened, not of whatever the path names now
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{path}: secret file is not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"{path}: permissions {stat.S_IMODE(st.st_mode):04o} are too open: a secret file "
                "must not be accessible by group or others (chmod 600)"
            )
        try:
            return f.read().decode("ascii")
        except UnicodeDecodeError:
            raise KeyFileError(f"{path}: secret file is not ASCII text") from None
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read secret file: {exc.strerror}") from None


def _generation(word: str, fail: Callable[[str], KeyFileError]) -> int:
    if not word.isdigit() or not 0 <= int(word) <= spi.GENERATION_MAX:
        raise fail(f"generation {word!r} is not a number 0..{spi.GENERATION_MAX}")
    return int(word)


def _secret(word: str, fail: Callable[[str], KeyFileError]) -> Secret:
    # The word is the secret: never echo it into an error message.
    try:
        value = bytes.fromhex(word.removeprefix("0x"))
    except ValueError:
        raise fail("the secret is not hexadecimal") from None
    if len(value) < MIN_SECRET_BYTES:
        raise fail(f"the secret has {len(value)} bytes; at least {MIN_SECRET_BYTES} are required")
    return Secret(value)
