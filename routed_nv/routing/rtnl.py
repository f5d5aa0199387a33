"""Routes over rtnetlink with the stdlib: messages packed and unpacked with struct, sent many per
send() on one socket, each answered by its own ack.

Why not pyroute2 for routes (measured in the UML lab, 10,000 routes): pyroute2 spends ~170 µs
encoding and ~560 µs parsing each route and runs its event loop once per request, so 2,000 routes
took seconds; struct needs a few µs per message, and 10,000 replaces sent 256 per send() took
0.3 s against 1.5 s for the same routes through `ip -batch`. Every message carries its own
sequence number and asks for an ack, so an error is attributed to its route and the kernel
carries on with the next message (netlink requests are independent).
Only the attributes routed_nv writes are encoded and decoded; a route with others (multipath)
is not one of ours and is skipped.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator, Sequence
from typing import TypeVar

from routed_nv.model.routing import Route

# The netlink numbers routed_nv uses, once: the routing driver here, the mirror watch
# (directory/netlink_watch.py) imports them.
NETLINK_ROUTE = 0
SOL_NETLINK = 270
SO_RCVBUFFORCE = 33  # root may exceed net.core.rmem_max
NETLINK_CAP_ACK = 10  # errors echo only the request's header, not the whole message
NETLINK_EXT_ACK = 11  # errors carry the kernel's text ("Nexthop has invalid gateway")
NETLINK_GET_STRICT_CHK = 12  # the kernel filters dumps by the request's protocol
RCVBUF = 4 * 1024 * 1024

NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_GETLINK, RTM_NEWADDR, RTM_GETADDR = 16, 18, 20, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
IFLA_IFNAME = 3
IFA_ADDRESS, IFA_LOCAL = 1, 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_DUMP = 0x1, 0x4, 0x300
NLM_F_REPLACE, NLM_F_CREATE = 0x100, 0x400
NLM_F_ACK_TLVS = 0x200
NLMSGERR_ATTR_MSG = 1
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_METRICS = 1, 4, 5, 6, 8
RTA_MULTIPATH, RTA_TABLE, RTA_VIA = 9, 15, 18
RTAX_WINDOW, RTAX_ADVMSS = 3, 8  # route metrics (inside RTA_METRICS)
RTN_UNICAST, RTN_UNREACHABLE = 1, 7
RTNH_F_ONLINK = 0x4
RT_TABLE_UNSPEC = 0
RT_TABLE_MAX_IN_HEADER = 255  # larger ids only fit RTA_TABLE
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
_VERSION = {socket.AF_INET: 4, socket.AF_INET6: 6}

NLMSGHDR = struct.Struct("=IHHII")
RTMSG = struct.Struct("=BBBBBBBBI")
IFINFOMSG = struct.Struct("=BxHiII")
IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_ERRNO = struct.Struct("=i")
_VIA_FAMILY = struct.Struct("=H")

# Messages per send(): the acks of one chunk fit the receive buffer many times over, and one
# chunk is small enough that the kernel never drops our requests for lack of memory.
CHUNK = 256
_RECV = 1 << 20


def _align(n: int) -> int:
    return (n + 3) & ~3


# Attributes packed in one call each: a route's whole message takes a handful of pack() calls.
_ATTR_U32 = struct.Struct("=HHI")
_ATTR_V4 = struct.Struct("=HH4s")
_ATTR_V6 = struct.Struct("=HH16s")
# struct rtvia (family, then the address), padded to 4 bytes, per next-hop IP version
_ATTR_VIA = {4: struct.Struct("=HHH4s2x"), 6: struct.Struct("=HHH16s2x")}


def _addr_attr(kind: int, packed: bytes) -> bytes:
    layout = _ATTR_V4 if len(packed) == 4 else _ATTR_V6
    return layout.pack(layout.size, kind, packed)


def encode_route(route: Route, oif: int | None, delete: bool) -> bytes:
    """RTM_NEWROUTE (create or replace) or RTM_DELROUTE for `route`, sequence number 0 (set by
    RouteSocket.send). A delete carries the whole route, so the kernel removes only a route that
    matches ours in type, scope and protocol, never a look-alike someone else added."""
    dst = route.dst
    table = route.table
    parts = [
        RTMSG.pack(
            _FAMILY[dst.version],
            dst.prefixlen,
            0,  # src_len
            0,  # tos
            table if table <= RT_TABLE_MAX_IN_HEADER else RT_TABLE_UNSPEC,
            route.proto,
            route.scope,
            RTN_UNREACHABLE if route.unreachable else RTN_UNICAST,
            RTNH_F_ONLINK if route.onlink else 0,
        ),
        _addr_attr(RTA_DST, dst.network_address.packed),
        _ATTR_U32.pack(_ATTR_U32.size, RTA_TABLE, table),
        _ATTR_U32.pack(_ATTR_U32.size, RTA_PRIORITY, route.metric),
    ]
    if oif is not None:
        parts.append(_ATTR_U32.pack(_ATTR_U32.size, RTA_OIF, oif))
    via = route.via
    if via is not None:
        if via.version == dst.version:
            parts.append(_addr_attr(RTA_GATEWAY, via.packed))
        else:  # e.g. an IPv6 next hop of an IPv4 route
            layout = _ATTR_VIA[via.version]
            family = _FAMILY[via.version]
            parts.append(layout.pack(layout.size - 2, RTA_VIA, family, via.packed))
    body = b"".join(parts)
    kind, flags = (
        (RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK)
        if delete
        else (RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE)
    )
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, 0, 0) + body


def dump_request(family: int, proto: int, seq: int) -> bytes:
    """A dump of one family's routes of one protocol (filtered by a strict-checking kernel)."""
    body = RTMSG.pack(family, 0, 0, 0, 0, proto, 0, 0, 0)
    header = NLMSGHDR.pack(
        NLMSGHDR.size + len(body), RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return header + body


def _dump_request(kind: int, body: bytes, seq: int) -> bytes:
    flags = NLM_F_REQUEST | NLM_F_DUMP
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, seq, 0) + body


