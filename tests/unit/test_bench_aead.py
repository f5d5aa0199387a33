"""User-space AEAD speeds from the real `openssl speed` (installed by scripts/bootstrap)."""

from __future__ import annotations

from routed_nv.bench import aead


def test_openssl_speed_of_both_aeads() -> None:
    speeds = aead.speeds(1, sizes=(1024,))
    assert [(s.algorithm, s.size) for s in speeds] == [
        ("aes-128-gcm", 1024),
        ("chacha20-poly1305", 1024),
    ]
    assert all(s.bytes_per_second > 1e6 for s in speeds)  # any CPU does more than 1 MB/s
    assert aead.version().startswith("OpenSSL")
