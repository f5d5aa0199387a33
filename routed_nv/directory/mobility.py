"""How a directory route carries its tenant and its mobility sequence (docs/directory.md).

BGP: every endpoint route carries the large community (ASN, 1, tenant); an endpoint that moved
also carries (ASN, 2, sequence), set by the host that now holds it (RFC 7432 §15 style: one more
than the highest sequence it saw for that endpoint elsewhere). Endpoints that never moved have no
sequence community, so their attributes stay shared between routes (per-route attributes cost
4-5x the memory in BIRD).

Kernel: in both the publish and the mirror tables the sequence is the route metric above the
kernel's default for the family (IPv4 0, IPv6 1024), so a publish route written without a metric
means "sequence 0" and the agent reads the winning sequence straight off the mirror table.
"""

from __future__ import annotations

from routed_nv.routing.objects import DEFAULT_METRIC

TENANT_COMMUNITY = 1  # (ASN, 1, tenant id)
SEQUENCE_COMMUNITY = 2  # (ASN, 2, sequence), only on endpoints that moved
MAX_SEQUENCE = 0xFFFF_FFFF - DEFAULT_METRIC[6]  # so that the IPv6 metric stays a u32


def metric_for(sequence: int, version: int) -> int:
    """The publish/mirror route metric that carries a sequence."""
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise ValueError(f"mobility sequence {sequence} is out of range 0..{MAX_SEQUENCE}")
    return DEFAULT_METRIC[version] + sequence


def sequence_of(metric: int, version: int) -> int | None:
    """The sequence a mirror route's metric carries, or None if it is below the family's base."""
    sequence = metric - DEFAULT_METRIC[version]
    return sequence if sequence >= 0 else None