def decode_link_name(body: memoryview) -> tuple[int, str] | None:
    """(index, name) of an RTM_NEWLINK body: all a dump of names needs of it."""
    index = IFINFOMSG.unpack_from(body)[2]
    name = attributes(body, IFINFOMSG.size).get(IFLA_IFNAME)
    return None if name is None else (index, bytes(name).split(b"\0", 1)[0].decode())


def decode_address(
    body: memoryview, names: dict[int, str]
) -> tuple[str, ipaddress.IPv4Interface | ipaddress.IPv6Interface] | None:
    """(interface name, address/prefix) of an RTM_NEWADDR body (the local address of a
    point-to-point one, as `ip addr` shows it)."""
    family, prefixlen, _flags, _scope, index = IFADDRMSG.unpack_from(body)
    attrs = attributes(body, IFADDRMSG.size)
    packed = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if index not in names or packed is None or family not in _VERSION:
        return None
    address = ipaddress.ip_address(bytes(packed))
    return names[index], ipaddress.ip_interface(f"{address}/{prefixlen}")


def messages(data: bytes) -> Iterator[tuple[int, int, int, memoryview]]:
    """(type, flags, sequence number, body) of each netlink message in one datagram."""
    view = memoryview(data)
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, flags, seq, _pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size:
            return
        yield kind, flags, seq, view[offset + NLMSGHDR.size : offset + length]
        offset += _align(length)


Buffer = TypeVar("Buffer", bytes, memoryview)


def attributes(body: Buffer, offset: int) -> dict[int, Buffer]:
    """The rtattrs of a message body from `offset` (also used for nested ones) by type."""
    found = {}
    while offset + _RTATTR.size <= len(body):
        length, kind = _RTATTR.unpack_from(body, offset)
        if length < _RTATTR.size:
            break
        found[kind] = body[offset + _RTATTR.size : offset + length]
        offset += _align(length)
    return found


