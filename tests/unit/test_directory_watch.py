"""netlink_watch: the route-message parser on hand-built messages, and the state it keeps."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

import pytest

from routed_nv.directory import netlink_watch as nw
from routed_nv.directory.learn import MirrorRoute, PublishedRoute
from routed_nv.model import markers
from tests.fakes import FakeWatchSocket

TABLE = markers.mirror_table(100)


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes(-length % 4)


def message(kind: int, family: int, dst: str, dst_len: int, table: int, *attrs: bytes,
            seq: int = 0, pid: int = 0, proto: int = 186) -> bytes:  # fmt: skip
    body = struct.pack("=BBBBBBBBI", family, dst_len, 0, 0, table & 0xFF, proto, 0, 1, 0)
    body += attr(nw.RTA_DST, ipaddress.ip_address(dst).packed)
    body += attr(nw.RTA_TABLE, struct.pack("=I", table)) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, seq, pid) + body


def via6(address: str) -> bytes:
    return attr(
        nw.RTA_VIA, struct.pack("=H", socket.AF_INET6) + ipaddress.ip_address(address).packed
    )


def test_ipv4_route_via_inet6_with_metric() -> None:
    data = message(nw.RTM_NEWROUTE, socket.AF_INET, "10.0.0.2", 32, TABLE, via6("2001:db8:0:2::1"),
                   attr(nw.RTA_PRIORITY, struct.pack("=I", 3)))  # fmt: skip
    [(kind, _, _, route)] = list(nw.parse(data))
    assert kind == nw.RTM_NEWROUTE
    assert route == MirrorRoute(
        TABLE, ipaddress.ip_network("10.0.0.2/32"), ipaddress.ip_address("2001:db8:0:2::1"), 3
    )


def test_the_mobility_sequence_comes_from_the_window_metric() -> None:
    window = attr(nw.RTAX_WINDOW, struct.pack("=I", 7))
    mtu = attr(2, struct.pack("=I", 1400))  # RTAX_MTU: another metric, ignored
    data = message(nw.RTM_NEWROUTE, socket.AF_INET6, "fd10::3", 128, TABLE,
                   via6("2001:db8:0:2::1"), attr(nw.RTA_METRICS, mtu + window))  # fmt: skip
    [(_, _, _, route)] = list(nw.parse(data))
    assert isinstance(route, MirrorRoute) and route.sequence == 7


def test_a_route_for_several_tenants_is_marked_by_its_advmss_metric() -> None:
    advmss = attr(nw.RTAX_ADVMSS, struct.pack("=I", 2))
    data = message(nw.RTM_NEWROUTE, socket.AF_INET, "10.0.0.2", 32, TABLE,
                   via6("2001:db8:0:2::1"), attr(nw.RTA_METRICS, advmss))  # fmt: skip
    [(_, _, _, route)] = list(nw.parse(data))
    assert isinstance(route, MirrorRoute) and route.tenants == 2
    plain = message(nw.RTM_NEWROUTE, socket.AF_INET, "10.0.0.2", 32, TABLE, via6("2001:db8::1"))
    [(_, _, _, route)] = list(nw.parse(plain))
    assert isinstance(route, MirrorRoute) and route.tenants == 1


def test_a_mirror_route_without_a_gateway_is_kept_for_learn_to_refuse() -> None:
    oif = attr(4, struct.pack("=I", 9))  # RTA_OIF only: a device route someone wrote by hand
    [(_, _, _, route)] = list(nw.parse(message(nw.RTM_NEWROUTE, socket.AF_INET, "10.0.0.2", 32,
                                               TABLE, oif)))  # fmt: skip
    assert route == MirrorRoute(TABLE, ipaddress.ip_network("10.0.0.2/32"), None, 0)
    # outside the mirror tables (the benchmark's VRF table) such routes are not the agent's
    vrf = message(nw.RTM_NEWROUTE, socket.AF_INET, "10.0.0.2", 32, 100, oif)
    assert [r for _, _, _, r in nw.parse(vrf, {100})] == [None]


def test_publish_table_routes_are_this_hosts_announcements() -> None:
    table = markers.publish_table(100)
    oif = attr(4, struct.pack("=I", 9))  # RTA_OIF: a publish route has a device, no gateway
    metric = attr(nw.RTA_PRIORITY, struct.pack("=I", 2))
    data = message(nw.RTM_NEWROUTE, socket.AF_INET, "10.0.0.2", 32, table, oif, metric,
                   proto=markers.RTPROT_STALE)  # fmt: skip
    watch = ScriptedWatch([])
    watch._apply(data)
    net = ipaddress.ip_network("10.0.0.2/32")
    assert watch.published == {PublishedRoute(table, net, 2, markers.RTPROT_STALE)}
    assert watch.routes == frozenset() and len(watch) == 0


def test_ipv6_route_with_gateway_and_several_messages_in_one_read() -> None:
    gw = attr(nw.RTA_GATEWAY, ipaddress.ip_address("2001:db8:0:3::1").packed)
    data = message(nw.RTM_NEWROUTE, socket.AF_INET6, "fd10::3", 128, TABLE, gw) + message(
        nw.RTM_DELROUTE, socket.AF_INET6, "fd10::4", 128, TABLE, gw
    )
    routes = [(kind, r.prefix if r else None) for kind, _, _, r in nw.parse(data)]
    assert routes == [
        (nw.RTM_NEWROUTE, ipaddress.ip_network("fd10::3/128")),
        (nw.RTM_DELROUTE, ipaddress.ip_network("fd10::4/128")),
    ]


def test_routes_share_one_object_per_next_hop_and_keep_no_attribute_dict() -> None:
    # a watch keeps 100,000s of routes (a UML guest kills a process that maps too many pages)
    gw = attr(nw.RTA_GATEWAY, ipaddress.ip_address("2001:db8:0:3::1").packed)
    data = b"".join(
        message(nw.RTM_NEWROUTE, socket.AF_INET6, f"fd10::{i}", 128, TABLE, gw) for i in (3, 4)
    ) + message(nw.RTM_NEWROUTE, socket.AF_INET, "10.0.0.2", 32, TABLE, via6("2001:db8:0:3::1"))
    first, second, third = (r for _, _, _, r in nw.parse(data))
    assert isinstance(first, MirrorRoute) and isinstance(second, MirrorRoute)
    assert isinstance(third, MirrorRoute) and first.prefix != second.prefix
    assert first.next_hop is second.next_hop is third.next_hop
    assert not hasattr(first, "__dict__")
    # the table number (above 256: not one of Python's cached small ints) is shared too
    assert first.table is second.table is third.table


def test_routes_outside_mirror_and_publish_tables_are_ignored() -> None:
    gw = via6("2001:db8:0:2::1")
    other = message(nw.RTM_NEWROUTE, socket.AF_INET, "10.0.0.2", 32, 254, gw)
    assert [r for *_, r in nw.parse(other)] == [None]


def test_other_tables_are_kept_when_asked_for() -> None:
    vrf = markers.vrf_table(100)
    data = message(nw.RTM_NEWROUTE, socket.AF_INET, "10.0.0.2", 32, vrf, via6("2001:db8:0:2::64"))
    data += message(nw.RTM_NEWROUTE, socket.AF_INET, "10.0.0.3", 32, TABLE, via6("2001:db8::1"))
    assert [r.table if r else None for *_, r in nw.parse(data, {vrf})] == [vrf, None]


def test_the_agents_own_vrf_writes_are_dropped_before_their_attributes_are_read() -> None:
    """The agent's remote and infrastructure routes echo back on the watch by the 100,000:
    their protocol alone rules them out of the agent's tables."""
    own = message(nw.RTM_NEWROUTE, socket.AF_INET, "10.0.0.2", 32, TABLE, via6("2001:db8:0:2::1"),
                  proto=markers.RTPROT_REMOTE)  # fmt: skip
    assert [r for *_, r in nw.parse(own)] == [None]
    assert [r.table if r else None for *_, r in nw.parse(own, {TABLE})] == [TABLE]


