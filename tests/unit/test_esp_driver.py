from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from routed_nv.esp.driver import XfrmDriver
from routed_nv.esp.seqres import FLOOR, SEQ_LIMIT
from routed_nv.esp.seqstore import FILE_NAME, ReservationStore
from routed_nv.esp.xfrm import Verb
from routed_nv.model import markers
from routed_nv.model.secret import Secret
from routed_nv.model.xfrm import Action, DesiredXfrm, Direction, XfrmPolicy, XfrmState
from tests.fakes import FakeXfrmKernel

PREFIX = ipaddress.IPv6Network("2001:db8:0:1::/64")
HERE = ipaddress.IPv6Address("2001:db8:0:1::1:64")
THERE = ipaddress.IPv6Address("2001:db8:0:2::1:64")
AGG = ipaddress.IPv6Network("2001:db8::/48")
ANY = ipaddress.IPv6Network("::/0")
HERE128 = ipaddress.IPv6Network(HERE)
REQID = markers.reqid(100)
KEY = Secret(b"\x07" * 20)


def sa(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, spi: int, **kw) -> XfrmState:
    return XfrmState(src, dst, spi, kw.pop("reqid", REQID), kw.pop("key", KEY), **kw)


OUT0, OUT1 = sa(HERE, THERE, 0x640004), sa(HERE, THERE, 0x640005)
IN0, IN1 = sa(THERE, HERE, 0x640008), sa(THERE, HERE, 0x640009)
BLOCK = XfrmPolicy(Direction.OUT, HERE128, ANY, 4, markers.XFRM_BLOCK_PRIORITY, Action.BLOCK)
ALLOW = XfrmPolicy(Direction.OUT, HERE128, AGG, 4, markers.XFRM_POLICY_PRIORITY, reqid=REQID)


def desired(*objs: XfrmState | XfrmPolicy, **kw) -> DesiredXfrm:
    return DesiredXfrm(
        policies={o.key(): o for o in objs if isinstance(o, XfrmPolicy)},
        states=kw.pop("states", {o.key(): o for o in objs if isinstance(o, XfrmState)}),
        **kw,
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path) -> Iterator[Path]:
    global STATE_DIR
    STATE_DIR = tmp_path / "state"
    yield STATE_DIR


STATE_DIR = Path("/nonexistent")  # each test's own, set by the fixture above


def driver(kernel: FakeXfrmKernel, clock: Clock | None = None) -> XfrmDriver:
    store = ReservationStore(STATE_DIR)
    return XfrmDriver(kernel, PREFIX, 5, store, interval_s=30, clock=clock or Clock())


def test_first_apply_order_never_opens_a_plaintext_window() -> None:
    kernel = FakeXfrmKernel()
    result = driver(kernel).reconcile(desired(ALLOW, OUT0, IN0, BLOCK))
    assert [op.obj for op in kernel.log] == [BLOCK, IN0, OUT0, ALLOW]
    assert (result.added, result.updated, result.deleted, result.errors) == (2, 2, 0, [])


def test_second_apply_is_a_no_op_even_after_restart() -> None:
    kernel = FakeXfrmKernel()
    want = desired(ALLOW, OUT0, IN0, BLOCK)
    driver(kernel).reconcile(want)
    kernel.log.clear()
    assert not driver(kernel).plan(want)
    assert driver(kernel).reconcile(want) == driver(kernel).reconcile(want)
    assert kernel.log == []


def test_rotation_is_make_before_break() -> None:
    kernel, clock = FakeXfrmKernel(), Clock()
    drv = driver(kernel, clock)
    drv.reconcile(desired(OUT0, IN0))
    drv.reconcile(desired(OUT0, IN0, IN1))  # 1. accept the new generation
    kernel.log.clear()
    drv.reconcile(desired(OUT1, IN0, IN1))  # 2. send with it: add before delete
    assert [(op.verb, op.obj) for op in kernel.log] == [(Verb.ADD, OUT1), (Verb.DELETE, OUT0)]
    kernel.log.clear()
    result = drv.reconcile(desired(OUT1, IN1))  # 3. retire the old: only after the grace period
    assert (result.deleted, result.waiting, kernel.log) == (0, 1, [])
    assert drv.plan(desired(OUT1, IN1)).lines() == [
        f"keep state dst {HERE} spi 0x00640008 for 5 s more (rotation grace)"
    ]
    clock.now += 4.9
    assert drv.reconcile(desired(OUT1, IN1)).deleted == 0
    clock.now += 0.2
    result = drv.reconcile(desired(OUT1, IN1))
    assert (result.deleted, result.waiting) == (1, 0)
    assert set(kernel.states.values()) == {OUT1, IN1}


