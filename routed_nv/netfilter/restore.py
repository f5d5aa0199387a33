"""The one adapter to iptables: legacy tables through iptables-legacy-save/-restore (and the
ip6tables-legacy pair), one atomic `restore --noflush` commit per table.

- Text in, text out, as Neutron's iptables_manager and Calico Felix do: no libiptc/libxtables
  ABI to track (docs/design-notes.md), nothing to import.
- A legacy commit replaces the whole table in one setsockopt: every change to a table (chains
  rewritten, jump fixed, chains deleted) is atomic, no packet sees a half-built chain, and a
  change the kernel refuses leaves the table as it was.
- Locking is the tool's own: `--wait` on the xtables lock, as `iptables -A` takes it.
- A network namespace is entered by a short-lived thread (netns.py); the tool, forked from that
  thread, runs in it.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import re
import shlex
import socket
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from routed_nv.model import markers
from routed_nv.model.netfilter import ActualTable, Family, NetfilterError, Rule, TableChange
from routed_nv.netns import NetnsError, run_in_netns

COMMENT = "routed-nv"
COMMENT_ARGS = ("-m", "comment", "--comment", COMMENT)
TOOLS = {Family.IPV4: "iptables-legacy", Family.IPV6: "ip6tables-legacy"}
MAX_ERROR = 200  # characters of the tool's complaint in one error line

# Protocol names -save prints: from /etc/protocols when it exists, else iptables' own short
# list (tcp, udp, icmp, esp, ...) or the number. Both sides of a comparison go through this.
PROTOCOLS = {
    "all": 0, "icmp": 1, "ipencap": 4, "tcp": 6, "udp": 17, "ipv6": 41, "esp": 50, "ah": 51,
    "ipv6-icmp": 58, "icmpv6": 58, "sctp": 132, "mh": 135, "udplite": 136,
}  # fmt: skip
# ICMP type names iptables accepts for the types we write (1.8.9 prints numbers).
ICMP_TYPES = {"echo-request": 8, "ping": 8}
# ICMPv6 type names iptables accepts (and newer versions may print); we write numbers.
ICMPV6_TYPES = {
    "destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3, "ttl-exceeded": 3,
    "parameter-problem": 4, "echo-request": 128, "ping": 128, "echo-reply": 129, "pong": 129,
    "router-solicitation": 133, "router-advertisement": 134, "neighbour-solicitation": 135,
    "neighbor-solicitation": 135, "neighbour-advertisement": 136, "neighbor-advertisement": 136,
    "redirect": 137,
}  # fmt: skip


@dataclass(frozen=True)
class Backend:
    system: str  # "legacy", "nf_tables" or "unknown": what `iptables` is on this machine
    version: str  # `iptables -V`, or why it could not be run

    @property
    def description(self) -> str:
        lists = "iptables-legacy -t raw -L -v -n and ip6tables-legacy -t raw -L -v -n"
        how = "routed_nv programs the legacy tables with iptables-legacy-restore"
        if self.system == "legacy":
            return f"iptables is legacy ({self.version}): {how}; its rules show in {lists}"
        if self.system == "nf_tables":
            return (
                f"iptables is nf_tables ({self.version}); {how}, which `iptables -L` does not"
                f" show: see them with {lists}. Both stay active: packets pass the nf_tables and"
                " the legacy hooks."
            )
        return f"iptables backend unknown ({self.version}); {how}: see them with {lists}"


def detect_backend(run: Callable[..., Any] = subprocess.run) -> Backend:
    try:
        proc = run(["iptables", "-V"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Backend("unknown", f"cannot run iptables -V: {exc}")
    version = (proc.stdout or proc.stderr).strip()
    match = re.search(r"\((legacy|nf_tables)\)", version)
    return Backend(match.group(1) if match else "unknown", version or "no output")


class RestoreTables:
    """Legacy iptables of one network namespace (None: the agent's own)."""

    def __init__(self, netns: str | None = None, wait_s: int = 10) -> None:
        self.netns = netns
        self._wait_s = wait_s
        # per table, the last -save text without counters and what it parsed to: a resync
        # reads tables that rarely changed, and parsing 1,000 endpoints' rules cost more than
        # running -save; a text that differs in anything but counters is parsed again
        self._parsed: dict[tuple[Family, str], tuple[str, ActualTable]] = {}

    def read(self, family: Family, table: str) -> ActualTable:
        saved = self._save(family, table)
        rules = _NOT_RULES.sub("", saved)
        last = self._parsed.get((family, table))
        if last is not None and last[0] == rules:
            return replace(last[1], counters=_counters(saved, last[1].chains))
        actual = parse_save(family, table, saved)
        self._parsed[(family, table)] = (rules, actual)
        return actual

    def apply(self, change: TableChange) -> None:
        saved = self._save(change.family, change.table) if change.hooks else ""
        text = restore_text(change, saved)
        args = ["--noflush", "--wait", str(self._wait_s)]
        self._tool(change.family, change.table, "restore", args, text)

    def _save(self, family: Family, table: str) -> str:
        return self._tool(family, table, "save", ["-c", "-t", table])

    def _tool(
        self, family: Family, table: str, verb: str, args: list[str], text: str | None = None
    ) -> str:
        tool = f"{TOOLS[family]}-{verb}"
        where = f"{family} table {table}" + (f" in netns {self.netns}" if self.netns else "")

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [tool, *args], input=text, capture_output=True, text=True,
                timeout=self._wait_s + 60, check=False,
            )  # fmt: skip

        try:
            proc = run_in_netns(self.netns, run)
        except NetnsError as exc:
            raise NetfilterError(f"{where}: {exc}") from None
        except OSError as exc:
            raise NetfilterError(f"{where}: cannot run {tool}: {exc.strerror}") from None
        except subprocess.TimeoutExpired as exc:
            raise NetfilterError(f"{where}: {tool} did not finish in {exc.timeout:.0f} s") from None
        if proc.returncode != 0:
            raise NetfilterError(f"{where}: {tool} failed: {_complaint(proc.stderr, text)}")
        return proc.stdout


