"""Bytes each variant adds to a workload's IP packet on the underlay, and the workload MTU.

All variants here run over an IPv6 underlay, ESP in transport mode. Every protection mode's
cipher is a stream cipher (GCM, ChaCha20, GMAC, null: block size 1), so RFC 4303 only asks that
payload + trailer end on a 4-byte boundary, and the overhead varies by up to 3 bytes with the
payload length. The modes differ in the explicit IV and the ICV: AES-GCM (rfc4106), ChaCha20-
Poly1305 (rfc7539esp) and AES-GMAC (rfc4543) all carry an 8-byte IV and a 16-byte ICV; null
encryption without integrity carries neither.
"""

from __future__ import annotations

from dataclasses import dataclass

from routed_nv.bench.results import PROTECTION, Protection, Variant

IPV6 = 40
UDP = 8
VXLAN = 8
ETHERNET = 14  # the inner frame VXLAN carries (no FCS, no VLAN tag)
ESP_HEADER = 8  # SPI + sequence number
GCM_IV = 8  # explicit per-packet IV of rfc4106
GCM_ICV = 16
ESP_TRAILER = 2  # pad length + next header
ESP_ALIGN = 4


@dataclass(frozen=True)
class EspFields:
    iv: int
    icv: int


ESP_FIELDS = {
    Protection.AES_GCM: EspFields(GCM_IV, GCM_ICV),
    Protection.CHACHA20_POLY1305: EspFields(8, 16),  # RFC 7634: 64-bit IV, 128-bit tag
    Protection.INTEGRITY: EspFields(8, 16),  # RFC 4543: GMAC keeps GCM's IV and tag
    Protection.NONE: EspFields(0, 0),  # RFC 2410 null cipher, no integrity algorithm
}


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


def esp_transport(payload: int, protection: Protection = Protection.AES_GCM) -> int:
    """ESP header + IV + padded payload and trailer + ICV for `payload` bytes after the header."""
    fields = ESP_FIELDS[protection]
    return ESP_HEADER + fields.iv + _align(payload + ESP_TRAILER, ESP_ALIGN) + fields.icv


def outer_size(variant: Variant, inner: int) -> int:
    """Size on the underlay of a workload IP packet of `inner` bytes."""
    vxlan_payload = UDP + VXLAN + ETHERNET + inner
    protection = PROTECTION[variant]
    match variant:
        case Variant.UNDERLAY:
            return inner
        case Variant.VXLAN:
            return IPV6 + vxlan_payload
        case Variant.VXLAN_IPSEC | Variant.VXLAN_IPSEC_CHACHA if protection:
            # ESP sits between IPv6 and UDP
            return IPV6 + esp_transport(vxlan_payload, protection)
        case _ if protection:
            # routed_nv: outer IPv6 / ESP / inner IP (next header 4, 41)
            return IPV6 + esp_transport(inner, protection)
    raise ValueError(variant)


def workload_mtu(variant: Variant, underlay_mtu: int = 1500) -> int:
    """The largest workload packet whose outer packet still fits the underlay MTU."""
    inner = underlay_mtu
    while outer_size(variant, inner) > underlay_mtu:
        inner -= 1
    return inner


def overhead(variant: Variant, underlay_mtu: int = 1500) -> int:
    """Bytes added to a packet of exactly the workload MTU."""
    mtu = workload_mtu(variant, underlay_mtu)
    return outer_size(variant, mtu) - mtu
