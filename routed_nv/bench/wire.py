"""What crossed the underlay, packet by packet: a pcap reader, the VXLAN (and ESP-GCM) decoder
that recovers each copy's inner Ethernet frame, and a classifier that names the frame.

Pure (bytes in, records out), so that every crossing the flood counts rests on can be tested
without a kernel. ESP is decrypted with the static keys of the `vxlan+ipsec` variant: the inner
frames of both bridged variants are then classified the same way.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PCAP_MAGIC_US, PCAP_MAGIC_NS = 0xA1B2C3D4, 0xA1B23C4D
LINKTYPE_SLL, LINKTYPE_SLL2 = 113, 276  # what `tcpdump -i any` writes (libpcap < / >= 1.10)
SLL_HEADER = {LINKTYPE_SLL: 16, LINKTYPE_SLL2: 20}
IPV6_HEADER, UDP_HEADER, VXLAN_HEADER, ETHERNET_HEADER = 40, 8, 8, 14
NH_UDP, NH_ESP, NH_ICMPV6 = 17, 50, 58
VXLAN_PORT = 4789
ESP_HEADER, GCM_IV, GCM_ICV, GCM_SALT = 8, 8, 16, 4
ETH_ARP, ETH_IPV6, ETH_IPV4 = 0x0806, 0x86DD, 0x0800
IPV6_HOP_BY_HOP = 0
BROADCAST = b"\xff" * 6

# ICMPv6 types (RFC 4443, 4861, 3810)
ICMPV6_NAMES = {
    128: "echo request",
    129: "echo reply",
    133: "RS",
    134: "RA",
    135: "NS",
    136: "NA",
    143: "MLD report",
}


@dataclass(frozen=True)
class Packet:
    """One IPv6 packet as captured: time and the bytes from the IPv6 header on."""

    time: float
    ip6: bytes


def read_pcap(data: bytes) -> list[Packet]:
    """The IPv6 packets of a classic pcap file written by `tcpdump -i any -w`."""
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
    magic, _, _, _, _, _, linktype = struct.unpack(endian + "IHHiIII", data[:24])
    if magic not in (PCAP_MAGIC_US, PCAP_MAGIC_NS) or linktype not in SLL_HEADER:
        raise ValueError(f"not a tcpdump -i any capture (magic {magic:#x}, link type {linktype})")
    scale = 1e-9 if magic == PCAP_MAGIC_NS else 1e-6
    header = SLL_HEADER[linktype]
    packets, offset = [], 24
    while offset + 16 <= len(data):
        seconds, fraction, caplen, _ = struct.unpack(endian + "IIII", data[offset : offset + 16])
        frame = data[offset + 16 : offset + 16 + caplen]
        offset += 16 + caplen
        protocol = frame[0:2] if linktype == LINKTYPE_SLL2 else frame[14:16]
        if struct.unpack("!H", protocol)[0] == ETH_IPV6:
            packets.append(Packet(seconds + fraction * scale, frame[header:]))
    return packets


def _addresses(ip6: bytes) -> tuple[IPv6Address, IPv6Address]:
    return IPv6Address(ip6[8:24]), IPv6Address(ip6[24:40])


def _vxlan_frame(udp: bytes) -> bytes | None:
    if len(udp) < UDP_HEADER + VXLAN_HEADER + ETHERNET_HEADER:
        return None
    if struct.unpack("!H", udp[2:4])[0] != VXLAN_PORT:
        return None
    return udp[UDP_HEADER + VXLAN_HEADER :]


def _esp_payload(esp: bytes, keys: Mapping[int, bytes]) -> tuple[int, bytes] | None:
    """(next header, payload) of an rfc4106(gcm(aes)) ESP packet whose SPI has a known key."""
    spi = struct.unpack("!I", esp[:4])[0]
    key = keys.get(spi)
    if key is None:
        return None
    nonce = key[-GCM_SALT:] + esp[ESP_HEADER : ESP_HEADER + GCM_IV]
    plain = AESGCM(key[:-GCM_SALT]).decrypt(nonce, esp[ESP_HEADER + GCM_IV :], esp[:ESP_HEADER])
    pad, next_header = plain[-2], plain[-1]
    return next_header, plain[: -2 - pad]


def inner_frame(ip6: bytes, keys: Mapping[int, bytes]) -> bytes | None:
    """The Ethernet frame a VXLAN packet carries (through ESP when a key is known), else None."""
    next_header, payload = ip6[6], ip6[IPV6_HEADER:]
    if next_header == NH_ESP:
        opened = _esp_payload(payload, keys)
        if opened is None:
            return None
        next_header, payload = opened
    return _vxlan_frame(payload) if next_header == NH_UDP else None


def _icmpv6(ip6: bytes) -> tuple[int, bytes] | None:
    """(type, message) of an ICMPv6 packet, past a hop-by-hop header (MLD carries one)."""
    next_header, offset = ip6[6], IPV6_HEADER
    if next_header == IPV6_HOP_BY_HOP:
        next_header, offset = ip6[offset], offset + (ip6[offset + 1] + 1) * 8
    if next_header != NH_ICMPV6 or len(ip6) <= offset:
        return None
    return ip6[offset], ip6[offset:]


def solicited(frame: bytes) -> IPv4Address | IPv6Address | None:
    """The address an ARP request or a neighbour solicitation asks for (None for other frames)."""
    ethertype = struct.unpack("!H", frame[12:14])[0]
    if ethertype == ETH_ARP:
        return IPv4Address(frame[38:42])
    icmp = _icmpv6(frame[ETHERNET_HEADER:]) if ethertype == ETH_IPV6 else None
    if icmp is not None and ICMPV6_NAMES.get(icmp[0]) == "NS":
        return IPv6Address(icmp[1][8:24])
    return None


def classify(frame: bytes) -> str:
    """A name for an inner Ethernet frame: what a person would call it in a capture.

    Solicitations sent to a unicast MAC are the kernel's reachability (NUD) probes of a
    neighbour it already knows, not resolution: they are named apart from the multicast ones.
    """
    destination, ethertype = frame[:6], struct.unpack("!H", frame[12:14])[0]
    unicast = not destination[0] & 1
    if ethertype == ETH_ARP:
        operation = struct.unpack("!H", frame[20:22])[0]
        sender, target = frame[28:32], frame[38:42]
        if operation == 2:
            return "ARP reply"
        if sender == target:
            return "gratuitous ARP"
        return "ARP probe (NUD)" if unicast else "ARP request"
    if ethertype == ETH_IPV4:
        return "IPv4 multicast" if not unicast else "IPv4"
    if ethertype != ETH_IPV6:
        return f"ethertype {ethertype:#06x}"
    ip6 = frame[ETHERNET_HEADER:]
    icmp = _icmpv6(ip6)
    if icmp is None:
        return "IPv6"
    kind = ICMPV6_NAMES.get(icmp[0], f"ICMPv6 type {icmp[0]}")
    if kind == "NS":
        if _addresses(ip6)[0] == IPv6Address("::"):
            return "DAD NS"
        return "NS probe (NUD)" if unicast else "NS"
    return kind


@dataclass(frozen=True)
class Crossing:
    """A packet between two different hosts' prefixes, as the underlay router received it."""

    time: float
    source: int  # index of the sending host
    destination: int
    frame: bytes | None  # the inner Ethernet frame of a bridged variant, when decoded

    @property
    def kind(self) -> str:
        return classify(self.frame) if self.frame is not None else "not VXLAN"