def test_dump_error_is_a_clear_error() -> None:
    error = struct.pack("=IHHII", 20, nw.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -1)
    with pytest.raises(nw.WatchError, match="netlink route dump failed: Operation not permitted"):
        list(nw.parse(error))


class ScriptedWatch(nw.MirrorWatch):
    """The watch's bookkeeping without a socket: reads come from a list."""

    def __init__(self, reads: list[bytes | OSError]) -> None:
        super().__init__()
        self.reads = reads

    def _recv_into(self, buffer: memoryview, flags: int = 0) -> int:
        read = self.reads.pop(0)
        if isinstance(read, OSError):
            raise read
        buffer[: len(read)] = read
        return len(read)


def test_events_update_the_routes_by_kernel_identity() -> None:
    gw2, gw3 = via6("2001:db8:0:2::1"), via6("2001:db8:0:3::1")
    watch = ScriptedWatch([])
    events = watch._apply(
        message(nw.RTM_NEWROUTE, socket.AF_INET, "10.0.0.2", 32, TABLE, gw2)
        + message(nw.RTM_NEWROUTE, socket.AF_INET, "10.0.0.2", 32, TABLE, gw3)  # replaces
        + message(nw.RTM_NEWROUTE, socket.AF_INET, "10.0.0.5", 32, TABLE, gw3)
        + message(nw.RTM_DELROUTE, socket.AF_INET, "10.0.0.5", 32, TABLE, gw3)
    )
    assert [str(e).split(" via")[0] for e in events] == [
        "add 10.0.0.2/32", "add 10.0.0.2/32", "add 10.0.0.5/32", "del 10.0.0.5/32"
    ]  # fmt: skip
    (route,) = watch.routes
    assert str(route.next_hop) == "2001:db8:0:3::1"


