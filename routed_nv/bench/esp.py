"""The XFRM algorithm of each protection mode, as `ip xfrm state add` takes it, for the variants
that program their SAs themselves (vxlan+ipsec, and routed_nv's modes until the datapath has
its own per-tenant `protection` key)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from routed_nv.bench.results import Protection

ICV_BITS = 128


@dataclass(frozen=True)
class Cipher:
    algorithm: str  # the kernel's name (/proc/crypto)
    key_bytes: int  # key + salt (nonce prefix) as XFRM takes it

    def clause(self, key: str) -> str:
        """The algorithm part of `ip xfrm state add` with a hex key."""
        if not self.key_bytes:
            return f"enc '{self.algorithm}' ''"  # null cipher, no integrity: no key, no ICV
        return f"aead '{self.algorithm}' 0x{key} {ICV_BITS}"

    def new_key(self) -> str:
        return secrets.token_hex(self.key_bytes)


CIPHERS = {
    Protection.AES_GCM: Cipher("rfc4106(gcm(aes))", 16 + 4),  # AES-128 key + 4-byte salt
    Protection.CHACHA20_POLY1305: Cipher("rfc7539esp(chacha20,poly1305)", 32 + 4),
    Protection.INTEGRITY: Cipher("rfc4543(gcm(aes))", 16 + 4),
    Protection.NONE: Cipher("ecb(cipher_null)", 0),
}