def _complaint(stderr: str, text: str | None) -> str:
    """The tool's error in one short line, with the input line it names (restore says only
    "line N failed" or "Error occurred at line: N")."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith("Try `")] or ["no error message"]
    said = "; ".join(lines[:2])
    number = re.search(r"line:? (\d+)", said)
    if text and number and 0 < int(number.group(1)) <= len(text.splitlines()):
        said += f" (input: {text.splitlines()[int(number.group(1)) - 1]})"
    return said if len(said) <= MAX_ERROR else said[: MAX_ERROR - 3] + "..."


# --- change -> restore input -----------------------------------------------------------------


def restore_text(change: TableChange, saved: str) -> str:
    """One commit: chains declared (created, or flushed if they exist) and filled, edited chains'
    rules deleted and appended by their spec, our rules in
    the hooks deleted as -save printed them and our jump inserted first, unwanted chains flushed
    then deleted (they may jump to one another)."""
    lines = [f"*{change.table}"]
    lines += [f":{chain} - [0:0]" for chain in change.set_chains]
    for chain, rules in change.set_chains.items():
        lines += [f"-A {chain} {rule_args(rule)}" for rule in rules]
    for chain, (append, delete) in change.edit_chains.items():
        lines += [f"-D {chain} {rule_args(rule)}" for rule in delete]
        lines += [f"-A {chain} {rule_args(rule)}" for rule in append]
    ours = _hook_rules(saved)
    for hook, jump in change.hooks.items():
        lines += [f"-D {hook} {args}" for args in ours.get(hook, ())]
        if jump is not None:
            lines.append(f"-I {hook} 1 {rule_args(Rule(target=jump))}")
    lines += [f"-F {chain}" for chain in change.delete_chains]
    lines += [f"-X {chain}" for chain in change.delete_chains]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def rule_args(rule: Rule) -> str:
    """A rule as restore arguments, with our comment."""
    return shlex.join([*rule.matches(), *COMMENT_ARGS, *rule.jump()])


def _hook_rules(saved: str) -> dict[str, list[str]]:
    """Our rules in built-in chains, as -save printed them (without counters)."""
    builtin = _builtin_chains(saved)
    hooks: dict[str, list[str]] = {}
    for chain, args, _ in _rule_lines(saved):
        if chain in builtin and _is_ours(args):
            hooks.setdefault(chain, []).append(args)
    return hooks


# --- -save output -> ActualTable -------------------------------------------------------------


# what -save prints besides the rules: counters, and comments (the time it ran)
_NOT_RULES = re.compile(r"\[\d+:\d+\]|^#.*$", re.MULTILINE)


def parse_save(family: Family, table: str, saved: str) -> ActualTable:
    chains: dict[str, tuple[Rule | None, ...]] = {}
    hooks: dict[str, tuple[tuple[int, str], ...]] = {}
    for line in saved.splitlines():
        if line.startswith(":" + markers.CHAIN_PREFIX):
            chains[line[1:].split()[0]] = ()
    builtin = _builtin_chains(saved)
    position: dict[str, int] = {}
    for chain, args, _ in _rule_lines(saved):
        index = position[chain] = position.get(chain, -1) + 1
        if chain in chains:
            chains[chain] += (parse_rule(args),)
        elif chain in builtin and _is_ours(args):
            hooks[chain] = (*hooks.get(chain, ()), (index, _target(args)))
    return ActualTable(family, table, chains, _counters(saved, chains), hooks)


def _counters(saved: str, chains: Mapping[str, object]) -> dict[str, tuple[tuple[int, int], ...]]:
    """(packets, bytes) of each rule of `chains` (ours), in order."""
    counters: dict[str, list[tuple[int, int]]] = {chain: [] for chain in chains}
    for chain, _, count in _rule_lines(saved):
        if chain in counters:
            counters[chain].append(count)
    return {chain: tuple(counts) for chain, counts in counters.items()}


def _builtin_chains(saved: str) -> set[str]:
    """`:NAME POLICY [p:b]`: built-in chains have a policy, ours have "-"."""
    declared = (line[1:].split() for line in saved.splitlines() if line.startswith(":"))
    return {words[0] for words in declared if len(words) > 1 and words[1] != "-"}


def _rule_lines(saved: str) -> list[tuple[str, str, tuple[int, int]]]:
    """(chain, arguments after the chain name, counters) of each `[p:b] -A CHAIN ...` line."""
    found = []
    for line in saved.splitlines():
        count = (0, 0)
        if line.startswith("["):
            packets, _, rest = line[1:].partition(":")
            octets, _, line = rest.partition("] ")
            count = (int(packets), int(octets))
        if line.startswith("-A "):
            _, chain, *rest = line.split(" ", 2)
            found.append((chain, rest[0] if rest else "", count))
    return found


def _is_ours(args: str) -> bool:
    options = _options(args) or {}
    return _target(args).startswith(markers.CHAIN_PREFIX) or (
        options.get("comment --comment") == COMMENT
    )


def _target(args: str) -> str:
    words = args.split()
    jumps = [value for flag, value in itertools.pairwise(words) if flag in ("-j", "-g")]
    return jumps[-1] if jumps else ""


def parse_rule(args: str) -> Rule | None:
    """One of our rules read back, or None if it is not exactly one we could have written: the
    rule decoded from the options must render to those same options (so a negation, an unknown
    match or option, a missing comment all give None)."""
    options = _options(args)
    if options is None:
        return None
    try:
        values = {name: decode(options) for name, decode in DECODE.items()}
        rule = Rule(**{k: v for k, v in values.items() if v is not None})
    except (ValueError, TypeError):
        return None
    return rule if _written(rule) == options else None


@functools.lru_cache(maxsize=4096)  # most rules repeat (ND, DROP, per-tenant RETURN)
def _written(rule: Rule) -> dict[str, str] | None:
    """The options of a rule as we write it, normalised as read back."""
    return _options(rule_args(rule))


def _options(args: str) -> dict[str, str] | None:
    """-save arguments as {option: value}, normalised; a match's options are keyed
    "<match> <option>", a flag without a value (`--strict`) has "". None for what we never
    write (a negation, a repeated option, a word that is not an option)."""
    try:  # -save quotes only what has spaces or quotes; str.split is far faster than shlex
        tokens = shlex.split(args) if any(c in args for c in "\"'\\") else args.split()
    except ValueError:
        return None
    options: dict[str, str] = {}
    match = ""
    i = 0
    while i < len(tokens):
        option = tokens[i]
        has_value = i + 1 < len(tokens) and not tokens[i + 1].startswith("-")
        value = tokens[i + 1] if has_value else ""
        i += 2 if has_value else 1
        if not option.startswith("-"):  # "!" (a negation) or a stray word
            return None
        if option == "-m":
            match, key = value, f"-m {value}"
        else:
            key = f"{match} {option}" if option.startswith("--") else option
        if key in options:
            return None
        try:
            options[key] = NORMALISE.get(key, str)(value)
        except (ValueError, OSError):  # an address or a name we cannot read: not ours
            return None
    return options


@functools.lru_cache(maxsize=4096)
def _network(text: str) -> str:
    return str(ipaddress.ip_network(text, strict=False))


def _protocol(text: str) -> str:
    if text.isdigit():
        return text
    if text in PROTOCOLS:
        return str(PROTOCOLS[text])
    return str(socket.getprotobyname(text))  # raises OSError: not a name we know


def _icmp_type(text: str) -> str:
    return str(ICMP_TYPES.get(text, text))  # "8/0" (a code) stays unequal to ours


def _icmpv6_type(text: str) -> str:
    return str(ICMPV6_TYPES.get(text, text))  # "135/0" (a code) stays unequal to ours


def _int(options: Mapping[str, str], key: str) -> int | None:
    return int(options[key]) if key in options else None


def _reqid(options: Mapping[str, str]) -> int | None:
    pol = options.get("policy --pol")
    return 0 if pol == "none" else _int(options, "policy --reqid")


NORMALISE: dict[str, Callable[[str], str]] = {
    "-s": _network,
    "-d": _network,
    "-p": _protocol,
    "policy --proto": _protocol,
    "icmp --icmp-type": _icmp_type,
    "icmp6 --icmpv6-type": _icmpv6_type,
}
# Rule field -> its value from the normalised options; a new match field is one line here and
# its arguments in Rule.matches().
DECODE: dict[str, Callable[[Mapping[str, str]], Any]] = {
    "target": lambda o: o.get("-j") or o.get("-g"),
    "goto": lambda o: "-g" in o,
    "in_interface": lambda o: o.get("-i"),
    "src": lambda o: o.get("-s"),
    "dst": lambda o: o.get("-d"),
    "protocol": lambda o: _int(o, "-p"),
    "icmp_type": lambda o: _int(o, "icmp --icmp-type"),
    "icmpv6_type": lambda o: _int(o, "icmp6 --icmpv6-type"),
    "dst_type": lambda o: o.get("addrtype --dst-type"),
    "ipsec_reqid": _reqid,
}
