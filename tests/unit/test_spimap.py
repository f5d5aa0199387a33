from __future__ import annotations

import ipaddress
from typing import Any

from routed_nv import markers
from routed_nv.cli.sa import render_table
from routed_nv.esp import spi
from routed_nv.esp.objects import XfrmState
from routed_nv.esp.secret import Secret
from routed_nv.esp.spimap import SpiMap, rows_from_sas, rows_from_states


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
    assert table.splitlines()[0].split()[:4] == ["PEER", "TENANT", "SPI-IN", "SPI-OUT"]
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