def test_one_read_takes_every_queued_message_into_one_buffer() -> None:
    gw = via6("2001:db8:0:2::1")
    queued = [message(nw.RTM_NEWROUTE, socket.AF_INET, f"10.0.0.{i}", 32, TABLE, gw)
              for i in range(1, 6)]  # fmt: skip
    watch = ScriptedWatch([*queued, BlockingIOError()])
    data, drained = watch._read_queued()
    assert drained and data == b"".join(queued) and watch.reads == []
    assert len(watch._apply(data)) == 5 and len(watch.routes) == 5


def test_resync_turns_a_fresh_dump_into_the_difference() -> None:
    gw = via6("2001:db8:0:2::1")
    kept = message(nw.RTM_NEWROUTE, socket.AF_INET, "10.0.0.2", 32, TABLE, gw)
    watch = ScriptedWatch([])
    watch._apply(kept + message(nw.RTM_NEWROUTE, socket.AF_INET, "10.0.0.3", 32, TABLE, gw))
    watch._sock = FakeWatchSocket()  # type: ignore[assignment]
    done = struct.pack("=IHHII", 16, nw.NLMSG_DONE, 0, 1, FakeWatchSocket.PORT)
    fresh = kept + message(nw.RTM_NEWROUTE, socket.AF_INET, "10.0.0.4", 32, TABLE, gw)
    watch.reads = [BlockingIOError(), fresh, done]  # nothing queued, then the dump
    events = watch._resync()
    assert sorted(str(e).split(" via")[0] for e in events) == ["add 10.0.0.4/32", "del 10.0.0.3/32"]
    assert {str(r.prefix) for r in watch.routes} == {"10.0.0.2/32", "10.0.0.4/32"}


def test_a_resync_drains_the_queue_and_starts_over_when_the_dump_overflows() -> None:
    """Until its queue has been empty, an overflowed socket loses events without another
    ENOBUFS: the resync empties it first, and an overflow while dumping means dump again."""
    gw = via6("2001:db8:0:2::1")

    def route(kind: int, dst: str) -> bytes:
        return message(kind, socket.AF_INET, dst, 32, TABLE, gw)

    second_done = struct.pack("=IHHII", 16, nw.NLMSG_DONE, 0, 2, FakeWatchSocket.PORT)
    watch = ScriptedWatch([])
    watch._sock = FakeWatchSocket()  # type: ignore[assignment]
    watch.reads = [
        route(nw.RTM_NEWROUTE, "10.0.0.9"),  # queued before the overflow: drained, not applied
        OSError(errno.ENOBUFS, "No buffer space available"),
        BlockingIOError(),  # queue empty: the kernel reports the next overflow
        route(nw.RTM_NEWROUTE, "10.0.0.1"),  # a first dump, cut short by an overflow
        OSError(errno.ENOBUFS, "No buffer space available"),
        route(nw.RTM_DELROUTE, "10.0.0.7"),  # drained again
        BlockingIOError(),
        route(nw.RTM_NEWROUTE, "10.0.0.1") + route(nw.RTM_NEWROUTE, "10.0.0.2") + second_done,
    ]
    events = watch._resync()
    assert watch.reads == []
    assert sorted(str(r.prefix) for r in watch.routes) == ["10.0.0.1/32", "10.0.0.2/32"]
    assert sorted(str(e).split(" via")[0] for e in events) == ["add 10.0.0.1/32", "add 10.0.0.2/32"]
