"""What `endpoint add` checks on this host before it changes anything (issue 17 items 8, 9).

Plain functions, so that every way of adding an endpoint (the CLI, the agent's endpoint API) can
ask the same questions. Only the standard library: `endpoint add` must stay quick.
"""

from __future__ import annotations

import socket

from routed_nv.model import markers
from routed_nv.model.endpoint import endpoint_link_name


def missing_interface(name: str) -> str | None:
    """Why the interface cannot be found in this network namespace, or None when it exists.

    if_nametoindex asks the kernel of the namespace the command runs in, so `ip netns exec
    host1 routed-nv endpoint add ...` checks host1's links."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return f"interface {name} does not exist in this host's network namespace"
    return None


def shortened_link(endpoint: str) -> str | None:
    """A note when a netns endpoint's host-side veth does not carry the endpoint's whole name:
    link names have at most 15 characters, so longer names are cut and end in a hash (stable
    across restarts, calc/routing.py)."""
    link = endpoint_link_name(endpoint)
    if link == markers.ENDPOINT_LINK_PREFIX + endpoint:
        return None
    room = 15 - len(markers.ENDPOINT_LINK_PREFIX)
    return (
        f"the host side of its veth is {link}: link names have at most 15 characters, so a "
        f"name longer than {room} is cut and ends in a hash"
    )
