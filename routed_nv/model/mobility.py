"""How a directory route carries its tenant and its mobility sequence (docs/directory.md).

BGP: every endpoint route carries the large community (ASN, 1, tenant); an endpoint that moved
also carries (ASN, 2, sequence), set by the host that now holds it (RFC 7432 §15 style: one more
than the highest sequence it saw for that endpoint elsewhere). Endpoints that never moved have no
sequence community, so their attributes stay shared between routes (per-route attributes cost
4-5x the memory in BIRD).

Receivers: the tenant pipe sets local_pref = 100 + sequence on moved endpoints' routes, so
BIRD's best path (which alone reaches the mirror table) is the newest location; equal sequences
fall to BGP's usual tie-breaks (lowest router id), the same on every host.

Kernel: in the publish table the sequence is the route metric above the kernel's default for
the family (IPv4 0, IPv6 1024), so a publish route written without a metric means "sequence 0".
In the mirror table it is the route's `window` metric (RTAX_WINDOW, BIRD's krt_window), set only
on moved endpoints' routes: not the route metric, which stays fixed (BIRD 2.0.12 replaces kernel
routes in place and would leave the old location behind if the metric changed with the best
path), and not the realm (IPv4 only). A window clamps TCP windows of connections routed through
the route; nothing is routed through a mirror table, so it is inert there.
Which host announces an address held by more than one is decided in calc/mobility.py.
"""

from __future__ import annotations

from routed_nv.model.routing import DEFAULT_METRIC

TENANT_COMMUNITY = 1  # (ASN, 1, tenant id)
SEQUENCE_COMMUNITY = 2  # (ASN, 2, sequence), only on endpoints that moved
MAX_SEQUENCE = 0xFFFF_FFFF - DEFAULT_METRIC[6]  # so that the IPv6 metric stays a u32
MIRROR_SEQUENCE = "krt_window"  # the mirror route attribute (netlink_watch reads RTAX_WINDOW)
# How many tenant communities a route carries, written into its mirror route only when that is
# more than one (learn refuses such a route: one route, one tenant). advmss, like window, is a
# metric that does not key the route and is inert in a table nothing forwards through.
MIRROR_TENANTS = "krt_advmss"  # netlink_watch reads RTAX_ADVMSS


def metric_for(sequence: int, version: int) -> int:
    """The metric of a publish-table route that carries a sequence (the routing driver's)."""
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise ValueError(f"mobility sequence {sequence} is out of range 0..{MAX_SEQUENCE}")
    return DEFAULT_METRIC[version] + sequence
