"""The underlay decoder: pcap records, VXLAN and ESP-GCM opened, frames named and grouped."""

from __future__ import annotations

import ipaddress
import os
import struct
from ipaddress import IPv6Address, IPv6Network

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from routed_nv.bench import tools, wire

MAC = bytes.fromhex("020000000001")
HOSTS = [IPv6Network(f"2001:db8:0:{i}::/64") for i in (1, 2, 3)]
KEY = os.urandom(20)  # AES-128 key + salt, as `ip xfrm state ... aead rfc4106(gcm(aes))`
SPI = 0x0B001002


def _uplink(host: int) -> bytes:
    return IPv6Address(f"2001:db8:0:{host}:ffff::1").packed


def _ip6(src: int, dst: int, next_header: int, payload: bytes) -> bytes:
    header = struct.pack("!IHBB", 6 << 28, len(payload), next_header, 64)
    return header + _uplink(src) + _uplink(dst) + payload


def _udp_vxlan(frame: bytes) -> bytes:
    vxlan = struct.pack("!II", 0x08000000, 100 << 8)
    return struct.pack("!HHHH", 40000, wire.VXLAN_PORT, 16 + len(frame), 0) + vxlan + frame


def _esp(payload: bytes, next_header: int, seq: int = 1) -> bytes:
    pad = -(len(payload) + 2) % 4
    plain = payload + bytes(range(1, pad + 1)) + bytes([pad, next_header])
    header, iv = struct.pack("!II", SPI, seq), os.urandom(8)
    sealed = AESGCM(KEY[:16]).encrypt(KEY[16:] + iv, plain, header)
    return header + iv + sealed


def _pcap(records: list[tuple[float, bytes]]) -> bytes:
    out = struct.pack("<IHHiIII", wire.PCAP_MAGIC_US, 2, 4, 0, 0, 262144, wire.LINKTYPE_SLL2)
    for t, ip6 in records:
        sll2 = struct.pack("!HHIHBB8s", wire.ETH_IPV6, 0, 3, 1, 0, 6, MAC + b"\0\0")
        frame = sll2 + ip6
        seconds, micros = int(t), round((t - int(t)) * 1e6)
        out += struct.pack("<IIII", seconds, micros, len(frame), len(frame)) + frame
    return out


GARP = tools.garp(MAC, ipaddress.IPv4Address("10.0.0.1"))
DAD = tools.dad_probe(MAC, IPv6Address("fd10::1"))


def test_plain_and_encrypted_vxlan_open_to_the_same_frame() -> None:
    pcap = _pcap(
        [
            (10.0, _ip6(1, 2, wire.NH_UDP, _udp_vxlan(GARP))),
            (10.000_01, _ip6(1, 3, wire.NH_ESP, _esp(_udp_vxlan(GARP), wire.NH_UDP))),
            (10.5, _ip6(1, 2, wire.NH_ESP, _esp(_udp_vxlan(DAD), wire.NH_UDP, seq=2))),
            (11.0, _ip6(2, 2, wire.NH_UDP, _udp_vxlan(DAD))),  # within one host: not counted
        ]
    )
    packets = wire.read_pcap(pcap)
    assert len(packets) == 4 and packets[0].time == 10.0
    found = wire.crossings(packets, HOSTS, {SPI: KEY})
    assert [c.kind for c in found] == ["gratuitous ARP", "gratuitous ARP", "DAD NS"]
    assert [len(g) for g in wire.frames(found)] == [2, 1]  # the GARP was copied to two hosts


def test_a_frame_sent_twice_in_a_row_is_two_frames() -> None:
    packet = _ip6(1, 2, wire.NH_UDP, _udp_vxlan(DAD))
    packets = wire.read_pcap(_pcap([(5.0, packet), (5.001, packet)]))
    assert [len(g) for g in wire.frames(wire.crossings(packets, HOSTS, {}))] == [1, 1]


def test_esp_without_a_key_is_counted_but_not_opened() -> None:
    packets = wire.read_pcap(_pcap([(1.0, _ip6(1, 2, wire.NH_ESP, _esp(b"x" * 20, 4)))]))
    (crossing,) = wire.crossings(packets, HOSTS, {})
    assert crossing.frame is None and crossing.kind == "not VXLAN"


def _arp(operation: int, destination: bytes, sender: str, target: str) -> bytes:
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, operation) + MAC
    body += ipaddress.IPv4Address(sender).packed + b"\0" * 6 + ipaddress.IPv4Address(target).packed
    return destination + MAC + struct.pack("!H", wire.ETH_ARP) + body


def test_classify_tells_resolution_from_reachability_probes() -> None:
    peer = bytes.fromhex("020000000002")
    assert wire.classify(_arp(1, wire.BROADCAST, "10.0.0.1", "10.0.0.2")) == "ARP request"
    assert wire.classify(_arp(1, peer, "10.0.0.1", "10.0.0.2")) == "ARP probe (NUD)"
    assert wire.classify(_arp(2, peer, "10.0.0.1", "10.0.0.2")) == "ARP reply"
    assert wire.classify(GARP) == "gratuitous ARP"
    assert wire.classify(DAD) == "DAD NS"
