"""The IKE driver against a fake charon that answers VICI like charon 5.9.8 does."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from routed_nv.esp.ike import (
    IkeDriver,
    IkeSa,
    Verb,
    _duplicates,
    _surplus_children,
    read_charon,
)
from routed_nv.esp.vici_adapter import ViciError, ViciSession
from routed_nv.esp.xfrm import XfrmError
from routed_nv.model.ike import DesiredIke, IkeConn
from routed_nv.model.xfrm import Direction, XfrmPolicy
from tests.fakes import FakeCharon
from tests.unit.test_ike_calc import config, ike_desired


@pytest.fixture
def desired(tmp_path: Path) -> DesiredIke:
    path = tmp_path / "psk"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"secret")
    os.close(fd)
    cfg = config({"mode": "ike", "psk_file": str(path)})
    return ike_desired(cfg)


def driver_for(charon: FakeCharon, pins: list[XfrmPolicy] | None = None) -> IkeDriver:
    """`pins`: charon's outbound policies in the kernel, as the XFRM driver reads them."""

    @contextmanager
    def connect() -> Iterator[FakeCharon]:
        yield charon

    if pins is None:
        return IkeDriver(connect)  # type: ignore[arg-type]
    return IkeDriver(connect, read_pins=lambda: list(pins))  # type: ignore[arg-type]


def test_first_apply_loads_the_secret_then_the_conns_and_initiates_nothing(
    desired: DesiredIke,
) -> None:
    charon = FakeCharon()
    result = driver_for(charon).reconcile(desired)
    assert result.ok, result.errors
    # start_action=start brings freshly loaded conns up: initiating too would race it
    assert charon.calls == ["load-shared rnv-psk", "load-conn rnv-host2", "load-conn rnv-host3"]


def test_a_converged_charon_gets_no_calls_and_an_empty_plan(desired: DesiredIke) -> None:
    charon = FakeCharon()
    driver = driver_for(charon)
    driver.reconcile(desired)
    charon.establish("rnv-host2", ["rnv-host2-t100", "rnv-host2-t200"])
    charon.establish("rnv-host3", ["rnv-host3-t200"], uniqueid="2")
    charon.calls.clear()
    assert not driver.plan(desired)
    assert driver.reconcile(desired).done == [] and charon.calls == []


def test_missing_children_are_initiated_and_foreign_conns_left_alone(desired: DesiredIke) -> None:
    charon = FakeCharon()
    driver = driver_for(charon)
    driver.reconcile(desired)
    charon.conns["roadwarrior"] = {"local_addrs": [], "remote_addrs": [], "children": {}}
    charon.conns["rnv-host9"] = {"local_addrs": [], "remote_addrs": [], "children": {}}
    charon.establish("rnv-host2", ["rnv-host2-t100"])
    charon.calls.clear()
    driver.reconcile(desired)
    assert charon.calls == [
        "unload-conn rnv-host9",
        "initiate rnv-host2-t200",
        "initiate rnv-host3-t200",
    ]
    assert "roadwarrior" in charon.conns


def test_what_a_charon_restart_or_load_all_dropped_is_put_back(desired: DesiredIke) -> None:
    charon = FakeCharon()
    driver = driver_for(charon)
    driver.reconcile(desired)
    charon.conns.clear()  # swanctl --load-all unloads VICI-loaded conns
    charon.shared.clear()  # and a restart forgets the secret too
    charon.calls.clear()
    plan = driver.plan(desired)
    assert [op.describe() for op in plan.changes] == [
        "load-shared rnv-psk (missing)",
        "load-conn rnv-host2 (missing)",
        "load-conn rnv-host3 (missing)",
    ]
    assert charon.calls == []  # planning changes nothing
    driver.reconcile(desired)
    assert sorted(charon.conns) == ["rnv-host2", "rnv-host3"]


def test_a_restarted_agent_reloads_once_and_a_changed_conn_is_reloaded(
    desired: DesiredIke, tmp_path: Path
) -> None:
    charon = FakeCharon()
    driver_for(charon).reconcile(desired)
    fresh = driver_for(charon)
    charon.calls.clear()
    fresh.reconcile(desired)  # no memory: reload (charon keeps identical conns and their SAs)
    assert charon.calls == ["load-shared rnv-psk", "load-conn rnv-host2", "load-conn rnv-host3"]
    charon.calls.clear()
    fresh.reconcile(desired)
    assert [c for c in charon.calls if c.startswith("load")] == []

    cfg = config(
        {"mode": "ike", "psk_file": str(tmp_path / "psk"), "esp_proposals": ["aes256gcm16"]}
    )
    changed = ike_desired(cfg)
    charon.calls.clear()
    fresh.reconcile(changed)
    assert charon.calls == ["load-conn rnv-host2", "load-conn rnv-host3"]


