"""Shared pieces of test configs: one host section, so a change to the host model is made once."""

from __future__ import annotations

from typing import Any

HOST1: dict[str, Any] = {
    "name": "host1",
    "id": 1,
    "underlay_prefix": "2001:db8:0:1::/64",
    "underlay_aggregate": "2001:db8::/48",
    "uplink": "eth0",
}
