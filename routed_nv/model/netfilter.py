"""Netfilter rules as data: the desired rules (calc/netfilter.py), and what the netfilter driver
and its adapter exchange: one table's state read back, and the change to make to it in a single
commit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from routed_nv.errors import RoutedNvError


class Family(StrEnum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"


@dataclass(frozen=True)
class Rule:
    """One rule in iptables terms. Every rule also carries the comment "routed-nv" (the adapter
    adds it), so a restarted agent and an operator both recognise it."""

    target: str  # ACCEPT, DROP, RETURN or one of our chains
    goto: bool = False  # -g: a RETURN from the target chain returns to our caller's caller
    in_interface: str | None = None
    src: str | None = None  # a network in its canonical text form: "10.0.0.1/32"
    dst: str | None = None
    protocol: int | None = None
    icmp_type: int | None = None  # IPv4
    icmpv6_type: int | None = None
    # `-m addrtype --dst-type`: LOCAL (in the local table: an address of the host), MULTICAST...
    dst_type: str | None = None
    # `-m policy --dir in`: None = no policy match, 0 = `--pol none` (not decrypted),
    # otherwise `--pol ipsec --proto esp --reqid <value>`
    ipsec_reqid: int | None = None

    def render(self) -> str:
        """The rule as iptables arguments, for plans and logs."""
        return " ".join([*self.matches(), *self.jump()])

    def matches(self) -> list[str]:
        """What the rule matches, as iptables arguments: one entry per option a new field adds
        (the adapter parses -save output back with the same options, routed_nv/netfilter)."""
        args = []
        if self.in_interface:
            args += ["-i", self.in_interface]
        if self.src:
            args += ["-s", self.src]
        if self.dst:
            args += ["-d", self.dst]
        if self.protocol is not None:
            args += ["-p", str(self.protocol)]
        if self.icmp_type is not None:
            args += ["-m", "icmp", "--icmp-type", str(self.icmp_type)]
        if self.icmpv6_type is not None:
            args += ["-m", "icmp6", "--icmpv6-type", str(self.icmpv6_type)]
        if self.dst_type is not None:
            args += ["-m", "addrtype", "--dst-type", self.dst_type]
        if self.ipsec_reqid == 0:
            args += ["-m", "policy", "--dir", "in", "--pol", "none"]
        elif self.ipsec_reqid is not None:
            args += ["-m", "policy", "--dir", "in", "--pol", "ipsec", "--proto", "esp"]
            args += ["--reqid", str(self.ipsec_reqid)]
        return args

    def jump(self) -> list[str]:
        return ["-g" if self.goto else "-j", self.target]


@dataclass(frozen=True, order=True)
class ChainKey:
    family: Family
    table: str
    chain: str

    def describe(self) -> str:
        return f"{self.family} {self.table} {self.chain}"


@dataclass(frozen=True)
class DesiredRules:
    chains: Mapping[ChainKey, tuple[Rule, ...]]  # our own chains and their whole content
    # the single jump from each built-in chain we hook into: (family, table, built-in) -> chain
    jumps: Mapping[ChainKey, str]
    errors: tuple[str, ...] = ()
    # chains whose rules match disjoint packets (one interface, or one protocol, each), so their
    # order does not matter: changed rule by rule, never rewritten whole (one endpoint added to
    # 1,000 costs one rule, not 1,001)
    unordered: frozenset[ChainKey] = frozenset()


class NetfilterError(RoutedNvError):
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