def test_busy_ike_sas_are_waited_for(desired: DesiredIke) -> None:
    charon = FakeCharon()
    driver = driver_for(charon)
    driver.reconcile(desired)
    charon.sas.append(("rnv-host2", {"uniqueid": "1", "state": "CONNECTING", "child-sas": {}}))
    charon.sas.append(
        ("rnv-host3", {"uniqueid": "2", "state": "ESTABLISHED", "tasks-active": ["CHILD_CREATE"]})
    )
    plan = driver.plan(desired)
    assert not plan.changes and len(plan.pending) == 2


def duplicate_pair(charon: FakeCharon, ours: list[str], peers: list[str], ids: str = "12") -> None:
    """host2 with two IKE_SAs, one we initiated (id ids[0]) and one host2 did (ids[1]), and
    host3 up: the start of every duplicate case."""
    charon.establish("rnv-host2", ours, ids[0], True, "ff00")
    charon.establish("rnv-host2", peers, ids[1], False, "0001")
    charon.establish("rnv-host3", ["rnv-host3-t200"], "3")


def flipped(conn: IkeConn) -> IkeConn:
    """The same connection seen from the peer's end."""
    return replace(conn, local_addr=conn.remote_addr, remote_addr=conn.local_addr)


def seen_from_the_peer(sa: IkeSa) -> IkeSa:
    return replace(sa, initiator=not sa.initiator, uniqueid=f"peer-{sa.uniqueid}")


def test_duplicate_ike_sas_keep_the_lower_hosts_and_the_higher_end_terminates_its_own(
    desired: DesiredIke,
) -> None:
    charon = FakeCharon()
    driver = driver_for(charon)
    driver.reconcile(desired)
    # host1 (::1:...) is lower than host2: it keeps the one it initiated and terminates nothing
    both = ["rnv-host2-t100", "rnv-host2-t200"]
    duplicate_pair(charon, both, both)
    assert not driver.plan(desired).changes

    # host2 terminates the one it initiated, though its initiator SPI is the lower
    sas = tuple(map(seen_from_the_peer, read_charon(charon).sas["rnv-host2"]))
    (op,), _ = _duplicates(flipped(desired.conns["rnv-host2"]), sas, frozenset())
    assert op.verb is Verb.TERMINATE and op.ike_id == "peer-2"


def test_duplicates_one_end_initiated_are_resolved_by_that_end(desired: DesiredIke) -> None:
    """charon can start two IKE_SAs for one connection itself; the peer initiated neither and
    must not wait for the other end to act (it did, and the pair kept both for ever)."""
    charon = FakeCharon()
    driver = driver_for(charon)
    driver.reconcile(desired)
    charon.establish("rnv-host2", ["rnv-host2-t100"], "1", True, "c0ffee0000000002")
    charon.establish("rnv-host2", ["rnv-host2-t200"], "2", True, "c0ffee0000000001")
    charon.establish("rnv-host2", ["rnv-host2-t100"], "3", False, "0000000000000001")
    plan = driver.plan(desired)
    ops = [(op.verb, op.ike_id) for op in plan.changes if op.name == "rnv-host2"]
    assert ops == [(Verb.TERMINATE, "1")]

    sas = tuple(map(seen_from_the_peer, read_charon(charon).sas["rnv-host2"]))
    (op,), _ = _duplicates(flipped(desired.conns["rnv-host2"]), sas, frozenset())
    assert op.ike_id == "peer-3"  # the peer's own: both ends keep "2", from the lower end


def test_a_child_sa_both_ends_initiated_in_one_ike_sa_is_deleted_by_the_lower_end(
    desired: DesiredIke,
) -> None:
    charon = FakeCharon()
    driver = driver_for(charon)
    driver.reconcile(desired)
    # the peer's and ours, both INSTALLED; and a rekey's old one (REKEYED) is no duplicate
    charon.establish("rnv-host2", ["rnv-host2-t100", "rnv-host2-t200", "rnv-host2-t100"], "7")
    charon.establish("rnv-host3", ["rnv-host3-t100", "rnv-host3-t200", "rnv-host3-t200"], "8")
    charon.sas[-1][1]["child-sas"]["rnv-host3-t200-1"]["state"] = "REKEYED"
    charon.calls.clear()
    result = driver.reconcile(desired)
    assert result.ok, result.errors
    assert charon.calls == ["terminate-child 70"]  # "72" stays, the one numbered last
    assert result.lines() == ["terminate-child rnv-host2-t100{70} (duplicate CHILD_SA)"]

    # the higher end leaves it to the lower one: the two would delete both copies at once
    sas = tuple(map(seen_from_the_peer, read_charon(charon).sas["rnv-host2"]))
    assert _surplus_children(flipped(desired.conns["rnv-host2"]), sas) == []


