from __future__ import annotations

import ipaddress
import re
from dataclasses import replace
from typing import Any

from routed_nv.cli.sa import render_table
from routed_nv.esp.spimap import SpiMap, rows_from_sas, rows_from_states
from routed_nv.esp.xfrm import parse_counters, parse_states
from routed_nv.model import markers, spi
from routed_nv.model.secret import Secret
from routed_nv.model.xfrm import SaCounters, XfrmState


def child(name: str, uid: str, tenant: int, spi_in: str, spi_out: str) -> dict[str, Any]:
    return {
        "name": name,
        "uniqueid": uid,
        "reqid": str(markers.reqid(tenant)),
        "state": "INSTALLED",
        "spi-in": spi_in,
        "spi-out": spi_out,
        "bytes-in": "840",
        "bytes-out": "960",
        "packets-in": "10",
        "packets-out": "12",
        "rekey-time": "3300",
        "install-time": "42",
    }


def ike_sa(*children: dict[str, Any], uid: str = "1") -> dict[str, Any]:
    return {
        "uniqueid": uid,
        "state": "ESTABLISHED",
        "child-sas": {f"{c['name']}-{c['uniqueid']}": c for c in children},
    }


def test_rows_from_list_sas_name_peer_tenant_and_spis() -> None:
    sas = [
        ("rnv-host2", ike_sa(child("rnv-host2-t100", "7", 100, "c0a80001", "cafe0002"))),
        ("roadwarrior", ike_sa(child("rw", "8", 100, "00000001", "00000002"))),
    ]
    (row,) = rows_from_sas(sas)
    assert (row.peer, row.tenant, row.spi_in, row.spi_out) == ("host2", 100, 0xC0A80001, 0xCAFE0002)
    assert (row.bytes_in, row.packets_out, row.rekey_in_s, row.established_s) == (840, 12, 3300, 42)
    assert row.as_json()["spi_in"] == "0xc0a80001"
    table = render_table([row])
    header = [c.strip() for c in table.splitlines()[1].split("|")[1:5]]
    assert header == ["PEER", "TENANT", "SPI-IN", "SPI-OUT"]
    assert "0xc0a80001" in table and "42s" in table


def test_a_child_sa_without_our_reqid_is_not_listed() -> None:
    foreign = child("rnv-host2-t100", "7", 100, "1", "2") | {"reqid": "5"}
    assert rows_from_sas([("rnv-host2", ike_sa(foreign))]) == []


def test_events_keep_the_map_current() -> None:
    spimap = SpiMap()
    old = child("rnv-host2-t100", "7", 100, "00000a01", "00000a02")
    spimap.load([("rnv-host2", ike_sa(old))])
    new = child("rnv-host2-t100", "9", 100, "00000b01", "00000b02")
    spimap.on_event(
        "child-rekey", {"rnv-host2": ike_sa() | {"child-sas": {"x": {"old": old, "new": new}}}}
    )
    assert [r.spi_in for r in spimap.rows()] == [0xB01]
    red = child("rnv-host2-t200", "10", 200, "00000c01", "00000c02")
    spimap.on_event("child-updown", {"up": "yes", "rnv-host2": ike_sa(red)})
    assert [r.tenant for r in spimap.rows()] == [100, 200]
    spimap.on_event("child-updown", {"rnv-host2": ike_sa(red)})  # down: no "up"
    assert [r.tenant for r in spimap.rows()] == [100]
    spimap.on_event("ike-updown", {"rnv-host2": ike_sa(new)})
    assert spimap.rows() == []


