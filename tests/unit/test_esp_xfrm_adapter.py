"""The iproute2 adapter: parsing real 6.1 output, rendering, and batch error handling against a
stand-in `ip` that behaves like iproute2's xfrm code (exit on the first kernel error)."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from pathlib import Path

import pytest

from routed_nv.esp.xfrm import (
    IprouteXfrm,
    Op,
    Verb,
    XfrmError,
    parse_policies,
    parse_states,
    render,
)
from routed_nv.model.secret import Secret
from routed_nv.model.xfrm import Action, Direction, XfrmPolicy, XfrmState

KEY = "0102030405060708090a0b0c0d0e0f1011121314"
# `ip xfrm state` / `ip xfrm policy` from iproute2 6.1 on a 6.1 kernel (UML lab).
STATES = f"""\
src 2001:db8:0:1::1:64 dst 2001:db8:0:2::1:64
\tproto esp spi 0x00640004 reqid 65636 mode transport
\treplay-window 0
\taead rfc4106(gcm(aes)) 0x{KEY} 128
\tanti-replay esn context:
\t seq-hi 0x0, seq 0x0, oseq-hi 0x0, oseq 0x0
\t replay_window 64, bitmap-length 2
\t 00000000 00000000
\tsel src ::/0 dst ::/0
src 192.0.2.1 dst 192.0.2.2
\tproto esp spi 0x00001000 reqid 1 mode tunnel
\treplay-window 32
\tauth-trunc hmac(sha256) 0x00 96
\tenc cbc(aes) 0x00
\tsel src 0.0.0.0/0 dst 0.0.0.0/0
"""
POLICIES = """\
src 2001:db8:0:1::1:64/128 dst ::/0 proto ipencap
\tdir out action block priority 2000000 ptype main
src 2001:db8::/48 dst 2001:db8:0:1::1:64/128 proto ipv6
\tdir in priority 1000 ptype main
\ttmpl src :: dst ::
\t\tproto esp reqid 65636 mode transport
src ::/0 dst ::/0
\tsocket in priority 0 ptype main
src 2001:db8::/48 dst 2001:db8:0:1::1:64/128 proto ipv6
\tdir fwd priority 1000 ptype main
"""
A = ipaddress.IPv6Address("2001:db8:0:1::1:64")
B = ipaddress.IPv6Address("2001:db8:0:2::1:64")
HERE = ipaddress.IPv6Network("2001:db8:0:1::1:64/128")
STATE = XfrmState(A, B, 0x00640004, 65636, Secret(bytes.fromhex(KEY)))
BLOCK = XfrmPolicy(Direction.OUT, HERE, ipaddress.IPv6Network("::/0"), 4, 2000000, Action.BLOCK)
ALLOW = XfrmPolicy(
    Direction.IN, ipaddress.IPv6Network("2001:db8::/48"), HERE, 41, 1000, Action.ALLOW, 65636
)


def test_parse_states_reads_back_what_we_wrote() -> None:
    assert parse_states(STATES) == [STATE]  # the IPv4 CBC state is not ours to read


def test_parse_policies_skips_socket_and_fwd_policies() -> None:
    assert parse_policies(POLICIES) == [BLOCK, ALLOW]


def test_parse_policies_reads_the_spi_charon_pins_in_its_outbound_template() -> None:
    text = """\
src 2001:db8:0:1::1:64/128 dst 2001:db8:0:2::1:64/128 proto ipencap
\tdir out priority 500 ptype main
\ttmpl src :: dst ::
\t\tproto esp spi 0xc6f2fc7e reqid 65636 mode transport
"""
    (policy,) = parse_policies(text)
    assert (policy.priority, policy.reqid, policy.spi) == (500, 65636, 0xC6F2FC7E)
    assert ALLOW.spi is None  # ours carry none


def test_render() -> None:
    assert render(Op(Verb.ADD, STATE)) == (
        f"xfrm state add src {A} dst {B} proto esp spi 0x00640004 reqid 65636 mode transport "
        f"replay-window 64 aead rfc4106(gcm(aes)) 0x{KEY} 128"
    )
    assert (
        render(Op(Verb.DELETE, STATE))
        == f"xfrm state delete src {A} dst {B} proto esp spi 0x00640004"
    )
    assert render(Op(Verb.UPDATE, BLOCK)) == (
        f"xfrm policy update src {HERE} dst ::/0 proto 4 dir out priority 2000000 action block"
    )
    assert render(Op(Verb.UPDATE, ALLOW)) == (
        f"xfrm policy update src 2001:db8::/48 dst {HERE} proto 41 dir in priority 1000 "
        "tmpl proto esp reqid 65636 mode transport"
    )
    assert (
        render(Op(Verb.DELETE, ALLOW))
        == f"xfrm policy delete src 2001:db8::/48 dst {HERE} proto 41 dir in"
    )


def test_descriptions_never_contain_the_key() -> None:
    assert KEY not in Op(Verb.ADD, STATE).describe()
    assert KEY not in repr(STATE)


FAKE_IP = r"""#!/bin/sh
# Like iproute2: a batch line fails by its content; the whole process then exits.
echo "$*" >> "$(dirname "$0")/calls"
[ "$1" = -n ] && shift 2
[ "$1" = xfrm ] && { cat "$(dirname "$0")/$2"; exit 0; }
while read -r line; do
  case "$line" in
    *"spi 0x00000bad"*) echo "RTNETLINK answers: File exists" >&2; exit 2;;
    *"delete"*"spi 0x00000001"*) echo "RTNETLINK answers: No such process" >&2; exit 2;;
    "xfrm state count") echo "	 SAD count 1";;
    *) echo "$line" >> "$(dirname "$0")/applied";;
  esac
