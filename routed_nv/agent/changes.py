"""Say what changed: every object an apply created, changed or deleted, as one log line each.

    agent.change stage=routing op=add obj=route dst=10.0.0.2/32 table=1100 proto=187 dev=rnv-t100

The fields are the object's own (those left unset are left out); a change in place names the
fields that differ (`changed=mtu,master`). Key material is never a field: an SA's key is left
out whatever it is called. More than CHANGE_LOG_MAX changes of one stage in one apply (a host
learning 100,000 routes) are summarised in one `agent.change.more` line with counts per op.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from routed_nv.agent.events import EventLog, Field
from routed_nv.esp.xfrm import Op, Verb
from routed_nv.model.netfilter import TableChange
from routed_nv.model.secret import Secret
from routed_nv.routing.driver import Change

if TYPE_CHECKING:  # esp.ike imports vici, which a status command must not load
    from routed_nv.esp.ike import IkeOp

CHANGE_LOG_MAX = 50  # per stage and apply; the rest is counted

_ROUTING_OPS = {"+": "add", "~": "change", "-": "delete"}
# `ip xfrm policy update` adds or replaces: "set" says that it is one or the other
_XFRM_OPS = {Verb.ADD: "add", Verb.UPDATE: "set", Verb.DELETE: "delete"}
_KINDS = {
    "XfrmState": "sa",
    "XfrmPolicy": "policy",
    "NeighProxy": "neigh-proxy",
    "PolicyRule": "rule",
}


@dataclass(frozen=True)
class Changed:
    op: str  # add, change, set (add or replace), delete; IKE: the VICI command
    obj: str  # route, link, sa, policy, chain, jump, ike, ...
    fields: tuple[tuple[str, Field], ...] = ()


def of_object(op: str, obj: Any, old: Any = None) -> Changed:
    """A kernel object (a dataclass) by its own fields, secrets left out."""
    fields: dict[str, Field] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if value is None or value is False or isinstance(value, Secret | bytes):
            continue
        if f.name == "spi" and isinstance(value, int):
            fields["spi"] = f"0x{value:08x}"  # as ip xfrm, sa list and status write it
        else:
            fields[f.name] = value if isinstance(value, int | float | str) else str(value)
    if type(old) is type(obj):
        differ = [
            f.name for f in dataclasses.fields(obj) if getattr(old, f.name) != getattr(obj, f.name)
        ]
        if differ:
            fields["changed"] = ",".join(differ)
    name = type(obj).__name__
    return Changed(op, _KINDS.get(name, name.lower()), tuple(fields.items()))


def of_routing(changes: Iterable[Change]) -> list[Changed]:
    return [of_object(_ROUTING_OPS[c.op], c.obj, c.old) for c in changes]


def of_xfrm(ops: Iterable[Op]) -> list[Changed]:
    return [of_object(_XFRM_OPS[op.verb], op.obj) for op in ops]


def of_netfilter(changes: Iterable[TableChange]) -> list[Changed]:
    out = []
    for change in changes:
        where: tuple[tuple[str, Field], ...] = (
            ("family", str(change.family)),
            ("table", change.table),
        )
        for chain, rules in sorted(change.set_chains.items()):
            out.append(Changed("set", "chain", (*where, ("chain", chain), ("rules", len(rules)))))
        for chain, (append, delete) in sorted(change.edit_chains.items()):
            for verb, rules in (("delete", delete), ("add", append)):
                out += [Changed(verb, "rule", (*where, ("chain", chain), ("rule", r.render())))
                        for r in rules]  # fmt: skip
        for hook, target in sorted(change.hooks.items()):
            if target is None:
                out.append(Changed("delete", "jump", (*where, ("hook", hook))))
            else:
                out.append(Changed("set", "jump", (*where, ("hook", hook), ("target", target))))
        out += [Changed("delete", "chain", (*where, ("chain", c))) for c in change.delete_chains]
    return out


def of_ike(ops: Iterable[IkeOp]) -> list[Changed]:
    """By the IKE driver's own descriptions ("load-conn rnv-host2 (new)"): no secrets in them."""
    out = []
    for op in ops:
        verb, _, what = op.describe().partition(" ")
        out.append(Changed(verb, "ike", (("what", what),)))
    return out


def log_changes(
    log: EventLog,
    stage: str,
    changes: list[Changed],
    event: str = "agent.change",
    limit: int = CHANGE_LOG_MAX,
) -> None:
    """`event`: agent.change, or agent.repair for what a resync changed (drift repaired)."""
    for c in changes[:limit]:
        log(event, stage=stage, op=c.op, obj=c.obj, **dict(c.fields))
    rest = changes[limit:]
    if rest:
        ops = Counter(c.op for c in rest)
        log(f"{event}.more", stage=stage, count=len(rest), **dict(sorted(ops.items())))
