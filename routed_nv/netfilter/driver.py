"""The netfilter driver: reads our chains back, diffs them against the desired rules and rewrites
only the chains that differ, one commit per table.

Fail closed: nothing is ever flushed to be rebuilt later. A restarted agent reads its chains,
finds them as it wants them and changes nothing; a chain that differs is replaced in the same
commit that leaves every other chain alone, so there is no moment without rules. Chains of ours
that are no longer wanted are deleted in that commit too, after the jumps to them are gone.
"""

from __future__ import annotations

from typing import Protocol

from routed_nv.model.delta import delta
from routed_nv.model.netfilter import (
    ActualTable,
    ChainKey,
    DesiredRules,
    Family,
    NetfilterError,
    Rule,
    TableChange,
)
from routed_nv.model.result import Plan, Result, permanent, problem_of


class TablesAdapter(Protocol):
    def read(self, family: Family, table: str) -> ActualTable: ...
    def apply(self, change: TableChange) -> None: ...


class NetfilterPlan(Plan[TableChange]):
    """One change per table that differs; a table that could not be read is a problem."""


class NetfilterResult(Result[TableChange]):
    @property
    def chains_set(self) -> int:
        return sum(len(c.set_chains) for c in self.done)

    @property
    def chains_deleted(self) -> int:
        return sum(len(c.delete_chains) for c in self.done)

    @property
    def hooks_fixed(self) -> int:
        return sum(len(c.hooks) for c in self.done)


class NetfilterDriver:
    """Programs one network namespace's rules (the adapter decides which namespace)."""

    def __init__(self, adapter: TablesAdapter) -> None:
        self._adapter = adapter

    def read(self, desired: DesiredRules) -> list[ActualTable]:
        """Our chains (with counters) in every table the desired rules use."""
        return [self._adapter.read(family, table) for family, table in _tables(desired)]

    def plan(self, desired: DesiredRules) -> NetfilterPlan:
        """What apply() would do now; reads each table once, changes nothing. A table that
        cannot be read is reported and left out, the others are still planned."""
        changes, problems = [], permanent(desired.errors)
        for family, table in _tables(desired):
            try:
                change = plan_table(desired, self._adapter.read(family, table))
            except NetfilterError as exc:  # names the table and the operation
                problems.append(problem_of(exc))
                continue
            if change:
                changes.append(change)
        return NetfilterPlan(tuple(changes), tuple(problems))

    def apply(self, plan: NetfilterPlan) -> NetfilterResult:
        """Commits a plan without reading again; a table that fails stays as it was (its commit
        is atomic) and is reported, the others are still applied."""
        result = NetfilterResult(problems=list(plan.problems))
        for change in plan.changes:
            try:
                self._adapter.apply(change)
            except NetfilterError as exc:
                result.problems.append(problem_of(exc, change))
                continue
            result.done.append(change)
        return result

    def apply_changes(self, changes: list[TableChange]) -> NetfilterResult:
        """Commits changes made without reading the tables (calc.netfilter
        .endpoint_rule_changes, against the rules last applied): for one endpoint's rules,
        reading a table of 1,000 endpoints' chains back cost more than the commit."""
        return self.apply(NetfilterPlan(tuple(changes)))

    def reconcile(self, desired: DesiredRules) -> NetfilterResult:
        """Brings every table in line: plan() and apply()."""
        return self.apply(self.plan(desired))


def plan_table(desired: DesiredRules, actual: ActualTable) -> TableChange:
    """The minimal change of one table: chains whose content differs, hooks that are not exactly
    our single jump in first position, and our chains nobody wants any more."""
    mine = {k.chain: rules for k, rules in desired.chains.items() if _in(k, actual)}
    chains = delta(mine, actual.chains)
    unordered = {k.chain for k in desired.unordered if _in(k, actual)}
    set_chains: dict[str, tuple[Rule, ...]] = {}
    edits: dict[str, tuple[tuple[Rule, ...], tuple[Rule, ...]]] = {}
    for chain, rules in chains.upserts.items():
        edit = _edit(rules, actual.chains.get(chain)) if chain in unordered else None
        if edit is None:
            set_chains[chain] = rules
        elif edit != ((), ()):  # the same rules in another order: nothing to do
            edits[chain] = edit
    wanted_hooks = {k.chain: (target,) for k, target in desired.jumps.items() if _in(k, actual)}
    hooks: dict[str, str | None] = {}
    for hook in wanted_hooks.keys() | actual.hooks.keys():
        want = wanted_hooks.get(hook)
        have = actual.hooks.get(hook, ())
        if want is None:
            hooks[hook] = None
        elif have != ((0, want[0]),):
            hooks[hook] = want[0]
    return TableChange(
        family=actual.family,
        table=actual.table,
        set_chains=set_chains,
        hooks=hooks,
        delete_chains=tuple(sorted(chains.deletes)),
        edit_chains=edits,
    )


def _edit(
    wanted: tuple[Rule, ...], have: tuple[Rule | None, ...] | None
) -> tuple[tuple[Rule, ...], tuple[Rule, ...]] | None:
    """(rules to append, rules to delete) that turn an order-free chain into `wanted`; None
    when it must be rewritten whole: missing, holding a rule not ours, or a rule twice (a
    delete by spec removes only the first)."""
    if have is None or None in have or len(set(have)) != len(have):
        return None
    present: set[Rule] = set(have)  # type: ignore[arg-type]  # None is not in it (above)
    keep = set(wanted)
    return tuple(r for r in wanted if r not in present), tuple(r for r in have if r not in keep)


def _in(key: ChainKey, actual: ActualTable) -> bool:
    return key.family == actual.family and key.table == actual.table


def _tables(desired: DesiredRules) -> list[tuple[Family, str]]:
    keys = [*desired.chains, *desired.jumps]
    return sorted({(k.family, k.table) for k in keys})
