"""Event-driven watch of the mirror and publish tables: one dump at start, then route events.

This is a netlink *monitor* socket, and it is plain stdlib rather than a second pyroute2
adapter: pyroute2 0.9 reads ahead into its own queue, so select() on its descriptor misses
events it already holds, and it hides the ENOBUFS that says events were lost. Here the socket
is ours: subscribed to RTNLGRP_IPV4_ROUTE and RTNLGRP_IPV6_ROUTE before the dump (so nothing
falls between dump and events), with a large receive buffer, and a lost-events error answered
by a fresh dump whose difference becomes events. Only the few route attributes BIRD writes into
a mirror table are parsed (destination, table, metric, gateway or RTA_VIA, the mobility
sequence in the `window` metric, RTAX_WINDOW, and the count of tenant communities of a route
that carries several in `advmss`, RTAX_ADVMSS); of this host's publish tables (what BIRD learns
from the routing driver) the destination, table, metric and protocol.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import os
import select
import socket
import struct
from collections.abc import Container, Iterator
from dataclasses import dataclass
from types import TracebackType

from routed_nv.directory.learn import MirrorRoute, PublishedRoute
from routed_nv.errors import TransientError
from routed_nv.model import markers
from routed_nv.model.directory import IPNetwork
from routed_nv.netns import NetnsError, run_in_netns
from routed_nv.routing.rtnl import (
    NETLINK_ROUTE,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSGHDR,
    RTA_DST,
    RTA_GATEWAY,
    RTA_METRICS,
    RTA_PRIORITY,
    RTA_TABLE,
    RTA_VIA,
    RTAX_ADVMSS,  # BIRD's krt_advmss: the number of tenant communities, when more than one
    RTAX_WINDOW,  # BIRD's krt_window: where the mirror export puts the mobility sequence
    RTM_DELROUTE,
    RTM_GETROUTE,
    RTM_NEWROUTE,
    RTMSG,
    SO_RCVBUFFORCE,
    attributes,
)

RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_ROUTE = 0x400
RCVBUF = 32 * 1024 * 1024  # as BIRD's netlink rx buffer: bursts of 100,000 routes

_FAMILIES = {socket.AF_INET: 4, socket.AF_INET6: 6}
_MIRROR_TABLES = range(
    markers.mirror_table(markers.TENANT_ID_MIN), markers.mirror_table(markers.TENANT_ID_MAX) + 1
)
_PUBLISH_TABLES = range(
    markers.publish_table(markers.TENANT_ID_MIN), markers.publish_table(markers.TENANT_ID_MAX) + 1
)
Watched = MirrorRoute | PublishedRoute


class _Tables:
    """Tables given as ranges (each tenant table kind is a range of 65,535 numbers).
    `foreign_protos`: route protocols never found in them, dropped before their attributes are
    parsed (the agent's own writes into its VRF tables: 100,000 remote routes echo back here)."""

    def __init__(self, *ranges: range, foreign_protos: frozenset[int] = frozenset()) -> None:
        self._ranges = ranges
        self.foreign_protos = foreign_protos

    def __contains__(self, table: object) -> bool:
        return any(table in r for r in self._ranges)


# what the BGP source learns from; BIRD writes mirror tables, the routing driver publish tables
# (RTPROT_ENDPOINT, RTPROT_STALE), never remote or infrastructure routes
AGENT_TABLES = _Tables(
    _MIRROR_TABLES,
    _PUBLISH_TABLES,
    foreign_protos=frozenset({markers.RTPROT_REMOTE, markers.RTPROT_INFRA}),
)
RECV_BUF = 4 * 1024 * 1024  # one read drains this much of the queue
RECV_ROOM = 64 * 1024  # no read into less room than this: a dump message is at most 32 kB


class _Overflow(Exception):
    """The socket's queue overflowed: the kernel dropped route events."""


class WatchError(TransientError, RuntimeError):
    pass


@dataclass(frozen=True)
class RouteEvent:
    added: bool  # False: removed
    route: Watched  # removed: the route as it was kept
    replaced: Watched | None = None  # added: the route with its kernel identity it replaced

    def __str__(self) -> str:
        r = self.route
        where = f"via {r.next_hop or '-'}" if isinstance(r, MirrorRoute) else f"proto {r.proto}"
        return f"{'add' if self.added else 'del'} {r.prefix} {where} table {r.table}"


def _align(n: int) -> int:
    return (n + 3) & ~3


def parse(
    data: bytes, tables: Container[int] = AGENT_TABLES
) -> Iterator[tuple[int, int, int, Watched | None]]:
    """(message type, sequence, port id, route in `tables` or None) for each netlink message."""
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, _flags, seq, pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size:
            break
        body = data[offset + NLMSGHDR.size : offset + length]
        route = _route(body, tables) if kind in (RTM_NEWROUTE, RTM_DELROUTE) else None
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0
            yield kind, seq, pid, None
            if code:
                raise WatchError(f"netlink route dump failed: {os.strerror(code)}")
        else:
            yield kind, seq, pid, route
        offset += _align(length)


def _route(body: bytes, tables: Container[int]) -> Watched | None:
    if len(body) < RTMSG.size:
        return None
    family, dst_len, _src, _tos, table, proto, _scope, _type, _flags = RTMSG.unpack_from(body)
    version = _FAMILIES.get(family)
    if version is None or (isinstance(tables, _Tables) and proto in tables.foreign_protos):
        return None
    attrs = attributes(body, RTMSG.size)
    table = struct.unpack("=I", attrs[RTA_TABLE])[0] if RTA_TABLE in attrs else table
    if table not in tables:
        return None
    table = _shared_table(table)
    dst = ipaddress.ip_address(attrs.get(RTA_DST, bytes(4 if version == 4 else 16)))
    metric = struct.unpack("=I", attrs[RTA_PRIORITY])[0] if RTA_PRIORITY in attrs else 0
    prefix = route_prefix(dst, dst_len)
    if table in _PUBLISH_TABLES:
        return PublishedRoute(table, prefix, metric, proto)
    next_hop = _next_hop(attrs)
    if next_hop is None and table not in _MIRROR_TABLES:
        return None  # the benchmark's VRF table: only the agent's routes, which have a gateway
    # A mirror route without a gateway was not written by BIRD's mirror export (which always
    # sets one): kept, so that learn reports it rather than it vanishing unseen.
    metrics = attributes(attrs.get(RTA_METRICS, b""), 0)
    sequence = struct.unpack("=I", metrics[RTAX_WINDOW])[0] if RTAX_WINDOW in metrics else 0
    tenants = struct.unpack("=I", metrics[RTAX_ADVMSS])[0] if RTAX_ADVMSS in metrics else 1
    return MirrorRoute(table, prefix, next_hop, metric, sequence, tenants)


def route_prefix(address: ipaddress.IPv4Address | ipaddress.IPv6Address, length: int) -> IPNetwork:
    """The network, less the `hosts` closure the stdlib gives each /32 and /128 of its own
    (~200 B, for 100,000s of prefixes the watch, the learner, the view and the routing cache
    share). Their `hosts()` is then the class's, which is empty for one address; nothing here
    calls it. `del`, not `__dict__.pop`: asking for `__dict__` makes the instance a dict of its
    own (~64 B more than the attribute values it keeps inline)."""
    prefix = ipaddress.ip_network((address, length))
    with contextlib.suppress(AttributeError):  # a shorter prefix has no closure of its own
        del prefix.hosts
    return prefix


def _next_hop(attrs: dict[int, bytes]) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if RTA_GATEWAY in attrs:
        return _shared_address(attrs[RTA_GATEWAY])
    if RTA_VIA in attrs:  # struct rtvia: family, then the address (IPv4 via inet6)
        return _shared_address(attrs[RTA_VIA][2:])
    return None


@functools.lru_cache(maxsize=4096)
def _shared_table(table: int) -> int:
    """One int object per table number: each route parsed its own (32 B, above 256)."""
    return table


@functools.lru_cache(maxsize=4096)
def _shared_address(packed: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """One object per next hop: there are a few (one per peer host) for 100,000s of routes, and
    a new one per route cost ~100 bytes each (addresses are immutable, so sharing is safe)."""
    return ipaddress.ip_address(packed)


def _key(route: Watched) -> tuple[int, object, int]:
    return (route.table, route.prefix, route.metric)  # the kernel's identity of a route


class MirrorWatch:
    """The mirror tables of one network namespace (None: this process's own), kept current, and
    its publish tables (`published`).

    open() dumps; then wait() blocks until the kernel reports changes and returns them, with
    `routes` updated. fileno() lets an agent loop select() on it with its other inputs.
    `tables`: which tables to keep (the benchmark also watches a VRF table); routes outside the
    publish and mirror tables are kept only when they have a gateway, as the agent's remote
    ones do.
    """

    def __init__(self, netns: str | None = None, tables: Container[int] = AGENT_TABLES) -> None:
        self.netns = netns
        self._tables = tables
        self._routes: dict[tuple[int, object, int], Watched] = {}
        self._sock: socket.socket | None = None
        self._seq = 0
        self._buffer = memoryview(bytearray(RECV_BUF))  # reused: no 1 MB allocation per read

    @property
    def routes(self) -> frozenset[MirrorRoute]:
        return frozenset(r for r in self._routes.values() if isinstance(r, MirrorRoute))

    @property
    def published(self) -> frozenset[PublishedRoute]:
        return frozenset(r for r in self._routes.values() if isinstance(r, PublishedRoute))

    def __len__(self) -> int:
        return len(self.routes)

    def open(self) -> MirrorWatch:
        self._sock = _open_socket(self.netns)
        self._sock.bind((0, RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))
        self._resync()
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> MirrorWatch:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def fileno(self) -> int:
        if self._sock is None:
            raise WatchError("the mirror watch is not open")
        return self._sock.fileno()

    def wait(self, timeout: float | None = None) -> list[RouteEvent]:
        """Block up to `timeout` seconds (None: forever) for route changes; return all that have
        arrived by then (an empty list on timeout)."""
        events: list[RouteEvent] = []
        ready, _, _ = select.select([self], [], [], timeout)
        while ready:
            try:
                data, drained = self._read_queued()
            except _Overflow:
                events += self._resync()  # the kernel dropped events: the dump is the truth
                continue
            events += self._apply(data)
            if drained:
                break
        return events

    def _read_queued(self) -> tuple[bytes, bool]:
        """Every message queued, as far as the buffer holds them, parsed as one: each kernel
        event is its own datagram, so a burst costs one read call per event but no allocation
        or parse call per event. True when the queue is empty."""
        buffer, used = self._buffer, 0
        while len(buffer) - used >= RECV_ROOM:
            try:
                used += self._read_into(buffer[used:], socket.MSG_DONTWAIT)
            except BlockingIOError:
                return bytes(buffer[:used]), True
            except _Overflow:
                if used:  # what was read is still true; the resync follows on the next call
                    break
                raise
        return bytes(buffer[:used]), False

    def _read(self, flags: int = 0) -> bytes:
        """One read (one datagram)."""
        return bytes(self._buffer[: self._read_into(self._buffer, flags)])

    def _read_into(self, buffer: memoryview, flags: int = 0) -> int:
        """One datagram into `buffer`; the kernel's "events dropped" is _Overflow, any other
        error a WatchError (BlockingIOError, for a non-blocking read of an empty queue, passes
        as it is)."""
        try:
            return self._recv_into(buffer, flags)
        except BlockingIOError:
            raise
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:
                raise _Overflow from None
            raise WatchError(f"netlink route watch failed: {exc.strerror}") from None

    def _recv_into(self, buffer: memoryview, flags: int = 0) -> int:
        assert self._sock is not None
        return self._sock.recv_into(buffer, 0, flags)

    def _apply(self, data: bytes) -> list[RouteEvent]:
        events = []
        for kind, _seq, _pid, route in parse(data, self._tables):
            if route is None:
                continue
            key = _key(route)
            if kind == RTM_NEWROUTE:
                events.append(RouteEvent(True, route, self._routes.get(key)))
                self._routes[key] = route
            else:
                events.append(RouteEvent(False, self._routes.pop(key, route)))
        return events

    def _dump(self) -> list[RouteEvent]:
        """Request a dump and read to its end; events that interleave apply in arrival order."""
        assert self._sock is not None
        self._seq += 1
        request = RTMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0, 0)
        header = NLMSGHDR.pack(
            NLMSGHDR.size + len(request), RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, self._seq, 0
        )
        self._sock.send(header + request)
        port = self._sock.getsockname()[0]
        events: list[RouteEvent] = []
        while True:
            data = self._read()
            events += self._apply(data)
            if any(
                kind in (NLMSG_DONE, NLMSG_ERROR) and seq == self._seq and pid == port
                for kind, seq, pid, _ in parse(data, self._tables)
            ):
                return events

    def _resync(self) -> list[RouteEvent]:
        """A fresh dump, its difference from what was kept as events. The queue is drained
        first: once a netlink socket has overflowed, the kernel drops further events without
        reporting ENOBUFS again until the queue has been empty (NETLINK_S_CONGESTED), so a dump
        read behind a full queue could lose routes for good (the directory bench's watch missed
        35,000 of 100,000 that way). An overflow during the dump starts it over."""
        before = dict(self._routes)
        while True:
            self._drain()
            self._routes.clear()
            try:
                self._dump()
                break
            except _Overflow:
                continue
        gone = [RouteEvent(False, r) for k, r in before.items() if k not in self._routes]
        new = [
            RouteEvent(True, r, before.get(k))
            for k, r in self._routes.items()
            if before.get(k) != r
        ]
        return gone + new

    def _drain(self) -> None:
        """Discard what is queued: the dump that follows supersedes it."""
        while True:
            try:
                self._read_into(self._buffer, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except _Overflow:
                continue  # more dropped: the dump that follows covers them too


def _open_socket(netns: str | None) -> socket.socket:
    """A NETLINK_ROUTE socket in a named network namespace (a socket belongs to the namespace of
    the thread that creates it)."""
    try:
        return run_in_netns(netns, _new_socket)
    except NetnsError as exc:
        raise WatchError(str(exc)) from None


def _new_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    except PermissionError:  # not root: the sysctl-limited buffer, and resyncs on overflow
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
    return sock