def test_a_wrong_psk_becomes_a_clear_error_and_stops_that_peer_only(desired: DesiredIke) -> None:
    charon = FakeCharon()
    driver = driver_for(charon)
    driver.reconcile(desired)
    charon.calls.clear()
    charon.initiate_error = ViciError(
        "initiating rnv-host2-t100: establishing CHILD_SA 'rnv-host2-t100' failed",
        ("received AUTHENTICATION_FAILED notify error",),
    )
    result = driver.reconcile(desired)
    # the second child of host2 is not tried (same IKE_SA), host3 is
    assert charon.calls == ["initiate rnv-host2-t100", "initiate rnv-host3-t200"]
    assert len(result.errors) == 2
    assert result.errors[0].startswith("initiate rnv-host2-t100 (not up): authentication failed")
    assert "pre-shared key (keying.psk_file)" in result.errors[0]
    assert "certificate" not in result.errors[0]
    assert result.errors[0].endswith("failed; received AUTHENTICATION_FAILED notify error]")


@pytest.fixture
def x509_desired(tmp_path: Path) -> DesiredIke:
    pem = "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n"
    for name in ("ca.pem", "cert.pem"):
        (tmp_path / name).write_text(pem)
    fd = os.open(tmp_path / "key.pem", os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n")
    os.close(fd)
    files = {"ca_cert": "ca.pem", "cert": "cert.pem", "key": "key.pem"}
    cfg = config({"mode": "ike", **{k: str(tmp_path / v) for k, v in files.items()}})
    return ike_desired(cfg)


def first_initiate_error(desired: DesiredIke, *log: str) -> str:
    """The driver's first error when charon fails every initiate with these log lines."""
    charon = FakeCharon()
    driver = driver_for(charon)
    driver.reconcile(desired)
    charon.initiate_error = ViciError(
        "initiating rnv-host2-t100: establishing CHILD_SA 'rnv-host2-t100' failed", log
    )
    return driver.reconcile(desired).errors[0]


# What charon 5.9.8 logs in the lab (tests/lab/test_ike_x509_kernel.py) when it checks a
# peer's certificate and refuses it; the peer only learns AUTHENTICATION_FAILED.
@pytest.mark.parametrize(
    "line",
    [
        'no issuer certificate found for "CN=host3"',
        "subject certificate invalid (valid from Nov 30 16:07:37 2026 to Dec 01 16:07:37 2026)",
    ],
)
def test_a_refused_peer_certificate_is_named_with_charons_reason(
    x509_desired: DesiredIke, line: str
) -> None:
    error = first_initiate_error(
        x509_desired, "initiating IKE_SA rnv-host2[1] to 2001:db8:0:2::1", line, "peer auth failed"
    )
    assert error.startswith(
        "initiate rnv-host2-t100 (not up): the peer's certificate is not trusted: it must be "
        "issued by keying.ca_cert"
    )
    assert error.endswith(f"failed; {line}]")


def test_a_peer_refusing_our_certificate_points_at_our_certificate(
    x509_desired: DesiredIke,
) -> None:
    error = first_initiate_error(x509_desired, "received AUTHENTICATION_FAILED notify error")
    assert "the peer does not accept this host's certificate (keying.cert" in error
    assert "pre-shared key" not in error


def test_charon_unreachable_is_one_clear_error(desired: DesiredIke, tmp_path: Path) -> None:
    driver = IkeDriver(lambda: ViciSession(tmp_path / "nope.vici"))
    result = driver.reconcile(desired)
    (error,) = result.errors
    assert "nope.vici does not exist: is charon running" in error


def addresses(conn: IkeConn, child: str) -> tuple[str, str]:
    """A CHILD_SA's tenant outer addresses (local, remote), from its selectors."""
    (c,) = [c for c in conn.children if c.name == child]
    return c.local_ts[0].split("/")[0], c.remote_ts[0].split("/")[0]


def with_spi(
    charon: FakeCharon, child_key: str, spi_out: int, local: str, remote: str, state: str = ""
) -> None:
    """Give one listed CHILD_SA its outbound SPI and selectors, as charon lists them."""
    for _, sa in charon.sas:
        child = (sa.get("child-sas") or {}).get(child_key)
        if child is not None:
            child["spi-out"] = f"{spi_out:08x}"
            child["local-ts"] = [f"{local}/128[ipencap]", f"{local}/128[ipv6]"]
            child["remote-ts"] = [f"{remote}/128[ipencap]", f"{remote}/128[ipv6]"]
            child["state"] = state or child["state"]


def pin(local: str, remote: str, proto: int, spi: int) -> XfrmPolicy:
    """charon's outbound policy for one inner protocol, pinned to `spi`."""
    return XfrmPolicy(
        Direction.OUT,
        ipaddress.IPv6Network(f"{local}/128"),
        ipaddress.IPv6Network(f"{remote}/128"),
        proto,
        500,
        reqid=65636,
        spi=spi,
    )


KEPT, TERMINATED = 0xC90CEB39, 0xC6F2FC7E  # host1's SPIs in the Debian 13 failure


def left_on_a_terminated_child_sa(
    desired: DesiredIke,
) -> tuple[FakeCharon, IkeDriver, list[XfrmPolicy], str, str]:
    """charon up with blue's IPv6 outbound policy towards host2 on the kept CHILD_SA's SPI and
    the IPv4 one on the terminated one's: (charon, driver, the pins it reads, local, remote)."""
    charon = FakeCharon()
    local, remote = addresses(desired.conns["rnv-host2"], "rnv-host2-t100")
    pins = [pin(local, remote, 41, KEPT), pin(local, remote, 4, TERMINATED)]
    driver = driver_for(charon, pins)
    driver.reconcile(desired)
    charon.establish("rnv-host2", ["rnv-host2-t100", "rnv-host2-t200"], "9")
    charon.establish("rnv-host3", ["rnv-host3-t200"], "3")
    with_spi(charon, "rnv-host2-t100-0", KEPT, local, remote)
    return charon, driver, pins, local, remote


def test_an_outbound_policy_left_on_a_terminated_child_sa_is_repaired_by_a_rekey(
    desired: DesiredIke,
) -> None:
    """The state strongSwan 6.0.1 left after a duplicate resolution (issue 13): of the two
    outbound policies of blue towards host2, IPv6 named the kept CHILD_SA's SPI, IPv4 the
    terminated one's. Seen at two applies in a row, the kept CHILD_SA is rekeyed."""
    charon, driver, pins, local, remote = left_on_a_terminated_child_sa(desired)
    charon.calls.clear()

    first = driver.reconcile(desired)
    assert charon.calls == []  # once could be a deletion between reading the kernel and charon
    assert first.pending == [
        f"rnv-host2: outbound policy {local} -> {remote} proto 4 names SPI 0xc6f2fc7e of no "
        "CHILD_SA, checking again"
    ]
    second = driver.reconcile(desired)
    assert charon.calls == ["rekey-child 90"]
    assert second.lines() == [
        f"rekey-child rnv-host2-t100{{90}} (outbound policy {local} -> {remote} proto 4 names "
        "SPI 0xc6f2fc7e of no CHILD_SA)"
    ]

    # charon's rekey pins both protocols to the new CHILD_SA: nothing left to do
    charon.sas[0][1]["child-sas"]["rnv-host2-t100-0"]["spi-out"] = "c1000001"
    pins[:] = [pin(local, remote, 41, 0xC1000001), pin(local, remote, 4, 0xC1000001)]
    charon.calls.clear()
    assert not driver.plan(desired)
    assert driver.reconcile(desired).pending == [] and charon.calls == []


def test_a_pin_a_rekey_did_not_move_is_an_error_not_a_rekey_every_apply(
    desired: DesiredIke,
) -> None:
    charon, driver, pins, local, remote = left_on_a_terminated_child_sa(desired)
    driver.reconcile(desired)
    charon.calls.clear()
    assert driver.reconcile(desired).errors == []
    assert charon.calls == ["rekey-child 90"]
    # the rekey moved IPv6 to the new CHILD_SA but IPv4 stayed on the dead SPI
    charon.sas[0][1]["child-sas"]["rnv-host2-t100-0"]["spi-out"] = "c1000001"
    pins[:] = [pin(local, remote, 41, 0xC1000001), pin(local, remote, 4, TERMINATED)]
    for _ in range(3):
        charon.calls.clear()
        result = driver.reconcile(desired)
        assert charon.calls == []  # no second rekey, however often it is seen
        assert result.errors == [
            f"rnv-host2: outbound policy {local} -> {remote} proto 4 names SPI 0xc6f2fc7e of no "
            "CHILD_SA, also after a rekey: traffic of that protocol to the peer is lost until "
            "charon installs it anew (restart charon)"
        ]
    # charon installed it anew: no error, nothing to do
    pins[:] = [pin(local, remote, 41, 0xC1000001), pin(local, remote, 4, 0xC1000001)]
    charon.calls.clear()
    assert driver.reconcile(desired).errors == [] and charon.calls == []


def test_a_pinned_spi_of_any_listed_child_sa_is_no_stale_pin(desired: DesiredIke) -> None:
    """During a rekey the policies name the old CHILD_SA until it is deleted; a pair without an
    INSTALLED CHILD_SA is left to the next initiate; other pairs' policies are not ours here."""
    charon = FakeCharon()
    local, remote = addresses(desired.conns["rnv-host2"], "rnv-host2-t100")
    pins = [
        pin(local, remote, 4, TERMINATED),  # the REKEYED old one's
        pin(local, remote, 41, KEPT),
        pin(local, "2001:db8:0:9::1:64", 4, 0x1234),  # no CHILD_SA between these addresses
    ]
    driver = driver_for(charon, pins)
    driver.reconcile(desired)
    charon.establish("rnv-host2", ["rnv-host2-t100", "rnv-host2-t200", "rnv-host2-t100"], "9")
    charon.establish("rnv-host3", ["rnv-host3-t200"], "3")
    with_spi(charon, "rnv-host2-t100-0", TERMINATED, local, remote, state="REKEYED")
    with_spi(charon, "rnv-host2-t100-2", KEPT, local, remote)
    charon.calls.clear()
    for _ in range(2):
        result = driver.reconcile(desired)
        assert result.pending == [] and charon.calls == []


def test_an_unreadable_kernel_skips_only_the_policy_check(desired: DesiredIke) -> None:
    charon = FakeCharon()

    def broken() -> list[XfrmPolicy]:
        raise XfrmError("ip xfrm policy in netns x failed: boom")

    @contextmanager
    def connect() -> Iterator[FakeCharon]:
        yield charon

    driver = IkeDriver(connect, read_pins=broken)  # type: ignore[arg-type]
    result = driver.reconcile(desired)
    assert result.errors == [
        "cannot check charon's outbound policies: ip xfrm policy in netns x failed: boom"
    ]
    assert charon.calls == ["load-shared rnv-psk", "load-conn rnv-host2", "load-conn rnv-host3"]
    assert {op.verb for op in driver.plan(desired).changes} == {Verb.INITIATE}  # a dry run too


def test_a_duplicate_the_peer_dropped_on_initial_contact_is_terminated_with_force(
    desired: DesiredIke,
) -> None:
    """Seen in the Debian 13 chroot: host2 answered host1's IKE_AUTH (INITIAL_CONTACT) after its
    own IKE_SA to host1 was up, and destroyed its own without telling host1, which kept its copy
    beside the one it initiated. That copy is the peer's to delete, but the peer no longer has
    it: at the second sighting host1 terminates it with force. Meanwhile nothing is initiated,
    as charon could put the new CHILD_SA into the dead IKE_SA (it did: the request hung there
    and the drivers waited for it until the test gave up)."""
    charon = FakeCharon()
    driver = driver_for(charon)
    driver.reconcile(desired)
    duplicate_pair(charon, ["rnv-host2-t100"], ["rnv-host2-t100"], "56")
    charon.calls.clear()

    first = driver.reconcile(desired)
    assert charon.calls == []  # not even `initiate rnv-host2-t200`
    assert first.pending == [
        "rnv-host2: duplicate IKE_SA #6 is the peer's to delete, checking again"
    ]
    second = driver.reconcile(desired)
    assert charon.calls == ["terminate 6 (force)"]
    assert second.lines() == [
        "terminate rnv-host2[6] (duplicate IKE_SA the peer initiated and did not delete)"
    ]

    # gone: the missing CHILD_SA is initiated into the one left
    del charon.sas[1]
    charon.calls.clear()
    driver.reconcile(desired)
    assert charon.calls == ["initiate rnv-host2-t200"]


def test_the_peer_deleting_its_own_duplicate_in_time_is_not_forced(desired: DesiredIke) -> None:
    charon = FakeCharon()
    driver = driver_for(charon)
    driver.reconcile(desired)
    both = ["rnv-host2-t100", "rnv-host2-t200"]
    duplicate_pair(charon, both, both, "56")
    driver.reconcile(desired)
    del charon.sas[1]  # the peer's DELETE arrived
    charon.calls.clear()
    assert driver.reconcile(desired).pending == [] and charon.calls == []
    charon.establish("rnv-host2", ["rnv-host2-t100"], "7", False, "00000007")  # a new one
    assert driver.reconcile(desired).pending != [] and charon.calls == []  # its first sighting
