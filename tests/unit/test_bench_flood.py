"""Which crossings an event owns: its workload's frames of the event's kinds, replies to it."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from routed_nv.bench import flood, tools, wire
from routed_nv.lab.builder import LabError

BLUE1, BLUE2 = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")


def _arp(operation: int, source: bytes, destination: bytes) -> bytes:
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, operation) + source
    body += ipaddress.IPv4Address("10.0.0.1").packed + b"\0" * 6
    body += ipaddress.IPv4Address("10.0.0.2").packed
    return destination + source + struct.pack("!H", wire.ETH_ARP) + body


def test_an_event_owns_its_requests_and_the_replies_to_them() -> None:
    assert flood.caused_by(_arp(1, BLUE1, wire.BROADCAST), BLUE1, "resolve")
    assert flood.caused_by(_arp(2, BLUE2, BLUE1), BLUE1, "resolve")


def test_background_is_other_guests_and_reachability_probes() -> None:
    assert not flood.caused_by(_arp(1, BLUE2, wire.BROADCAST), BLUE1, "resolve")
    assert not flood.caused_by(_arp(1, BLUE2, BLUE1), BLUE1, "resolve")  # NUD probe
    assert not flood.caused_by(_arp(2, BLUE1, BLUE2), BLUE1, "resolve")  # its reply
    garp = tools.garp(BLUE1, ipaddress.IPv4Address("10.0.0.1"))
    assert flood.caused_by(garp, BLUE1, "boot") and not flood.caused_by(garp, BLUE1, "unknown")


def test_packets_without_a_frame_belong_to_the_window() -> None:
    assert flood.caused_by(None, BLUE1, "unknown")


def test_unknown_owns_only_solicitations_for_the_probed_addresses() -> None:
    request = _arp(1, BLUE1, wire.BROADCAST)  # asks for 10.0.0.2
    assert wire.solicited(request) == ipaddress.IPv4Address("10.0.0.2")
    probed = frozenset({ipaddress.ip_address("10.0.0.2")})
    assert flood.caused_by(request, BLUE1, "unknown", probed)
    other = frozenset({ipaddress.ip_address("10.0.0.200")})
    assert not flood.caused_by(request, BLUE1, "unknown", other)  # re-resolving someone else


def _scripted_ip(monkeypatch: pytest.MonkeyPatch, failures: list[str]) -> list[str]:
    """flood's ip_batch, recording each batch; adds fail with the next of `failures`."""
    calls: list[str] = []

    def ip_batch(namespace: str, lines: list[str]) -> None:
        calls.append(lines[0].split(" ")[1])
        if lines[0].startswith("neigh add") and failures:
            raise LabError(f"ip -n {namespace} -batch - failed: {failures.pop(0)}")

    monkeypatch.setattr(flood, "ip_batch", ip_batch)
    return calls


def test_an_entry_back_between_flush_and_add_means_flush_and_add_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _scripted_ip(monkeypatch, ["RTNETLINK answers: File exists"])
    flood._add_managed("ns", ["169.254.0.1", "fe80::1"])
    assert calls == ["flush", "add", "flush", "add"]


def test_other_add_failures_and_a_lasting_entry_are_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    _scripted_ip(monkeypatch, ["RTNETLINK answers: No such device"])
    with pytest.raises(LabError, match="No such device"):
        flood._add_managed("ns", ["fe80::1"])
    calls = _scripted_ip(monkeypatch, ["RTNETLINK answers: File exists"] * flood.ADD_TRIES)
    with pytest.raises(LabError, match="File exists"):
        flood._add_managed("ns", ["fe80::1"])
    assert calls.count("add") == flood.ADD_TRIES