done
"""


@pytest.fixture
def fake_ip(tmp_path: Path) -> Path:
    ip = tmp_path / "ip"
    ip.write_text(FAKE_IP)
    ip.chmod(0o755)
    (tmp_path / "state").write_text(STATES)
    (tmp_path / "policy").write_text(POLICIES)
    return ip


def state(spi: int) -> XfrmState:
    return XfrmState(A, B, spi, 65636, Secret(b"\x00" * 20))


def test_batch_reports_the_failing_op_and_runs_the_rest(fake_ip: Path) -> None:
    ops = [Op(Verb.ADD, state(s)) for s in (0x10, 0xBAD, 0x11)] + [Op(Verb.DELETE, state(1))]
    failures = IprouteXfrm("rnvt-x", ip=str(fake_ip)).apply(ops)
    assert [(f.op, f.message) for f in failures] == [(ops[1], "RTNETLINK answers: File exists")]
    assert "spi 0x00000bad" in str(failures[0]) and "00" * 20 not in str(failures[0])
    applied = (fake_ip.parent / "applied").read_text().splitlines()
    assert [line.split()[10] for line in applied] == ["0x00000010", "0x00000011"]
    # Two processes (the second resumes after the failure); the key is never in argv.
    calls = (fake_ip.parent / "calls").read_text().splitlines()
    assert calls == ["-n rnvt-x -force -batch -"] * 2


def test_reads_in_the_namespace(fake_ip: Path) -> None:
    adapter = IprouteXfrm("rnvt-x", ip=str(fake_ip))
    assert adapter.read_states() == [STATE]
    assert adapter.read_policies() == [BLOCK, ALLOW]
    calls = (fake_ip.parent / "calls").read_text().splitlines()
    assert calls == ["-n rnvt-x xfrm state", "-n rnvt-x xfrm policy"]


def test_missing_ip_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(XfrmError, match=r"cannot run '.*/nope xfrm state'"):
        IprouteXfrm(ip=str(tmp_path / "nope")).read_states()


def test_the_outbound_counter_is_read_and_a_new_sa_starts_at_a_given_one() -> None:
    busy = STATES.replace("oseq-hi 0x0, oseq 0x0", "oseq-hi 0x0, oseq 0x4de")
    # with a window of 32 or less iproute2 prints the non-ESN context instead
    small = STATES.replace(
        "\tanti-replay esn context:\n\t seq-hi 0x0, seq 0x0, oseq-hi 0x0, oseq 0x0\n"
        "\t replay_window 64, bitmap-length 2\n\t 00000000 00000000\n",
        "\tanti-replay context: seq 0x0, oseq 0x59d, bitmap 0x00000000\n",
    )
    assert [s.oseq for s in parse_states(busy)] == [0x4DE]
    assert [s.oseq for s in parse_states(small)] == [0x59D]
    assert parse_states(busy) == [STATE]  # the counter is no part of what the SA is
    start = replace(STATE, oseq=2097152)
    assert render(Op(Verb.ADD, start)) == (
        f"xfrm state add src {A} dst {B} proto esp spi 0x00640004 reqid 65636 mode transport "
        f"replay-window 64 replay-oseq 2097152 aead rfc4106(gcm(aes)) 0x{KEY} 128"
    )
    assert "replay-oseq 2097152" in Op(Verb.ADD, start).describe()
