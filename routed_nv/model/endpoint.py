"""What a workload's endpoint is called and how it is attached, without pydantic or the
calculation: `routed-nv endpoint add` (which only talks to the agent) needs these at start-up."""

from __future__ import annotations

import hashlib
from enum import StrEnum

from routed_nv.model import markers

_IFNAMSIZ = 15


class EndpointStyle(StrEnum):
    HOST = "host"  # workload holds /32 and /128 and a default via the host's gateway addresses
    PROXY = "proxy"  # workload holds a /24../64 on-link; the host answers ARP/ND by proxy


def endpoint_link_name(endpoint_name: str) -> str:
    """The host end of the veth of a netns endpoint: rnv-e<name>, shortened with a hash if the
    name does not fit in 15 characters, so it stays stable across restarts."""
    room = _IFNAMSIZ - len(markers.ENDPOINT_LINK_PREFIX)
    if len(endpoint_name) <= room:
        return markers.ENDPOINT_LINK_PREFIX + endpoint_name
    digest = hashlib.sha256(endpoint_name.encode()).hexdigest()[:5]
    return f"{markers.ENDPOINT_LINK_PREFIX}{endpoint_name[: room - 5]}{digest}"
