"""User-space AEAD speeds (`openssl speed -evp`): what this machine's CPU does with AES-NI and
SIMD, as a reference for real hardware. Not ESP: the UML guest's kernel has only generic C
crypto, and no kernel work (packets, copies, TCP) is in these figures."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from routed_nv.bench import parse
from routed_nv.bench.results import AeadSpeed

ALGORITHMS = ("aes-128-gcm", "chacha20-poly1305")
SIZES = (1024, 8192, 16384)


def version() -> str:
    try:
        done = subprocess.run(["openssl", "version"], capture_output=True, text=True, check=False)
    except OSError:
        return ""
    return done.stdout.strip()


def speeds(seconds: int, sizes: Sequence[int] = SIZES) -> list[AeadSpeed]:
    """One `openssl speed` run per algorithm and size; [] when openssl is not installed."""
    results = []
    for algorithm in ALGORITHMS:
        for size in sizes:
            argv = ["openssl", "speed", "-mr", "-seconds", str(seconds), "-bytes", str(size)]
            try:
                done = subprocess.run(
                    [*argv, "-evp", algorithm],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=seconds * 10 + 30,
                )
            except OSError:
                return []
            results.append(
                AeadSpeed(
                    algorithm=algorithm,
                    size=size,
                    bytes_per_second=parse.openssl_speed(done.stdout),
                )
            )
    return results
