"""The one adapter to python-iptables (iptc): legacy iptables, one commit per table.

- python-iptables drives libiptc, i.e. the *legacy* tables; `detect_backend()` says which
  iptables the system uses and where our rules are visible.
- libiptc takes no lock: we flock the xtables lock file as iptables itself does, so `iptables -A`
  run at the same moment cannot overwrite our commit (or we theirs).
- A legacy commit replaces the whole table in one setsockopt: every change to a table (chains
  rewritten, jump fixed, chains deleted) is atomic, no packet sees a half-built chain.
- A network namespace is entered by a short-lived thread (netns.py).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from routed_nv import markers
from routed_nv.calc.netfilter import Family, Rule
from routed_nv.netfilter.netns import NetnsError, run_in_netns
from routed_nv.netfilter.objects import ActualTable, NetfilterError, TableChange

try:
    import iptc

    _IMPORT_ERROR = ""
except Exception as exc:  # python-iptables loads libiptc/libxtables at import time
    iptc = None
    _IMPORT_ERROR = str(exc)

COMMENT = "routed-nv"
DEFAULT_LOCK = "/run/xtables.lock"
T = TypeVar("T")
# One python-iptables user at a time in this process: its Table objects are process-wide
# singletons and libxtables keeps global state.
_PROCESS_LOCK = threading.Lock()


@dataclass(frozen=True)
class Backend:
    system: str  # "legacy", "nf_tables" or "unknown": what `iptables` is on this machine
    version: str  # `iptables -V`, or why it could not be run

    @property
    def description(self) -> str:
        lists = "iptables-legacy -t raw -L -v -n and ip6tables-legacy -t raw -L -v -n"
        if self.system == "legacy":
            return f"iptables is legacy ({self.version}): routed_nv's rules show in {lists}"
        if self.system == "nf_tables":
            return (
                f"iptables is nf_tables ({self.version}); routed_nv programs the legacy tables"
                f" (python-iptables), which `iptables -L` does not show: see them with {lists}."
                " Both stay active: packets pass the nf_tables and the legacy hooks."
            )
        return (
            f"iptables backend unknown ({self.version}); routed_nv programs the legacy tables"
            f" (python-iptables): see them with {lists}"
        )


def detect_backend(run: Callable[..., Any] = subprocess.run) -> Backend:
    try:
        proc = run(["iptables", "-V"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Backend("unknown", f"cannot run iptables -V: {exc}")
    version = (proc.stdout or proc.stderr).strip()
    match = re.search(r"\((legacy|nf_tables)\)", version)
    return Backend(match.group(1) if match else "unknown", version or "no output")


class IptcTables:
    """Legacy iptables of one network namespace (None: the agent's own)."""

    def __init__(
        self,
        netns: str | None = None,
        lock_path: str | None = None,
        lock_timeout_s: float = 10.0,
    ) -> None:
        if iptc is None:
            raise NetfilterError(f"python-iptables cannot load libiptc: {_IMPORT_ERROR}")
        self.netns = netns
        self._lock_path = lock_path or os.environ.get("XTABLES_LOCKFILE", DEFAULT_LOCK)
        self._lock_timeout_s = lock_timeout_s

    def read(self, family: Family, table: str) -> ActualTable:
        return self._run(family, table, "read", lambda t: _read(t, family, table))

    def apply(self, change: TableChange) -> None:
        self._run(change.family, change.table, "apply", lambda t: _apply(t, change))

    def _run(self, family: Family, table: str, what: str, fn: Callable[[Any], T]) -> T:
        where = f"{family} table {table}" + (f" in netns {self.netns}" if self.netns else "")

        def work() -> T:
            with _PROCESS_LOCK, self._xtables_lock(where):
                handle = _table(family, table)
                try:
                    handle.refresh()  # a fresh libiptc handle, opened in this namespace
                    return fn(handle)
                finally:
                    handle.close()  # autocommit is off: closing never commits

        try:
            return run_in_netns(self.netns, work)
        except (iptc.IPTCError, iptc.XTablesError, ValueError) as exc:
            raise NetfilterError(f"{where}: {what} failed: {exc}") from None
        except NetnsError as exc:
            raise NetfilterError(f"{where}: {exc}") from None

    @contextmanager
    def _xtables_lock(self, where: str) -> Iterator[None]:
        try:
            fd = os.open(self._lock_path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            msg = f"{where}: xtables lock {self._lock_path}: {exc.strerror}"
            raise NetfilterError(msg) from None
        try:
            deadline = time.monotonic() + self._lock_timeout_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        raise NetfilterError(
                            f"{where}: another program held the xtables lock"
                            f" {self._lock_path} for {self._lock_timeout_s:.0f} s"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # releases the lock


def _table(family: Family, name: str) -> Any:
    table = iptc.Table6(name) if family is Family.IPV6 else iptc.Table(name)
    table.autocommit = False
    return table


def _new_rule(family: Family) -> Any:
    return iptc.Rule6() if family is Family.IPV6 else iptc.Rule()


def _chain(table: Any, name: str) -> Any:
    return iptc.Chain(table, name)


def _read(table: Any, family: Family, name: str) -> ActualTable:
    chains: dict[str, tuple[Rule | None, ...]] = {}
    counters: dict[str, tuple[tuple[int, int], ...]] = {}
    hooks: dict[str, tuple[tuple[int, str], ...]] = {}
    for chain in table.chains:
        rules = chain.rules
        if chain.name.startswith(markers.CHAIN_PREFIX):
            chains[chain.name] = tuple(decode(r) for r in rules)
            counters[chain.name] = tuple(tuple(r.get_counters()) for r in rules)
        elif table.builtin_chain(chain.name):
            ours = tuple((i, r.target.name) for i, r in enumerate(rules) if _is_ours(r))
            if ours:
                hooks[chain.name] = ours
    return ActualTable(family, name, chains, counters, hooks)


def _apply(table: Any, change: TableChange) -> None:
    for chain in change.set_chains:
        if not table.is_chain(chain):
            table.create_chain(chain)
        table.flush_entries(chain)
    for chain, rules in change.set_chains.items():
        target = _chain(table, chain)
        for rule in rules:
            target.append_rule(encode(change.family, rule))
    for hook, jump in change.hooks.items():
        builtin = _chain(table, hook)
        for rule in reversed(builtin.rules):  # from the end: positions stay valid
            if _is_ours(rule):
                table.delete_entry(hook, rule.rule, rule.mask)
        if jump is not None:
            builtin.insert_rule(encode(change.family, Rule(target=jump)), 0)
    for chain in change.delete_chains:
        table.flush_entries(chain)
        table.delete_chain(chain)
    table.commit()


def _is_ours(rule: Any) -> bool:
    return rule.target.name.startswith(markers.CHAIN_PREFIX) or _comment(rule) == COMMENT


def _comment(rule: Any) -> str | None:
    for match in rule.matches:
        if match.name == "comment":
            return _one(match.get_all_parameters(), "comment").strip('"')
    return None


def encode(family: Family, rule: Rule) -> Any:
    """Our rule as a python-iptables rule, with the routed-nv comment."""
    out = _new_rule(family)
    if rule.in_interface:
        out.in_interface = rule.in_interface
    if rule.src:
        out.src = rule.src
    if rule.dst:
        out.dst = rule.dst
    if rule.protocol is not None:
        out.protocol = str(rule.protocol)
    if rule.icmpv6_type is not None:
        out.create_match("icmp6").icmpv6_type = str(rule.icmpv6_type)
    if rule.ipsec_reqid is not None:
        policy = out.create_match("policy")
        policy.dir = "in"
        if rule.ipsec_reqid == 0:
            policy.pol = "none"
        else:
            policy.pol = "ipsec"
            policy.proto = "esp"
            policy.reqid = str(rule.ipsec_reqid)
            # python-iptables' final check re-parses what the match prints, and the policy match
            # prints its elements only after that check: the reqid would be lost
            # (ldx/python-iptables#290). The match is complete as it is, so skip the re-parse.
            policy._update_parameters = lambda: None
    out.create_match("comment").comment = COMMENT
    out.target = iptc.Target(out, rule.target, goto=rule.goto)
    return out


def decode(rule: Any) -> Rule | None:
    """One of our rules read back, or None if it is not exactly one we could have written."""
    try:
        fields: dict[str, Any] = {
            "target": rule.target.name,
            "goto": bool(rule.target.goto),
            "in_interface": rule.in_interface or None,
            "src": _network(rule.src),
            "dst": _network(rule.dst),
            "protocol": _protocol(rule),
        }
        comment = None
        for match in rule.matches:
            params = match.get_all_parameters()
            if match.name == "comment":
                comment = _one(params, "comment").strip('"')
            elif match.name == "icmp6" and set(params) == {"icmpv6-type"}:
                fields["icmpv6_type"] = int(_one(params, "icmpv6-type"))
            elif match.name == "policy":
                fields["ipsec_reqid"] = _reqid(params)
            else:
                return None
    except (ValueError, KeyError, OSError):
        return None
    return Rule(**fields) if comment == COMMENT else None


def _one(params: dict[str, list[str]], key: str) -> str:
    values = params[key]
    if len(values) != 1:
        raise ValueError(f"{key}: {values}")
    return values[0]


def _network(text: str | None) -> str | None:
    if not text or text.startswith("!"):
        if text:
            raise ValueError(f"negated address {text}")
        return None
    net = ipaddress.ip_network(text, strict=False)
    return None if net.prefixlen == 0 else str(net)


def _protocol(rule: Any) -> int | None:
    text = rule.protocol  # a name from python-iptables' own table, not /etc/protocols
    if text.startswith("!"):
        raise ValueError(f"negated protocol {text}")
    number = int(text) if text.isdigit() else {v: k for k, v in rule.protocols.items()}[text]
    return number or None


def _reqid(params: dict[str, list[str]]) -> int:
    """The ipsec_reqid field of Rule from a policy match's parameters."""
    common = {"dir": ["in"]}
    if params == {**common, "pol": ["none"]}:
        return 0
    proto = _one(params, "proto")
    if (
        {k: params.get(k) for k in ("dir", "pol")} == {**common, "pol": ["ipsec"]}
        and set(params) == {"dir", "pol", "proto", "reqid"}
        and (proto == "esp" or proto == str(socket.IPPROTO_ESP))
    ):
        return int(_one(params, "reqid"))
    raise ValueError(f"policy match {params}")
