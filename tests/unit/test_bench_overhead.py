"""Per-packet overhead and workload MTU arithmetic of the benchmark variants."""

from __future__ import annotations

import pytest

from routed_nv.bench import overhead
from routed_nv.bench.results import PROTECTION, Variant
from routed_nv.model.protection import Protection, suite


@pytest.mark.parametrize(
    ("variant", "mtu", "bytes_added"),
    [
        (Variant.UNDERLAY, 1500, 0),
        (Variant.ROUTED, 1426, 74),  # 40 + 8 + 8 + 2 + 16, no padding at 1426
        (Variant.VXLAN, 1430, 70),  # 40 + 8 + 8 + 14
        (Variant.VXLAN_IPSEC, 1396, 104),  # 70 + 34 of ESP
        # ChaCha20-Poly1305 and AES-GMAC carry GCM's 8-byte IV and 16-byte ICV
        (Variant.ROUTED_CHACHA, 1426, 74),
        (Variant.ROUTED_INTEGRITY, 1426, 74),
        (Variant.VXLAN_IPSEC_CHACHA, 1396, 104),
        # null encryption, no ICV: 40 + 8 + 2, and 1450 + 2 is already a multiple of 4
        (Variant.ROUTED_NONE, 1450, 50),
    ],
)
def test_workload_mtu_and_overhead_on_a_1500_underlay(
    variant: Variant, mtu: int, bytes_added: int
) -> None:
    assert overhead.workload_mtu(variant) == mtu
    assert overhead.overhead(variant) == bytes_added
    assert overhead.outer_size(variant, mtu) <= 1500 < overhead.outer_size(variant, mtu + 1)


@pytest.mark.parametrize("variant", [v for v in Variant if v.startswith("routed_nv")])
def test_every_routed_mode_agrees_with_the_datapath(variant: Variant) -> None:
    mode = suite(PROTECTION[variant])  # type: ignore[arg-type]
    assert overhead.workload_mtu(variant) == mode.workload_mtu(1500)
    assert overhead.overhead(variant) == mode.overhead(1500)


def test_esp_pads_payload_and_trailer_to_four_bytes() -> None:
    # 8 header + 8 IV + 16 ICV = 32, plus payload + 2 rounded up to a multiple of 4
    assert [overhead.esp_transport(n) for n in (2, 3, 4, 5, 6)] == [36, 40, 40, 40, 40]
    assert overhead.esp_transport(7) == 44


def test_null_esp_pads_but_has_no_iv_or_icv() -> None:
    none = Protection.NONE
    assert [overhead.esp_transport(n, none) for n in (2, 3, 4, 5, 6)] == [12, 16, 16, 16, 16]
    # 1451 + 2 rounds up to 1456: 40 + 8 + 1456 = 1504 would not fit 1500
    assert overhead.outer_size(Variant.ROUTED_NONE, 1451) == 1504


def test_jumbo_underlay_moves_every_mtu_by_the_same_overhead() -> None:
    for variant in Variant:
        assert overhead.workload_mtu(variant, 9000) - overhead.workload_mtu(variant) == 7500
