"""Say what changed: one `agent.change` line per object, secrets left out, bursts summarised."""

from __future__ import annotations

import io
import ipaddress
import json

from test_agent_loop import Harness, route, view
from test_datapath import HOOK, KEY, ROUTE, SA

from routed_nv.agent.changes import (
    Changed,
    log_changes,
    of_ike,
    of_netfilter,
    of_routing,
    of_xfrm,
)
from routed_nv.agent.events import EventLog
from routed_nv.config.model import LogFormat
from routed_nv.esp.ike import IkeOp
from routed_nv.esp.ike import Verb as IkeVerb
from routed_nv.esp.xfrm import Op, Verb
from routed_nv.model import markers
from routed_nv.model.netfilter import TableChange
from routed_nv.model.routing import Link, LinkKind
from routed_nv.model.xfrm import Action, Direction, XfrmPolicy
from routed_nv.routing.driver import Change


def lines(stage: str, changes: list[Changed], fmt: LogFormat = LogFormat.TEXT) -> list[str]:
    out = io.StringIO()
    log_changes(EventLog(fmt, stream=out), stage, changes)
    return out.getvalue().splitlines()


def test_a_route_is_one_line_of_its_own_fields() -> None:
    (line,) = lines("routing", of_routing([Change("+", ROUTE)]))
    assert line == (
        f"agent.change stage=routing op=add obj=route dst=10.0.0.2/32 table=1100 "
        f"proto={markers.RTPROT_REMOTE} dev=rnv-t100 scope=0 metric=0"
    )


def test_a_change_in_place_names_the_fields_that_differ() -> None:
    old = Link("rnv-v100", LinkKind.VRF, vrf_table=1100, mtu=1500)
    new = Link("rnv-v100", LinkKind.VRF, vrf_table=1100, mtu=1400, master=None)
    (line,) = lines("routing", of_routing([Change("~", new, old), Change("-", old)])[:1])
    assert line.startswith("agent.change stage=routing op=change obj=link name=rnv-v100 kind=vrf")
    assert line.endswith(" changed=mtu") and " mtu=1400 " in line


def test_sa_lines_never_carry_key_material_in_either_format() -> None:
    policy = XfrmPolicy(
        Direction.OUT,
        ipaddress.IPv6Network("2001:db8:0:1::1:64/128"),
        ipaddress.IPv6Network("::/0"),
        4,
        markers.XFRM_BLOCK_PRIORITY,
        Action.BLOCK,
    )
    changes = of_xfrm([Op(Verb.ADD, SA), Op(Verb.UPDATE, policy), Op(Verb.DELETE, SA)])
    text = lines("xfrm", changes)
    assert text[0].startswith(
        "agent.change stage=xfrm op=add obj=sa src=2001:db8:0:1::1:64 dst=2001:db8:0:2::1:64 "
        f"spi=0x00640004 reqid={markers.reqid(100)} mode=transport"
    )
    assert text[1].startswith("agent.change stage=xfrm op=set obj=policy direction=out")
    assert text[2].startswith("agent.change stage=xfrm op=delete obj=sa")
    as_json = lines("xfrm", changes, LogFormat.JSON)
    for line in text + as_json:
        assert KEY.value.hex() not in line and "key" not in line.lower()
    assert json.loads(as_json[0])["spi"] == "0x00640004"  # as ip xfrm and sa list write it


def test_netfilter_and_ike_lines() -> None:
    change = TableChange(HOOK.family, "raw", set_chains={"rnv-pre": ()}, delete_chains=("rnv-x",))
    assert lines("netfilter", of_netfilter([HOOK, change])) == [
        "agent.change stage=netfilter op=set obj=jump family=ipv4 table=filter hook=INPUT "
        "target=rnv-input",
        "agent.change stage=netfilter op=set obj=chain family=ipv4 table=raw chain=rnv-pre rules=0",
        "agent.change stage=netfilter op=delete obj=chain family=ipv4 table=raw chain=rnv-x",
    ]
    assert lines("ike", of_ike([IkeOp(IkeVerb.LOAD_CONN, "rnv-host2", "new")])) == [
        'agent.change stage=ike op=load-conn obj=ike what="rnv-host2 (new)"'
    ]


def test_a_burst_is_summarised_with_counts_per_op() -> None:
    adds = [Change("+", ROUTE)] * 60
    deletes = [Change("-", ROUTE)] * 20
    out = lines("routing", of_routing(adds + deletes))
    assert len(out) == 51
    assert all(line.startswith("agent.change stage=routing op=add ") for line in out[:50])
    assert out[50] == "agent.change.more stage=routing count=30 add=10 delete=20"


def test_the_agent_logs_each_stages_changes_before_the_apply_line() -> None:
    h = Harness()
    h.datapath.done = of_routing([Change("+", ROUTE)])
    h.publish(view(route("10.0.0.2/32")))
    h.settle()
    log = h.log.getvalue().splitlines()
    change = [i for i, line in enumerate(log) if line.startswith("agent.change stage=routing")]
    applied = [i for i, line in enumerate(log) if line.startswith("agent.apply ")]
    assert len(change) == 1 and change[0] < applied[0]


def test_the_apply_line_says_how_long_each_stage_that_ran_took() -> None:
    h = Harness()
    h.datapath.done = of_routing([Change("+", ROUTE)])
    h.publish(view(route("10.0.0.2/32")))
    h.settle()
    (applied,) = [line for line in h.log.getvalue().splitlines() if line.startswith("agent.apply ")]
    assert " routing_s=" in applied and " routing_changes=1" in applied, applied