def test_static_rows_pair_directions_per_generation_from_the_spi() -> None:
    here = ipaddress.IPv6Network("2001:db8:0:1::/64")
    there = ipaddress.IPv6Network("2001:db8:0:2::/64")

    def state(
        src: ipaddress.IPv6Network, dst: ipaddress.IPv6Network, sender: int, gen: int
    ) -> XfrmState:
        return XfrmState(
            src=src[0x10064], dst=dst[0x10064], spi=spi.encode(100, sender, gen),
            reqid=markers.reqid(100), key_material=Secret(b"k" * 20),
        )  # fmt: skip

    states = [state(here, there, 1, 1), state(there, here, 2, 0), state(there, here, 2, 1)]
    rows = rows_from_states(states, here, {there: "host2"})
    assert [(r.peer, r.tenant, r.generation, r.spi_in, r.spi_out) for r in rows] == [
        ("host2", 100, 0, spi.encode(100, 2, 0), None),
        ("host2", 100, 1, spi.encode(100, 2, 1), spi.encode(100, 1, 1)),
    ]


# `ip -s xfrm state` of iproute2 6.x: one outbound SA of tenant 100 that sent traffic, one
# inbound that dropped replayed and undecryptable packets, one foreign SA
IP_S_XFRM_STATE = """\
src 2001:db8:0:1::1:64 dst 2001:db8:0:2::1:64
\tproto esp spi 0x00640004(6553604) reqid 65636(0x00010064) mode transport
\treplay-window 0 flag af-unspec
\taead rfc4106(gcm(aes)) 0x6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b 128
\tanti-replay esn context:
\t seq-hi 0x0, seq 0x0, oseq-hi 0x0, oseq 0x2a
\t replay_window 64, bitmap-length 2
\t 00000000 00000000
\tlifetime config:
\t  limit: soft (INF)(bytes), hard (INF)(bytes)
\t  limit: soft (INF)(packets), hard (INF)(packets)
\t  expire add: soft 0(sec), hard 0(sec)
\t  expire use: soft 0(sec), hard 0(sec)
\tlifetime current:
\t  5040(bytes), 42(packets)
\t  add 2026-12-05 21:00:00 use 2026-12-05 21:00:01
\tstats:
\t  replay-window 0 replay 0 failed 0
src 2001:db8:0:2::1:64 dst 2001:db8:0:1::1:64
\tproto esp spi 0x00640008(6553608) reqid 65636(0x00010064) mode transport
\treplay-window 0 flag af-unspec
\taead rfc4106(gcm(aes)) 0x6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b 128
\tlifetime current:
\t  960(bytes), 8(packets)
\t  add 2026-12-05 21:00:00 use 2026-12-05 21:00:01
\tstats:
\t  replay-window 1 replay 2 failed 3
src 192.0.2.1 dst 192.0.2.2
\tproto esp spi 0x00000001(1) reqid 1(0x00000001) mode tunnel
\tlifetime current:
\t  1(bytes), 1(packets)
\tstats:
\t  replay-window 0 replay 0 failed 0
"""


def test_static_rows_carry_the_kernel_counters_and_the_table_the_tenant_name() -> None:
    counters = parse_counters(IP_S_XFRM_STATE)
    here = ipaddress.IPv6Network("2001:db8:0:1::/64")
    there = ipaddress.IPv6Network("2001:db8:0:2::/64")
    out_key = (ipaddress.IPv6Address("2001:db8:0:2::1:64"), 0x00640004)
    in_key = (ipaddress.IPv6Address("2001:db8:0:1::1:64"), 0x00640008)
    assert counters == {out_key: SaCounters(5040, 42, 0), in_key: SaCounters(960, 8, 6)}
    states = parse_states(re.sub(r"\((\d+|0x[0-9a-f]+)\)", "", IP_S_XFRM_STATE))  # without -s
    rows = rows_from_states(states, here, {there: "host2"}, counters)
    (row,) = (r for r in rows if r.spi_out == 0x00640004)
    assert (row.bytes_out, row.packets_out, row.errors_out) == (5040, 42, 0)
    assert (row.bytes_in, row.packets_in, row.errors_in) == (960, 8, 6)
    table = render_table([replace(row, tenant_name="blue")])
    header, cells = ([c.strip() for c in table.splitlines()[i].split("|")[1:-1]] for i in (1, 3))
    shown = dict(zip(header, cells, strict=True))
    assert shown["TENANT"] == "blue (100)"
    assert (shown["PKTS-OUT"], shown["ERR-IN"], shown["ERR-OUT"]) == ("42", "6", "0")