def crossings(
    packets: Sequence[Packet], hosts: Sequence[IPv6Network], keys: Mapping[int, bytes]
) -> list[Crossing]:
    def owner(address: IPv6Address) -> int | None:
        return next((i for i, prefix in enumerate(hosts) if address in prefix), None)

    found = []
    for p in packets:
        src, dst = (owner(a) for a in _addresses(p.ip6))
        if src is not None and dst is not None and src != dst:
            found.append(Crossing(p.time, src, dst, inner_frame(p.ip6, keys)))
    return found


REPLICATION_S = 0.05  # head-end replication sends a frame's copies back to back


def frames(found: Sequence[Crossing]) -> list[list[Crossing]]:
    """The crossings grouped by the frame they carry: a flooded frame's copies (same inner
    bytes, same sender, sent together, each to a different host) form one group; undecoded
    packets stay alone. A guest may send the same frame twice in a row (MLD repeats its
    reports): a copy to a host the group already reached starts the next frame."""
    groups: list[list[Crossing]] = []
    open_groups: dict[tuple[int, bytes], list[Crossing]] = {}
    for c in sorted(found, key=lambda c: c.time):
        key = (c.source, c.frame) if c.frame is not None else None
        group = open_groups.get(key) if key else None
        reached = group is not None and any(g.destination == c.destination for g in group)
        if group is not None and not reached and c.time - group[0].time <= REPLICATION_S:
            group.append(c)
            continue
        groups.append([c])
        if key:
            open_groups[key] = groups[-1]
    return groups