def test_changed_sa_is_replaced_and_policies_updated_in_place() -> None:
    kernel = FakeXfrmKernel()
    driver(kernel).reconcile(desired(IN0, ALLOW))
    kernel.log.clear()
    new_in0 = replace(IN0, key_material=Secret(b"\x08" * 20))
    new_allow = replace(ALLOW, reqid=markers.reqid(101))  # same key, other value
    driver(kernel).reconcile(desired(new_in0, new_allow))
    assert [(op.verb, op.obj) for op in kernel.log] == [
        (Verb.DELETE, IN0),
        (Verb.ADD, new_in0),
        (Verb.UPDATE, new_allow),
    ]


def test_removed_tenant_goes_last_with_blocks_at_the_very_end() -> None:
    kernel = FakeXfrmKernel()
    driver(kernel).reconcile(desired(BLOCK, ALLOW, OUT0))
    kernel.log.clear()
    driver(kernel).reconcile(desired())
    assert [op.obj for op in kernel.log] == [ALLOW, OUT0, BLOCK]


def test_foreign_objects_are_left_alone() -> None:
    kernel = FakeXfrmKernel()
    foreign = [
        sa(HERE, THERE, 0x4242, reqid=5),
        XfrmPolicy(Direction.OUT, HERE128, AGG, 4, 1),  # no template, not our block priority
        replace(BLOCK, priority=10),
        replace(BLOCK, src=ipaddress.IPv6Network("2001:db8:0:9::1:64/128")),  # not our prefix
        # charon's per-peer policy in IKE mode: our reqid, charon's priority
        replace(ALLOW, dst=ipaddress.IPv6Network(THERE), priority=markers.IKE_POLICY_PRIORITY),
    ]
    for obj in foreign:
        (kernel.states if isinstance(obj, XfrmState) else kernel.policies)[obj.key()] = obj
    assert driver(kernel).reconcile(desired()).deleted == 0
    assert kernel.log == []


def test_pinned_out_policies_are_charons_outbound_ones_with_an_spi() -> None:
    kernel = FakeXfrmKernel()
    charon_out = replace(
        ALLOW, dst=ipaddress.IPv6Network(THERE), priority=markers.IKE_POLICY_PRIORITY, spi=0xC0DE
    )
    others = [
        ALLOW,  # ours: no SPI
        BLOCK,
        replace(charon_out, direction=Direction.IN, src=charon_out.dst, dst=HERE128, spi=None),
        # not a tenant's reqid: someone else's IPsec
        replace(charon_out, dst=ipaddress.IPv6Network("2001:db8:0:9::/64"), reqid=5),
    ]
    for policy in [charon_out, *others]:
        kernel.policies[policy.key()] = policy
    assert driver(kernel).pinned_out_policies() == [charon_out]


def test_tenants_with_unreadable_keys_and_ike_mode_keep_their_sas() -> None:
    kernel = FakeXfrmKernel()
    driver(kernel).reconcile(desired(OUT0, IN0))
    kernel.log.clear()
    driver(kernel).reconcile(desired(states={}, keep_states_of=frozenset({100})))
    driver(kernel).reconcile(desired(states=None))
    assert kernel.log == []


def test_one_failure_does_not_stop_the_others() -> None:
    kernel = FakeXfrmKernel()
    kernel.fail_spi = IN0.spi
    result = driver(kernel).reconcile(desired(OUT0, IN0, BLOCK, errors=("tenant red: bad key",)))
    assert result.added == 1 and result.updated == 1 and not result.ok
    assert result.errors == [
        "tenant red: bad key",
        f"add state src {THERE} dst {HERE} spi 0x00640008 reqid {REQID} mode transport "
        "replay-window 64 aead rfc4106(gcm(aes)) <key redacted> 128: "
        "RTNETLINK answers: File exists",
    ]


def test_unreadable_kernel_is_reported_not_raised() -> None:
    kernel = FakeXfrmKernel()
    kernel.broken = True
    result = driver(kernel).reconcile(desired(OUT0))
    assert result.errors == ["ip xfrm state in netns x failed: boom"] and kernel.log == []


def test_dry_run_lines_redact_keys() -> None:
    lines = driver(FakeXfrmKernel()).plan(desired(BLOCK, OUT0)).lines()
    assert lines[0] == (
        f"update policy src {HERE128} dst ::/0 proto 4 dir out priority 2000000 action block"
    )
    assert "<key redacted>" in lines[1] and KEY.hex() not in "".join(lines)


# -- outbound sequence reservations (issue 14 item 8) ----------------------------------------


def sent(kernel: FakeXfrmKernel, state: XfrmState, oseq: int) -> None:
    """Traffic on an SA: the kernel's outbound counter moves."""
    kernel.states[state.key()] = replace(kernel.states[state.key()], oseq=oseq)


