"""What the netfilter driver and its adapter exchange: one table's state read back, and the change
to make to it in a single commit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from routed_nv.calc.netfilter import Family, Rule


class NetfilterError(Exception):
    """An iptables operation failed; the message names the table and what was being done."""


@dataclass(frozen=True)
class ActualTable:
    family: Family
    table: str
    # our chains (name prefix) and their rules; None for a rule that is not one of ours
    # (no routed-nv comment, or a match we never write): its chain will be rewritten
    chains: Mapping[str, tuple[Rule | None, ...]] = field(default_factory=dict)
    # per rule of our chains: (packets, bytes)
    counters: Mapping[str, tuple[tuple[int, int], ...]] = field(default_factory=dict)
    # built-in chain -> our rules in it, in order: (position, target)
    hooks: Mapping[str, tuple[tuple[int, str], ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class TableChange:
    """Applied in one commit, in this order: chains set (created if missing, content replaced),
    chains edited (rules deleted, then appended; the others stay, with their counters), hooks
    fixed (None: no jump of ours wanted there), chains deleted."""

    family: Family
    table: str
    set_chains: Mapping[str, tuple[Rule, ...]] = field(default_factory=dict)
    hooks: Mapping[str, str | None] = field(default_factory=dict)
    delete_chains: tuple[str, ...] = ()
    # chain -> (rules to append, rules to delete)
    edit_chains: Mapping[str, tuple[tuple[Rule, ...], tuple[Rule, ...]]] = field(
        default_factory=dict
    )

    def __bool__(self) -> bool:
        return bool(self.set_chains or self.edit_chains or self.hooks or self.delete_chains)

    def lines(self) -> list[str]:
        """The change for humans (`routed-nv apply --dry-run`)."""
        where = f"{self.family} {self.table}"
        lines = []
        for chain, rules in sorted(self.set_chains.items()):
            lines.append(f"{where}: set chain {chain} ({len(rules)} rules)")
            lines += [f"  -A {chain} {rule.render()}" for rule in rules]
        for chain, (append, delete) in sorted(self.edit_chains.items()):
            lines.append(f"{where}: edit chain {chain} (+{len(append)} -{len(delete)} rules)")
            lines += [f"  -D {chain} {rule.render()}" for rule in delete]
            lines += [f"  -A {chain} {rule.render()}" for rule in append]
        for hook, target in sorted(self.hooks.items()):
            if target is None:
                lines.append(f"{where}: remove our jumps from {hook}")
            else:
                lines.append(f"{where}: make -I {hook} 1 -j {target} our only rule in {hook}")
        lines += [f"{where}: delete chain {chain}" for chain in self.delete_chains]
        return lines
