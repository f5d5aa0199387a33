"""Desired strongSwan state as data: IKE connections with their CHILD_SAs and the credentials to
load into charon (calculated by calc/ike.py, applied by esp/ike.py over VICI)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from routed_nv.model import markers
from routed_nv.model.secret import Secret

# The id of our shared secret in charon (load-shared/unload-shared/get-shared), so that it is
# recognisable and replaceable like our connections.
PSK_ID = f"{markers.IKE_CONN_PREFIX}psk"

VICI_MESSAGE = Mapping[str, object]


@dataclass(frozen=True)
class IkeChild:
    name: str
    tenant_id: int
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]

    @property
    def reqid(self) -> int:
        return markers.reqid(self.tenant_id)


@dataclass(frozen=True)
class IkeConn:
    name: str
    peer: str
    local_addr: str
    remote_addr: str
    children: tuple[IkeChild, ...]
    message: VICI_MESSAGE = field(compare=False, repr=False)  # the load-conn body

    @property
    def local_is_lower(self) -> bool:
        """Whether this end has the lower host address: what breaks ties between the ends."""
        return ipaddress.ip_address(self.local_addr) < ipaddress.ip_address(self.remote_addr)

    @property
    def digest(self) -> str:
        """Changes whenever anything in the load-conn message changes."""
        text = json.dumps(self.message, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SharedSecret:
    id: str
    secret: Secret
    owners: tuple[str, ...]


@dataclass(frozen=True)
class Certificate:
    flag: str  # "CA" (a trust anchor) or "NONE" (our own)
    pem: str
    der: bytes  # what list-certs reports, to recognise it there
    path: Path


@dataclass(frozen=True)
class PrivateKey:
    secret: Secret  # the PEM file's bytes
    path: Path


Credential = SharedSecret | Certificate | PrivateKey


@dataclass(frozen=True)
class DesiredIke:
    conns: Mapping[str, IkeConn]
    credentials: tuple[Credential, ...]
    # Connections that could not be calculated keep whatever charon has (as XFRM's keep_states_of).
    keep: frozenset[str] = frozenset()
    errors: tuple[str, ...] = ()


def conn_name(peer: str) -> str:
    return f"{markers.IKE_CONN_PREFIX}{peer}"


def child_name(peer: str, tenant_id: int) -> str:
    return f"{conn_name(peer)}-t{tenant_id}"


def is_ours(name: str) -> bool:
    return name.startswith(markers.IKE_CONN_PREFIX)