def reserved(state: XfrmState) -> int:
    return ReservationStore(STATE_DIR).load()[state.key()]


def test_an_outbound_sa_starts_at_its_persisted_reservation() -> None:
    kernel = FakeXfrmKernel()
    driver(kernel).reconcile(desired(OUT0, IN0))
    assert kernel.states[OUT0.key()].oseq == 0  # nothing reserved before: from the start
    assert reserved(OUT0) == 2 * FLOOR  # persisted before the SA existed
    assert IN0.key() not in ReservationStore(STATE_DIR).load()  # inbound SAs count nothing


def test_after_a_wipe_the_sa_sends_above_anything_it_sent_before() -> None:
    kernel, clock = FakeXfrmKernel(), Clock()
    want = desired(OUT0, IN0)
    driver(kernel, clock).reconcile(want)
    sent(kernel, OUT0, 0x4DE)
    clock.now += 30
    driver(kernel, clock).reconcile(want)
    wiped = FakeXfrmKernel()  # a reboot: kernel state gone, the state directory kept
    result = driver(wiped, clock).reconcile(want)
    assert result.ok and result.added == 2
    assert wiped.states[OUT0.key()].oseq == 2 * FLOOR > 0x4DE
    assert reserved(OUT0) == 4 * FLOOR
    # ... and again: every re-creation starts above the last one's reservation
    assert driver(FakeXfrmKernel(), clock).reconcile(want).ok
    assert reserved(OUT0) == 6 * FLOOR


def test_the_counter_never_makes_an_sa_differ() -> None:
    kernel = FakeXfrmKernel()
    want = desired(OUT0, IN0)
    driver(kernel).reconcile(want)
    sent(kernel, OUT0, 12345)
    kernel.log.clear()
    assert not driver(kernel).plan(want)
    assert driver(kernel).reconcile(want).ok and kernel.log == []


def test_the_reservation_moves_ahead_of_a_busy_sa() -> None:
    kernel, clock = FakeXfrmKernel(), Clock()
    drv = driver(kernel, clock)
    want = desired(OUT0, IN0)
    drv.reconcile(want)
    kernel.log.clear()
    written = (STATE_DIR / FILE_NAME).stat().st_mtime_ns
    clock.now += 30
    sent(kernel, OUT0, FLOOR // 2)  # still a whole floor below the reservation: no write
    drv.reconcile(want)
    assert reserved(OUT0) == 2 * FLOOR
    assert (STATE_DIR / FILE_NAME).stat().st_mtime_ns == written
    clock.now += 30
    sent(kernel, OUT0, FLOOR // 2 + 30_000_000)  # 1,000,000 packets/s
    drv.reconcile(want)
    assert reserved(OUT0) == FLOOR // 2 + 30_000_000 + 2 * 60_000_000
    assert kernel.log == []  # the SA itself is left alone


def test_a_corrupt_store_creates_no_outbound_sa_and_says_why() -> None:
    STATE_DIR.mkdir()
    (STATE_DIR / FILE_NAME).write_text("{")
    kernel = FakeXfrmKernel()
    result = driver(kernel).reconcile(desired(ALLOW, BLOCK, OUT0, IN0))
    assert set(kernel.states) == {IN0.key()}  # receiving still works
    assert set(kernel.policies) == {ALLOW.key(), BLOCK.key()}  # the block policy guards the rest
    assert result.errors == [
        f"1 outbound SAs not created: {STATE_DIR / FILE_NAME}: not a reservation file: "
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"
    ]
    assert (STATE_DIR / FILE_NAME).read_text() == "{"


def test_a_failed_add_is_retried_at_the_same_start() -> None:
    kernel = FakeXfrmKernel()
    kernel.fail_spi = OUT0.spi
    drv = driver(kernel)
    want = desired(OUT0, IN0)
    assert not drv.reconcile(want).ok
    assert not drv.reconcile(want).ok
    assert reserved(OUT0) == 2 * FLOOR  # retries burn no sequence numbers
    kernel.fail_spi = None
    assert drv.reconcile(want).ok and kernel.states[OUT0.key()].oseq == 0


def test_an_sa_near_the_end_of_its_sequence_space_is_reported() -> None:
    kernel = FakeXfrmKernel()
    want = desired(OUT0, IN0)
    driver(kernel).reconcile(want)
    sent(kernel, OUT0, SEQ_LIMIT - 1000)
    result = driver(kernel).reconcile(want)
    assert len(result.errors) == 1
    assert result.errors[0].startswith(f"outbound SA dst {THERE} spi 0x00640004 has sent ")
    assert "rotate the tenant's static key" in result.errors[0]
    assert reserved(OUT0) == SEQ_LIMIT
