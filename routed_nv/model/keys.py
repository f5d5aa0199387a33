"""Static keying's pure half: a tenant's key generations and the HKDF derivation of every SA key
from them (the file format and its reading: esp/keys.py; why: docs/keys.md).

This is the only module that imports `cryptography`.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from routed_nv.errors import RoutedNvError
from routed_nv.model.secret import Secret

MIN_SECRET_BYTES = 32
AEAD_KEY_BYTES = 16 + 4  # AES-128 key + the 4-byte salt (nonce prefix) of rfc4106(gcm(aes))
_HKDF_SALT = b"routed_nv static keying"
_HKDF_LABEL = b"routed_nv/esp/v1 rfc4106(gcm(aes)) 128"


class KeyFileError(RoutedNvError):
    """A secret file that cannot be used; the message names the file (and line), never the key."""


@dataclass(frozen=True)
class TenantKeys:
    tenant: str
    path: Path
    generations: Mapping[int, Secret]  # generation -> secret, all accepted on receive
    active: int  # the generation used for sending


# Each tenant's keys as the caller read them, or why they could not be used: the calculation
# reads no files, and reports a tenant's error only if that tenant needs SAs.
LoadedKeys = Mapping[str, TenantKeys | KeyFileError]


def derive_sa_key(
    secret: Secret, tenant_id: int, sender_id: int, receiver_id: int, generation: int
) -> Secret:
    """The AEAD key (16-byte key + 4-byte salt) of one SA; both ends compute the same bytes for
    the same direction, and the two directions of a pair get different keys."""
    info = _HKDF_LABEL + struct.pack("!IHHB", tenant_id, sender_id, receiver_id, generation)
    hkdf = HKDF(algorithm=SHA256(), length=AEAD_KEY_BYTES, salt=_HKDF_SALT, info=info)
    return Secret(hkdf.derive(secret.value))