def decode_route(body: memoryview, names: dict[int, str], protos: set[int]) -> Route | None:
    """The Route in an RTM_NEWROUTE body, or None if its protocol is not one of `protos` or it
    has attributes routed_nv never writes (multipath)."""
    family, dst_len, _src, _tos, table, proto, scope, kind, flags = RTMSG.unpack_from(body)
    version = _VERSION.get(family)
    if proto not in protos or version is None:
        return None
    attrs = attributes(body, RTMSG.size)
    if RTA_MULTIPATH in attrs:
        return None
    width = 4 if version == 4 else 16
    dst = ipaddress.ip_address(bytes(attrs.get(RTA_DST, bytes(width))))
    via: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    if RTA_GATEWAY in attrs:
        via = ipaddress.ip_address(bytes(attrs[RTA_GATEWAY]))
    elif RTA_VIA in attrs:
        via = ipaddress.ip_address(bytes(attrs[RTA_VIA][_VIA_FAMILY.size :]))
    unreachable = kind == RTN_UNREACHABLE
    oif = _U32.unpack(attrs[RTA_OIF])[0] if RTA_OIF in attrs else None
    return Route(
        dst=ipaddress.ip_network((dst, dst_len)),
        table=_U32.unpack(attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else table,
        proto=proto,
        # IPv6 unreachable routes point at lo by construction; that is not a choice of ours
        dev=None if unreachable or oif is None else names.get(oif),
        via=via,
        onlink=bool(flags & RTNH_F_ONLINK),
        unreachable=unreachable,
        scope=scope,
        metric=_U32.unpack(attrs[RTA_PRIORITY])[0] if RTA_PRIORITY in attrs else 0,
    )


def decode_ack(flags: int, body: memoryview) -> tuple[int, str | None]:
    """(errno, the kernel's extended-ack text or None) of an NLMSG_ERROR body; errno 0: done."""
    code = -_ERRNO.unpack_from(body)[0]
    detail = None
    if code and flags & NLM_F_ACK_TLVS:
        # with NETLINK_CAP_ACK the echoed request is only its header
        text = attributes(body, _ERRNO.size + NLMSGHDR.size).get(NLMSGERR_ATTR_MSG)
        if text is not None:
            detail = bytes(text).rstrip(b"\0").decode(errors="replace")
    return code, detail


def new_socket() -> socket.socket:
    """A NETLINK_ROUTE socket in the calling thread's network namespace."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK):
        sock.setsockopt(SOL_NETLINK, option, 1)
    sock.bind((0, 0))
    return sock


class RouteSocket:
    """Route dumps and batched route changes on one netlink socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def _next_seq(self) -> int:
        self._seq = self._seq % 0xFFFF_FFFF + 1
        return self._seq

    def dump(self, protos: set[int], names: dict[int, str]) -> list[Route]:
        """Every route of one of `protos`, both families."""
        found = []
        for family in _VERSION:
            for proto in sorted(protos):
                seq = self._next_seq()
                for body in self._dump(dump_request(family, proto, seq), seq, RTM_NEWROUTE):
                    route = decode_route(body, names, protos)
                    if route is not None:
                        found.append(route)
        return found

    def link_names(self) -> dict[int, str]:
        """Interface index -> name of every link: what reading addresses, routes and proxy
        entries needs of the links, without decoding every attribute of each (pyroute2 took
        most of a resync's time in the lab doing that, three times per namespace)."""
        seq = self._next_seq()
        request = _dump_request(RTM_GETLINK, IFINFOMSG.pack(0, 0, 0, 0, 0), seq)
        found = (decode_link_name(body) for body in self._dump(request, seq, RTM_NEWLINK))
        return dict(pair for pair in found if pair is not None)

    def link_messages(self) -> list[bytes]:
        """The RTM_NEWLINK body of every link (netlink.py decodes the few attributes it uses)."""
        seq = self._next_seq()
        request = _dump_request(RTM_GETLINK, IFINFOMSG.pack(0, 0, 0, 0, 0), seq)
        return [bytes(body) for body in self._dump(request, seq, RTM_NEWLINK)]

    def addresses(
        self, names: dict[int, str]
    ) -> list[tuple[str, ipaddress.IPv4Interface | ipaddress.IPv6Interface]]:
        """The addresses of the links in `names`, both families."""
        seq = self._next_seq()
        request = _dump_request(RTM_GETADDR, IFADDRMSG.pack(0, 0, 0, 0, 0), seq)
        found = (decode_address(body, names) for body in self._dump(request, seq, RTM_NEWADDR))
        return [pair for pair in found if pair is not None]

    def _dump(self, request: bytes, seq: int, wanted: int) -> Iterator[memoryview]:
        """Send a dump request; the bodies of its answers of type `wanted`, until done."""
        self._sock.send(request)
        while True:
            for kind, flags, got, body in messages(self._sock.recv(_RECV)):
                if got != seq:
                    continue  # a late answer to an earlier request
                if kind == wanted:
                    yield body
                elif kind == NLMSG_DONE:
                    return
                elif kind == NLMSG_ERROR:
                    code, detail = decode_ack(flags, body)
                    if code:
                        raise OSError(code, detail or "dump failed")
                    return

    def send(self, requests: Sequence[bytes | None]) -> list[tuple[int, str | None]]:
        """Send the requests (None: skip) CHUNK per send(); (errno, detail) per request, in
        order, errno 0 for done. The sequence numbers are set here."""
        outcomes: list[tuple[int, str | None]] = [(0, None)] * len(requests)
        for start in range(0, len(requests), CHUNK):
            pending: dict[int, int] = {}  # sequence number -> index in requests
            data = bytearray()
            for i in range(start, min(start + CHUNK, len(requests))):
                request = requests[i]
                if request is None:
                    continue
                seq = self._next_seq()
                pending[seq] = i
                data += request[:8] + _U32.pack(seq) + request[12:]
            if data:
                self._sock.send(data)
            while pending:
                for kind, flags, seq, body in messages(self._sock.recv(_RECV)):
                    if kind == NLMSG_ERROR and seq in pending:
                        outcomes[pending.pop(seq)] = decode_ack(flags, body)
        return outcomes
