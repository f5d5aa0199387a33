"""Bytes each variant adds to a workload's IP packet on the underlay, and the workload MTU.

All variants here run over an IPv6 underlay. ESP is AES-GCM-128 (rfc4106) in transport mode:
GCM is a stream mode, so RFC 4303 only asks that payload + trailer end on a 4-byte boundary,
and the overhead varies by up to 3 bytes with the payload length.
"""

from __future__ import annotations

from routed_nv.bench.results import Variant

IPV6 = 40
UDP = 8
VXLAN = 8
ETHERNET = 14  # the inner frame VXLAN carries (no FCS, no VLAN tag)
ESP_HEADER = 8  # SPI + sequence number
GCM_IV = 8  # explicit per-packet IV of rfc4106
GCM_ICV = 16
ESP_TRAILER = 2  # pad length + next header
ESP_ALIGN = 4


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


def esp_transport(payload: int) -> int:
    """ESP header + IV + padded payload and trailer + ICV for `payload` bytes after the header."""
    return ESP_HEADER + GCM_IV + _align(payload + ESP_TRAILER, ESP_ALIGN) + GCM_ICV


def outer_size(variant: Variant, inner: int) -> int:
    """Size on the underlay of a workload IP packet of `inner` bytes."""
    vxlan_payload = UDP + VXLAN + ETHERNET + inner
    match variant:
        case Variant.UNDERLAY:
            return inner
        case Variant.ROUTED:
            return IPV6 + esp_transport(inner)  # outer IPv6 / ESP / inner IP (next header 4, 41)
        case Variant.VXLAN:
            return IPV6 + vxlan_payload
        case Variant.VXLAN_IPSEC:
            return IPV6 + esp_transport(vxlan_payload)  # ESP sits between IPv6 and UDP
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
