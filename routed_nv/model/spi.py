"""The SPI plan for static/derived keying: the SPI names tenant, sender and key generation.

    bit 31            16 15                          2 1   0
       +----------------+-----------------------------+-----+
       | tenant (16)    | sender slot = host id (14)  | gen |
       +----------------+-----------------------------+-----+

The receiver looks an SA up by (destination, SPI). The destination is already per tenant (the
tenant outer address), and the SPI carries the sender, so two peers can never collide at one
receiver; the generation lets an old and a new key coexist during a rotation. Tenant 0 and host 0
are never used, so every SPI is >= 0x10000 and the RFC 4303 reserved range 0..255 cannot occur.
See docs/spi-plan.md. In IKE mode charon allocates SPIs and this plan does not apply.
"""

from __future__ import annotations

from dataclasses import dataclass

from routed_nv.errors import RoutedNvError

TENANT_BITS = 16
SENDER_BITS = 14
GENERATION_BITS = 2

TENANT_MAX = (1 << TENANT_BITS) - 1  # 65535 tenants (1..65535)
SENDER_MAX = (1 << SENDER_BITS) - 1  # 16383 hosts (1..16383)
GENERATION_MAX = (1 << GENERATION_BITS) - 1  # 4 generations (0..3) in flight at once
RESERVED_MAX = 255  # RFC 4303 section 2.1: SPIs 1..255 are reserved by IANA, 0 is "no SA"

_SENDER_SHIFT = GENERATION_BITS
_TENANT_SHIFT = GENERATION_BITS + SENDER_BITS


class SpiExhausted(RoutedNvError, ValueError):
    """A tenant, host or generation does not fit the SPI plan."""


@dataclass(frozen=True, order=True)
class SpiFields:
    tenant_id: int
    sender_id: int
    generation: int


def encode(tenant_id: int, sender_id: int, generation: int) -> int:
    _check("tenant id", tenant_id, 1, TENANT_MAX)
    _check("sender host id", sender_id, 1, SENDER_MAX)
    _check("key generation", generation, 0, GENERATION_MAX)
    spi = (tenant_id << _TENANT_SHIFT) | (sender_id << _SENDER_SHIFT) | generation
    # tenant >= 1 puts the SPI at >= 2**16, far above the reserved range.
    assert spi > RESERVED_MAX, spi
    return spi


def decode(spi: int) -> SpiFields:
    """The fields of an SPI made by encode(); SpiExhausted if no valid triple produces it."""
    if not 0 <= spi <= 0xFFFF_FFFF:
        raise SpiExhausted(f"SPI {spi} is not a 32-bit value")
    fields = SpiFields(
        tenant_id=spi >> _TENANT_SHIFT,
        sender_id=(spi >> _SENDER_SHIFT) & SENDER_MAX,
        generation=spi & GENERATION_MAX,
    )
    if fields.tenant_id == 0 or fields.sender_id == 0:
        raise SpiExhausted(f"SPI 0x{spi:08x} is not in routed_nv's SPI plan (tenant or host is 0)")
    return fields


def _check(what: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise SpiExhausted(f"{what} {value} does not fit the SPI plan: it holds {lo}..{hi}")
