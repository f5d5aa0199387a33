from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from routed_nv.model import spi

tenants = st.integers(1, spi.TENANT_MAX)
senders = st.integers(1, spi.SENDER_MAX)
generations = st.integers(0, spi.GENERATION_MAX)
Fields = tuple[int, int, int]


@given(tenants, senders, generations)
def test_round_trip(tenant: int, sender: int, generation: int) -> None:
    assert spi.decode(spi.encode(tenant, sender, generation)) == spi.SpiFields(
        tenant, sender, generation
    )


@given(st.tuples(tenants, senders, generations), st.tuples(tenants, senders, generations))
def test_distinct_fields_give_distinct_spis(
    a: tuple[int, int, int], b: tuple[int, int, int]
) -> None:
    assert (spi.encode(*a) == spi.encode(*b)) == (a == b)


@given(tenants, senders, generations)
def test_never_reserved_and_fits_32_bits(tenant: int, sender: int, generation: int) -> None:
    assert spi.RESERVED_MAX < spi.encode(tenant, sender, generation) <= 0xFFFF_FFFF


def test_layout_is_the_documented_one() -> None:
    assert spi.encode(100, 2, 1) == (100 << 16) | (2 << 2) | 1 == 0x00640009
    assert spi.encode(spi.TENANT_MAX, spi.SENDER_MAX, spi.GENERATION_MAX) == 0xFFFF_FFFF


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ((0, 1, 0), "tenant id 0 does not fit the SPI plan: it holds 1..65535"),
        ((65536, 1, 0), "tenant id 65536 does not fit"),
        ((1, 16384, 0), "sender host id 16384 does not fit the SPI plan: it holds 1..16383"),
        ((1, 0, 0), "sender host id 0 does not fit"),
        ((1, 1, 4), "key generation 4 does not fit the SPI plan: it holds 0..3"),
    ],
)
def test_out_of_range_is_exhausted(fields: tuple[int, int, int], message: str) -> None:
    with pytest.raises(spi.SpiExhausted, match=message):
        spi.encode(*fields)


@pytest.mark.parametrize("value", [0, 255, 0xFFFF, 0x0064_0000, 2**32])
def test_decode_rejects_spis_outside_the_plan(value: int) -> None:
    with pytest.raises(spi.SpiExhausted):
        spi.decode(value)
