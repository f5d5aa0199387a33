"""A tenant's protection mode: which ESP transform its SAs use, and what that costs on the wire.

Every mode is ESP between the tenant outer addresses, so the SPI (and the SA it names) binds each
packet to its tenant in all of them (docs/isolation.md); the modes differ in what else the SA
guarantees. The numbers are the kernel's for transport mode over IPv6 (esp6.c): ESP header 8,
the transform's IV and ICV, and a trailer (pad length + next header, 2) padded to the cipher's
block size, at least 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

IPV6_HEADER = 40  # the ip6tnl's outer header, which ESP transport mode protects
ESP_HEADER = 8  # SPI + sequence number
ESP_TRAILER = 2  # pad length + next header


class Protection(StrEnum):
    AES_GCM = "aes-gcm"
    CHACHA20_POLY1305 = "chacha20-poly1305"
    INTEGRITY = "integrity"
    NONE = "none"


@dataclass(frozen=True)
class Suite:
    """How one mode is spelled for the kernel (XFRM), for strongSwan, and what it adds. The
    defaults are those of the three AEADs (RFC 4106, 7634, 4543 for ESP): a 4-byte salt after
    the key, an 8-byte IV, a 128-bit ICV."""

    protection: Protection
    algorithm: str  # the XFRM algorithm, as `ip xfrm state` prints it back
    key_bits: int  # the cipher key, without the salt
    esp_proposal: str | None  # strongSwan's ESP proposal keyword; None: IKE cannot do this mode
    aead: bool = True  # an `aead` transform (key + salt, ICV); else `enc` alone, with no `auth`
    salt_bytes: int = 4  # the nonce prefix appended to the key
    icv_bits: int = 128
    iv_bytes: int = 8
    block_bytes: int = 4  # the payload + trailer is padded to a multiple of this

    @property
    def key_bytes(self) -> int:
        return self.key_bits // 8 + self.salt_bytes

    @property
    def hkdf_label(self) -> bytes:
        """Names the transform and key length, so that every mode derives its own keys (a mode
        change is a new key); the AES-GCM label is the one static keying always had."""
        return f"routed_nv/esp/v1 {self.algorithm} {self.key_bits}".encode()

    def workload_mtu(self, underlay_mtu: int) -> int:
        """The largest inner packet whose ESP packet fits the underlay MTU."""
        room = underlay_mtu - IPV6_HEADER - ESP_HEADER - self.iv_bytes - self.icv_bits // 8
        return room // self.block_bytes * self.block_bytes - ESP_TRAILER

    def overhead(self, underlay_mtu: int) -> int:
        """What the mode adds to an inner packet of the workload MTU (74 for AES-GCM at 1500)."""
        return underlay_mtu - self.workload_mtu(underlay_mtu)


SUITES = {
    s.protection: s
    for s in (
        Suite(Protection.AES_GCM, "rfc4106(gcm(aes))", 128, "aes128gcm16"),
        Suite(
            Protection.CHACHA20_POLY1305, "rfc7539esp(chacha20,poly1305)", 256, "chacha20poly1305"
        ),
        # AES-GMAC (RFC 4543): the payload is authenticated, not encrypted
        Suite(Protection.INTEGRITY, "rfc4543(gcm(aes))", 128, "aes128gmac"),
        # NULL encryption and no ICV: the kernel allows ESP without `auth`; strongSwan does not
        # negotiate it (docs/ike.md), so the mode is static keying's only.
        Suite(
            Protection.NONE,
            "ecb(cipher_null)",
            0,
            None,
            aead=False,
            salt_bytes=0,
            icv_bits=0,
            iv_bytes=0,
        ),
    )
}

DEFAULT = Protection.AES_GCM


def suite(protection: Protection) -> Suite:
    return SUITES[protection]
