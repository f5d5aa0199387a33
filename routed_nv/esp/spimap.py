"""The SPI map: which tenant, peer and direction every ESP SPI of this host belongs to.

IKE mode: charon allocates SPIs at random, so the tenant of an SPI is only known from the
CHILD_SA that owns it (named per tenant, reqid = markers.reqid(T)). The map is built from VICI
list-sas and kept current by its events (child-updown, child-rekey, ike-updown), whose payloads
carry the same IKE_SA/CHILD_SA sections. Static mode: the SPI itself says tenant, sender and key
generation (model/spi.py), and the kernel's states are the whole truth.

Pure: the VICI and XFRM adapters deliver the inputs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from routed_nv.model import markers, spi
from routed_nv.model.xfrm import SaCounters, StateKey, XfrmState

SA_EVENTS = ("child-updown", "child-rekey", "ike-updown")


@dataclass(frozen=True, order=True)
class SaRow:
    peer: str
    tenant: int
    spi_in: int | None
    spi_out: int | None
    state: str
    child: str = ""  # CHILD_SA name (IKE) or "" (static)
    generation: int | None = None  # static keying's key generation
    bytes_in: int | None = None
    bytes_out: int | None = None
    packets_in: int | None = None
    packets_out: int | None = None
    errors_in: int | None = None  # dropped inbound: replay window, replayed, failed (static)
    errors_out: int | None = None
    rekey_in_s: int | None = None  # until charon rekeys it
    established_s: int | None = None  # since it was installed
    uniqueid: str = ""  # charon's CHILD_SA id: what events refer to
    tenant_name: str = ""  # from this host's configuration

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("spi_in", "spi_out"):
            data[key] = None if data[key] is None else f"0x{data[key]:08x}"
        return data


def rows_from_sas(sas: Iterable[tuple[str, Mapping[str, Any]]]) -> list[SaRow]:
    """One row per routed_nv CHILD_SA in list-sas output (or an event's IKE_SA sections)."""
    rows = []
    for conn, ike in sas:
        if not conn.startswith(markers.IKE_CONN_PREFIX):
            continue
        peer = conn.removeprefix(markers.IKE_CONN_PREFIX)
        for child in _children(ike):
            tenant = markers.tenant_of_reqid(_int(child.get("reqid")) or 0)
            if tenant is None:
                continue
            rows.append(
                SaRow(
                    peer=peer,
                    tenant=tenant,
                    spi_in=_hex(child.get("spi-in")),
                    spi_out=_hex(child.get("spi-out")),
                    state=child.get("state", ""),
                    child=child.get("name", ""),
                    bytes_in=_int(child.get("bytes-in")),
                    bytes_out=_int(child.get("bytes-out")),
                    packets_in=_int(child.get("packets-in")),
                    packets_out=_int(child.get("packets-out")),
                    rekey_in_s=_int(child.get("rekey-time")),
                    established_s=_int(child.get("install-time")),
                    uniqueid=child.get("uniqueid", ""),
                )
            )
    return sorted(rows)


def _children(ike: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    children: list[Mapping[str, Any]] = []
    for child in (ike.get("child-sas") or {}).values():
        # child-rekey events nest the two CHILD_SAs as old/new
        children += [child[k] for k in ("old", "new") if k in child] or [child]
    return children


class SpiMap:
    """The current SPI map of one charon: load() from list-sas, then on_event() per event."""

    def __init__(self) -> None:
        self._rows: dict[str, SaRow] = {}

    def load(self, sas: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        self._rows = {r.uniqueid: r for r in rows_from_sas(sas)}

    def on_event(self, kind: str, payload: Mapping[str, Any]) -> None:
        up = payload.get("up") == "yes"
        sas = [(k, v) for k, v in payload.items() if isinstance(v, Mapping)]
        if kind == "child-rekey":
            for conn, ike in sas:
                for child in (ike.get("child-sas") or {}).values():
                    self._rows.pop(child.get("old", {}).get("uniqueid", ""), None)
                    if "new" in child:
                        self._add([(conn, {**ike, "child-sas": {"new": child["new"]}})])
        elif up and kind == "child-updown":
            self._add(sas)
        elif not up and kind in ("child-updown", "ike-updown"):
            for row in rows_from_sas(sas):
                self._rows.pop(row.uniqueid, None)

    def _add(self, sas: Iterable[tuple[str, Mapping[str, Any]]]) -> None:
        self._rows.update((r.uniqueid, r) for r in rows_from_sas(sas))

    def rows(self) -> list[SaRow]:
        return sorted(self._rows.values())


def rows_from_states(
    states: Iterable[XfrmState],
    local_prefix: ipaddress.IPv6Network,
    peers: Mapping[ipaddress.IPv6Network, str],
    counters: Mapping[StateKey, SaCounters] | None = None,
) -> list[SaRow]:
    """Static keying: pair each peer's inbound and outbound SA per tenant and key generation.
    The SPI names tenant, sender and generation; the peer is the host whose /64 holds the
    other end. SAs that are not routed_nv's (reqid or SPI outside the plan) are skipped.
    `counters` (`ip -s xfrm state`) fills bytes, packets and errors both ways."""
    pairs: dict[tuple[str, int, int], dict[str, XfrmState]] = {}
    for state in states:
        if state.tenant_id is None:
            continue
        try:
            fields = spi.decode(state.spi)
        except spi.SpiExhausted:
            continue
        outbound = state.src in local_prefix
        other = state.dst if outbound else state.src
        peer = next((name for net, name in peers.items() if other in net), str(other))
        key = (peer, fields.tenant_id, fields.generation)
        pairs.setdefault(key, {})["out" if outbound else "in"] = state
    known = counters or {}

    def counted(state: XfrmState | None) -> SaCounters | None:
        return None if state is None else known.get(state.key())

    def row(peer: str, tenant: int, gen: int, sas: dict[str, XfrmState]) -> SaRow:
        sa_in, sa_out = sas.get("in"), sas.get("out")
        spis = (_spi_of(sa_in), _spi_of(sa_out))
        counts = _counts("in", counted(sa_in)) | _counts("out", counted(sa_out))
        return SaRow(peer, tenant, *spis, "installed", generation=gen, **counts)  # type: ignore[arg-type]

    return sorted(row(*key, sas) for key, sas in pairs.items())


def _spi_of(state: XfrmState | None) -> int | None:
    return None if state is None else state.spi


def _counts(direction: str, c: SaCounters | None) -> dict[str, int]:
    if c is None:
        return {}
    return {f"bytes_{direction}": c.bytes, f"packets_{direction}": c.packets} | {
        f"errors_{direction}": c.errors
    }


def _hex(value: object) -> int | None:
    try:
        return int(str(value), 16)
    except ValueError:
        return None


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None
