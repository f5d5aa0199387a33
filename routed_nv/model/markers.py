"""Every marker by which routed_nv recognises its own kernel and daemon objects.

A restarted agent has no memory: it finds what it owns by these markers alone, diffs that against
the desired state and removes only what carries them. Keep every such number and prefix here so
that two modules can never disagree, and so that operators have one place to read them (the
iproute2 names in configs/iproute2/ mirror these values).
"""

from __future__ import annotations

# Link names (IFNAMSIZ is 16 including NUL: at most 15 characters).
HOST_DEVICE = "rnv0"  # dummy device that carries the host and tenant outer addresses
VRF_PREFIX = "rnv-v"  # rnv-v<tenant>: one VRF per tenant
TUNNEL_PREFIX = "rnv-t"  # rnv-t<tenant>: one NBMA ip6tnl per tenant, enslaved to its VRF
ENDPOINT_LINK_PREFIX = "rnv-e"  # host end of a veth pair routed_nv made into a workload's netns

# Route protocol numbers (rtm_protocol); /etc/iproute2/rt_protos.d/routed-nv.conf names them.
RTPROT_ENDPOINT = 230  # routes to workloads on this host (published to the directory)
RTPROT_REMOTE = 231  # routes to workloads on other hosts (learned from the directory)
RTPROT_INFRA = 232  # unreachable defaults, other plumbing routes, the local-table rule
# In the publish table, instead of RTPROT_ENDPOINT: a local address another host announced with
# a newer mobility sequence (the metric keeps that sequence). BIRD does not learn it, so this
# host stops announcing the address; the route stays so that a restarted agent knows.
RTPROT_STALE = 233

# Routing tables. Tenant ids are 1..65535, so tables are offset to stay clear of the kernel's
# reserved ids (253 default, 254 main, 255 local) and of tables an operator already uses.
TENANT_ID_MIN = 1
TENANT_ID_MAX = 65535
VRF_TABLE_BASE = 0x1000_0000  # the tenant VRF's own table
PUBLISH_TABLE_BASE = 0x2000_0000  # the tenant's local endpoints, learned by BIRD's kernel protocol
MIRROR_TABLE_BASE = 0x3000_0000  # the tenant's remote endpoints from BIRD, watched by the agent

# XFRM: one reqid per tenant; states and policies with a reqid in this range are ours.
REQID_BASE = 0x0001_0000
# Catch-all block policies sit below every real policy (a higher number is a lower priority).
XFRM_BLOCK_PRIORITY = 2_000_000
XFRM_POLICY_PRIORITY = 1_000
# IKE mode: charon's own per-peer policies (pinned to the current SPI) sit above ours. Same reqid,
# other priority: the XFRM driver leaves them to charon.
IKE_POLICY_PRIORITY = 500

# Netfilter chains and strongSwan connection names.
CHAIN_PREFIX = "RNV-"
IKE_CONN_PREFIX = "rnv-"

# Gateway addresses every workload sees on its host-facing interface.
GATEWAY_V4 = "169.254.0.1"
GATEWAY_V6 = "fe80::1"


def vrf_name(tenant_id: int) -> str:
    return f"{VRF_PREFIX}{tenant_id}"


def tunnel_name(tenant_id: int) -> str:
    return f"{TUNNEL_PREFIX}{tenant_id}"


def vrf_table(tenant_id: int) -> int:
    return VRF_TABLE_BASE + tenant_id


def publish_table(tenant_id: int) -> int:
    return PUBLISH_TABLE_BASE + tenant_id


def is_publish_table(table: int) -> bool:
    return PUBLISH_TABLE_BASE + TENANT_ID_MIN <= table <= PUBLISH_TABLE_BASE + TENANT_ID_MAX


def mirror_table(tenant_id: int) -> int:
    return MIRROR_TABLE_BASE + tenant_id


def reqid(tenant_id: int) -> int:
    return REQID_BASE + tenant_id


def tenant_of_reqid(value: int) -> int | None:
    """The tenant a reqid belongs to, or None if the reqid is not routed_nv's."""
    tenant = value - REQID_BASE
    return tenant if TENANT_ID_MIN <= tenant <= TENANT_ID_MAX else None


def tenant_of_link(name: str) -> int | None:
    """The tenant of one of our per-tenant links (VRF or tunnel), or None if it is not ours."""
    for prefix in (VRF_PREFIX, TUNNEL_PREFIX):
        rest = name.removeprefix(prefix)
        if rest != name and rest.isdigit() and rest == str(int(rest)):
            tenant = int(rest)
            if TENANT_ID_MIN <= tenant <= TENANT_ID_MAX:
                return tenant
    return None
