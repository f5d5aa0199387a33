"""The XFRM objects routed_nv owns, as the calculation wants them and as the kernel reports them.

Both sides use the same frozen types, so `key()` identifies an object the way the kernel does and
equality of the whole object says whether it needs changing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from routed_nv.model import markers
from routed_nv.model.secret import Secret

AEAD_ALGORITHM = "rfc4106(gcm(aes))"
ICV_BITS = 128
REPLAY_WINDOW = 64
# The inner protocols a tenant tunnel carries: IPv4-in-IPv6 and IPv6-in-IPv6. Never ICMPv6, so
# PMTUD on the underlay keeps working.
TUNNELLED_PROTOS = (4, 41)

StateKey = tuple[ipaddress.IPv6Address, int]


@dataclass(frozen=True)
class SaCounters:
    """An SA's counters as the kernel keeps them (`ip -s xfrm state`)."""

    bytes: int
    packets: int
    errors: int  # dropped: outside the replay window, replayed, or failed integrity/decryption


PolicyKey = tuple[str, ipaddress.IPv6Network, ipaddress.IPv6Network, int]


class Direction(StrEnum):
    OUT = "out"
    IN = "in"


class Action(StrEnum):
    ALLOW = "allow"
    BLOCK = "block"


@dataclass(frozen=True)
class XfrmState:
    """One ESP SA in transport mode with an AEAD key."""

    src: ipaddress.IPv6Address
    dst: ipaddress.IPv6Address
    spi: int
    reqid: int
    key_material: Secret  # the key (+ salt) of the transform; repr is redacted
    mode: str = "transport"
    replay_window: int = REPLAY_WINDOW
    algorithm: str = AEAD_ALGORITHM
    icv_bits: int = ICV_BITS
    # An `aead` transform (the protection modes but `none`); else `enc` alone, with no `auth`:
    # ESP with NULL encryption and no ICV (model/protection.py).
    aead: bool = True
    # Outbound sequence counter: read back from the kernel, or where a new SA starts
    # (esp/seqres.py). It moves with every packet, so it is no part of what the SA should be.
    oseq: int = field(default=0, compare=False)

    def key(self) -> StateKey:
        # The kernel finds an SA by (destination, SPI, protocol); the protocol is always ESP.
        return (self.dst, self.spi)

    @property
    def tenant_id(self) -> int | None:
        return markers.tenant_of_reqid(self.reqid)

    def describe(self) -> str:
        return (
            f"state src {self.src} dst {self.dst} spi 0x{self.spi:08x} reqid {self.reqid} "
            f"mode {self.mode} replay-window {self.replay_window}{self._oseq()} "
            f"{self.transform('<key redacted>')}"
        )

    def transform(self, key: str) -> str:
        """The transform's words as iproute2 takes them, with `key` standing for the key."""
        if self.aead:
            return f"aead {self.algorithm} {key} {self.icv_bits}"
        return f"enc {self.algorithm} {key}"

    def _oseq(self) -> str:
        return f" replay-oseq {self.oseq}" if self.oseq else ""


@dataclass(frozen=True)
class XfrmPolicy:
    """A policy on one inner protocol: either ESP-required (with a template) or a block."""

    direction: Direction
    src: ipaddress.IPv6Network
    dst: ipaddress.IPv6Network
    proto: int
    priority: int
    action: Action = Action.ALLOW
    reqid: int | None = None  # the ESP transport template's reqid; None for a block
    spi: int | None = None  # the template's SPI: only charon pins one (ours never do)

    def key(self) -> PolicyKey:
        # The kernel identifies a policy by its selector and direction (not its priority).
        return (self.direction.value, self.src, self.dst, self.proto)

    @property
    def is_block(self) -> bool:
        return self.action is Action.BLOCK

    def describe(self) -> str:
        text = (
            f"policy src {self.src} dst {self.dst} proto {self.proto} dir {self.direction} "
            f"priority {self.priority}"
        )
        if self.is_block:
            return f"{text} action block"
        return f"{text} tmpl proto esp reqid {self.reqid} mode transport"


@dataclass(frozen=True)
class DesiredXfrm:
    policies: Mapping[PolicyKey, XfrmPolicy]
    # None when SAs are not routed_nv's to manage (IKE mode: charon installs them).
    states: Mapping[StateKey, XfrmState] | None
    # Tenants whose SAs could not be calculated (unreadable key file, ...): the driver leaves
    # their SAs in the kernel as they are rather than cutting the tenant off.
    keep_states_of: frozenset[int] = frozenset()
    errors: tuple[str, ...] = ()
