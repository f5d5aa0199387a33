"""The report's "What encryption costs" tables, from a hand-made report."""

from __future__ import annotations

from routed_nv.bench import report
from routed_nv.bench.results import (
    AeadSpeed,
    Environment,
    Latency,
    Mtu,
    Report,
    TenantsRun,
    Throughput,
    Variant,
    VariantResult,
)


def _result(
    variant: Variant, gbps: float, mtu: int, overhead: int, esp: list[str]
) -> VariantResult:
    return VariantResult(
        variant=variant,
        throughput=[
            Throughput(streams=1, gbps=gbps, retransmits=0, cpu_busy=1, cpu_s_per_gbit=1 / gbps)
        ],
        latency=Latency(transactions=10, size=64, p50_us=100, p99_us=200),
        mtu=Mtu(computed=mtu, overhead=overhead, fits=True, next_fails=True),
        esp=esp,
    )


REPORT = Report(
    environment=Environment(
        kernel="6.1",
        uml=True,
        cpus=1,
        cpu_model="x",
        crypto={},
        iperf3="iperf 3",
        mode="quick",
        openssl=[
            AeadSpeed(algorithm="aes-128-gcm", size=1024, bytes_per_second=1e9),
            AeadSpeed(algorithm="aes-128-gcm", size=8192, bytes_per_second=2e9),
            AeadSpeed(algorithm="chacha20-poly1305", size=1024, bytes_per_second=5e8),
            AeadSpeed(algorithm="chacha20-poly1305", size=8192, bytes_per_second=1e9),
        ],
        openssl_version="OpenSSL 3",
        host_load="1.00 1.00 1.00 1/100 1",
        uml_processes=13,
    ),
    variants=[
        _result(Variant.UNDERLAY, 8.0, 1500, 0, []),
        _result(Variant.ROUTED, 0.4, 1426, 74, ["aead rfc4106(gcm(aes))"]),
        _result(Variant.ROUTED_NONE, 2.0, 1450, 50, ["enc ecb(cipher_null)"]),
    ],
    projections=[],
    tenants=[
        TenantsRun(
            tenants=1,
            streams=4,
            gbps=0.4,
            per_stream_gbps=[0.4],
            cpu_busy=[1.0],
            cpu_s_per_gbit=2.5,
        ),
    ],
)


def test_protection_rows_go_from_no_esp_to_aes_gcm_with_ratios() -> None:
    rows = report.protection_rows(REPORT)
    assert [r[0] for r in rows] == [Variant.UNDERLAY, Variant.ROUTED_NONE, Variant.ROUTED]
    none = rows[1]
    assert none[1:5] == ["none", "enc ecb(cipher_null)", "2.000 (0.25x)", "5.00x"]
    assert none[7:] == [50, 1450]
    assert rows[0][1:3] == ["no ESP", "-"]


def test_user_space_aead_in_gbit_per_size_marked_not_esp() -> None:
    assert report.aead_rows(REPORT) == [
        ["aes-128-gcm", "8.00", "16.00"],
        ["chacha20-poly1305", "4.00", "8.00"],
    ]
    text = report.tables(REPORT)
    assert "| algorithm | 1024 B | 8192 B |" in text and "NOT ESP" in text
    assert "1.00 1.00 1.00 1/100 1; 13 linux.uml processes" in text
    assert "| 1 | 4 | 0.400 | 0.400 | 100% | 2.50 |" in text
