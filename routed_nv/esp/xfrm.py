"""The one adapter to the kernel's XFRM tables, through iproute2 (pyroute2 has no XFRM SA/SP API).

Reading: `ip xfrm state` / `ip xfrm policy` as text. iproute2 6.1 ignores `-json` for xfrm (it
prints the same text), and it prints SA keys without `-s`, so the text is parsed here.

Writing: one `ip -force -batch -` process fed on stdin, so keys never appear in argv (visible in
ps). iproute2's xfrm code exits the whole batch on the first kernel error without naming the line,
so every command is followed by `xfrm state count`, whose "SAD count" line marks it as done; on
failure the op after the last marker is the one that failed, and the rest are run in a new batch.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from routed_nv.errors import RoutedNvError
from routed_nv.model.secret import Secret
from routed_nv.model.xfrm import (
    Action,
    Direction,
    SaCounters,
    StateKey,
    XfrmPolicy,
    XfrmState,
)

_DONE_MARKER = "xfrm state count"
_DONE_OUTPUT = "SAD count"
# Deleting something already gone is success (ENOENT for policies, ESRCH for states).
_GONE = ("No such file or directory", "No such process")
_TIMEOUT_S = 60


class Verb(StrEnum):
    ADD = "add"
    UPDATE = "update"
    DELETE = "delete"


@dataclass(frozen=True)
class Op:
    verb: Verb
    obj: XfrmState | XfrmPolicy

    def describe(self) -> str:
        return f"{self.verb} {self.obj.describe()}"

    def lines(self) -> list[str]:
        return [self.describe()]


@dataclass(frozen=True)
class OpFailure:
    op: Op
    message: str

    def __str__(self) -> str:
        return f"{self.op.describe()}: {self.message}"


class XfrmError(RoutedNvError):
    """iproute2 could not be run or its output not read."""


class IprouteXfrm:
    """XFRM access in one network namespace (None: the agent's own)."""

    def __init__(self, netns: str | None = None, ip: str = "ip") -> None:
        self.netns = netns
        self._cmd = [ip, *(["-n", netns] if netns else [])]

    def read_states(self) -> list[XfrmState]:
        return parse_states(self._show("state"))

    def read_counters(self) -> dict[StateKey, SaCounters]:
        """Each SA's traffic and error counters (`ip -s xfrm state`), by (dst, spi)."""
        proc = self._run(["-s", "xfrm", "state"])
        if proc.returncode != 0:
            raise XfrmError(f"ip -s xfrm state{self._where()} failed: {proc.stderr.strip()}")
        return parse_counters(proc.stdout)

    def read_policies(self) -> list[XfrmPolicy]:
        return parse_policies(self._show("policy"))

    def apply(self, ops: Sequence[Op]) -> list[OpFailure]:
        """Run every op; returns the ones that failed (the others were applied)."""
        failures = []
        remaining = list(ops)
        while remaining:
            done, message = self._batch(remaining)
            if message is None:
                break
            failed = remaining[done]
            if not (failed.verb is Verb.DELETE and any(g in message for g in _GONE)):
                failures.append(OpFailure(failed, message))
            remaining = remaining[done + 1 :]
        return failures

    def _where(self) -> str:
        return f" in netns {self.netns}" if self.netns else ""

    def _run(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [*self._cmd, *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise XfrmError(f"cannot run '{' '.join([*self._cmd, *args])}': {exc}") from None

    def _show(self, what: str) -> str:
        proc = self._run(["xfrm", what])
        if proc.returncode != 0:
            raise XfrmError(f"ip xfrm {what}{self._where()} failed: {proc.stderr.strip()}")
        return proc.stdout

    def _batch(self, ops: list[Op]) -> tuple[int, str | None]:
        """Runs ops in one batch: (ops completed, error message of the next one or None)."""
        script = "".join(f"{render(op)}\n{_DONE_MARKER}\n" for op in ops)
        proc = self._run(["-force", "-batch", "-"], stdin=script)
        done = proc.stdout.count(_DONE_OUTPUT)
        if proc.returncode == 0 and done == len(ops):
            return done, None
        message = proc.stderr.strip() or f"ip exited with status {proc.returncode}"
        return min(done, len(ops) - 1), message


def render(op: Op) -> str:
    """The iproute2 batch line for an op (contains the key for state adds: stdin only)."""
    obj = op.obj
    if isinstance(obj, XfrmState):
        ident = f"src {obj.src} dst {obj.dst} proto esp spi 0x{obj.spi:08x}"
        if op.verb is Verb.DELETE:
            return f"xfrm state delete {ident}"
        return (
            f"xfrm state {op.verb} {ident} reqid {obj.reqid} mode {obj.mode} "
            f"replay-window {obj.replay_window} "
            + (f"replay-oseq {obj.oseq} " if obj.oseq else "")
            # an empty key (NULL encryption) is an empty word: `0x` alone is taken as text
            + obj.transform(f"0x{obj.key_material.hex()}" if obj.key_material.value else '""')
        )
    sel = f"src {obj.src} dst {obj.dst} proto {obj.proto} dir {obj.direction}"
    if op.verb is Verb.DELETE:
        return f"xfrm policy delete {sel}"
    if obj.is_block:
        return f"xfrm policy {op.verb} {sel} priority {obj.priority} action block"
    return (
        f"xfrm policy {op.verb} {sel} priority {obj.priority} "
        f"tmpl proto esp reqid {obj.reqid} mode transport"
    )


def parse_states(text: str) -> list[XfrmState]:
    """The IPv6 ESP SAs in `ip xfrm state` output; others (IPv4, AH, ...) are skipped."""
    states = []
    for block in _blocks(text):
        first = block[0].split()
        # commas separate the anti-replay fields, but are part of rfc7539esp(chacha20,poly1305)
        raw = " ".join(block).split()
        words = " ".join(block).replace(",", " ").split()
        src, dst = _v6(_after(first, "src")), _v6(_after(first, "dst"))
        if src is None or dst is None or _after(words, "proto") != "esp":
            continue
        aead, algorithm, key, icv = _transform(raw)
        # With a window > 32 iproute2 uses the ESN replay attribute and prints the real window as
        # `replay_window N` in the anti-replay context; `replay-window` then shows 0.
        replay = _after(words, "replay_window") or _after(words, "replay-window") or "0"
        states.append(
            XfrmState(
                src=src,
                dst=dst,
                spi=int(_after(words, "spi") or "0", 0),
                reqid=int(_after(words, "reqid") or "0"),
                mode=_after(words, "mode") or "",
                replay_window=int(replay),
                algorithm=algorithm,
                key_material=Secret(key),
                icv_bits=icv,
                aead=aead,
                # "anti-replay esn context: ... oseq 0x.." (or "anti-replay context: ...")
                oseq=int(_after(words, "oseq") or "0", 0),
            )
        )
    return states


def _transform(words: list[str]) -> tuple[bool, str, bytes, int]:
    """(aead?, algorithm, key, ICV bits) from `aead NAME 0xKEY ICV` or `enc NAME [0xKEY]`
    (iproute2 prints no key word for an empty key, as NULL encryption has)."""
    aead = _after_n(words, "aead", 3)
    if aead is not None:
        return True, aead[0], bytes.fromhex(aead[1].removeprefix("0x")), int(aead[2])
    enc = _after_n(words, "enc", 2) or _after_n(words, "enc", 1) or [""]
    key = enc[1] if len(enc) > 1 and enc[1].startswith("0x") else "0x"
    return False, enc[0], bytes.fromhex(key.removeprefix("0x")), 0


def parse_counters(text: str) -> dict[StateKey, SaCounters]:
    """From `ip -s xfrm state`: "lifetime current: B(bytes), P(packets)" and
    "stats: replay-window W replay R failed F" of each IPv6 ESP SA."""
    counters = {}
    for block in _blocks(text):
        dst = _v6(_after(block[0].split(), "dst"))
        words = " ".join(block).replace(",", " ").split()
        spi_text = _after(words, "spi")
        if dst is None or spi_text is None or _after(words, "proto") != "esp":
            continue
        current = _after_n(words, "current:", 2)
        if current is None or "stats:" not in words:
            continue
        after = words[words.index("stats:") :]  # the state line has a replay-window too
        stats = [_after(after, k) for k in ("replay-window", "replay", "failed")]
        if None in stats:
            continue
        # with -s iproute2 adds the decimal: "spi 0x00640004(6553604)"
        counters[(dst, int(spi_text.split("(")[0], 0))] = SaCounters(
            bytes=int(current[0].removesuffix("(bytes)")),
            packets=int(current[1].removesuffix("(packets)")),
            errors=sum(int(x) for x in stats if x is not None),
        )
    return counters


def parse_policies(text: str) -> list[XfrmPolicy]:
    """The IPv6 in/out policies with an inner protocol; others (sockets, fwd, ...) are skipped."""
    policies = []
    for block in _blocks(text):
        first = block[0].split()
        words = " ".join(block).split()
        src, dst = _v6_net(_after(first, "src")), _v6_net(_after(first, "dst"))
        proto, direction = _proto_number(_after(first, "proto")), _after(words, "dir")
        if src is None or dst is None or proto is None or direction not in ("in", "out"):
            continue
        action = Action.BLOCK if _after(words, "action") == "block" else Action.ALLOW
        tmpl = words[words.index("tmpl") :] if "tmpl" in words else []
        reqid, spi = _after(tmpl, "reqid"), _after(tmpl, "spi")
        policies.append(
            XfrmPolicy(
                direction=Direction(direction),
                src=src,
                dst=dst,
                proto=proto,
                priority=int(_after(words, "priority") or "0"),
                action=action,
                reqid=int(reqid) if reqid is not None else None,
                spi=int(spi, 0) if spi is not None else None,
            )
        )
    return policies


def _blocks(text: str) -> list[list[str]]:
    """Each object starts on an unindented line; its attributes follow, indented."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if line and not line[0].isspace():
            blocks.append([line])
        elif line.strip() and blocks:
            blocks[-1].append(line)
    return blocks


def _after(words: list[str], key: str) -> str | None:
    found = _after_n(words, key, 1)
    return found[0] if found else None


def _after_n(words: list[str], key: str, n: int) -> list[str] | None:
    if key not in words:
        return None
    i = words.index(key)
    found = words[i + 1 : i + 1 + n]
    return found if len(found) == n else None


def _v6(text: str | None) -> ipaddress.IPv6Address | None:
    try:
        return ipaddress.IPv6Address(text) if text else None
    except ValueError:
        return None


def _v6_net(text: str | None) -> ipaddress.IPv6Network | None:
    try:
        return ipaddress.IPv6Network(text) if text else None
    except ValueError:
        return None


def _proto_number(text: str | None) -> int | None:
    # iproute2 prints protocol names from /etc/protocols (4 = ipencap, 41 = ipv6).
    if text is None or text.isdigit():
        return int(text) if text else None
    try:
        return socket.getprotobyname(text)
    except OSError:
        return None
