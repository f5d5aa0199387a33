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
from routed_nv.model.protection import DEFAULT, Protection, suite
from routed_nv.model.secret import Secret

MIN_SECRET_BYTES = 32
_HKDF_SALT = b"routed_nv static keying"


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
    secret: Secret,
    tenant_id: int,
    sender_id: int,
    receiver_id: int,
    generation: int,
    protection: Protection = DEFAULT,
) -> Secret:
    """The key (+ salt) of one SA in the given mode (AES-GCM: 16-byte key + 4-byte salt); both
    ends compute the same bytes for the same direction, and the two directions of a pair get
    different keys. The mode's label is part of the HKDF info: each mode has its own keys."""
    cipher = suite(protection)
    if not cipher.key_bytes:  # NULL encryption: nothing to derive
        return Secret(b"")
    info = cipher.hkdf_label + struct.pack("!IHHB", tenant_id, sender_id, receiver_id, generation)
    hkdf = HKDF(algorithm=SHA256(), length=cipher.key_bytes, salt=_HKDF_SALT, info=info)
    return Secret(hkdf.derive(secret.value))
