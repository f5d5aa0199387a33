"""The operator guide's runnable blocks, and whether a command's output matches what it shows.

docs/operator-guide.md marks each block that runs in the lab with an HTML comment on the line
before it, `<!-- lab -->`. In such a block a line `HOST# COMMAND` is a command typed at the
prompt of lab host HOST (`rnv-host HOST` gives that prompt), and the lines after it, up to the
next command, are its output as the guide shows it. Every command must exit 0.

The output shown is real lab output; what changes from run to run does not count:
- runs of white space are one space, and a table's rule (`+-----+---+`) matches any widths;
- every number (decimal, or hex after 0x) matches any number: pids, times, counters, keys;
  a duration such as `29s` matches a longer one such as `1m06s`;
- `<redacted>` matches any word (key material), and a MAC address any MAC address;
- `...` within a line matches any text; a line that starts with `...` any number of lines (the
  rest of it is a note for the reader). Output shown without a final `...` line must end there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from routed_nv.errors import RoutedNvError

MARK = "<!-- lab -->"
PROMPT = re.compile(r"^([\w-]+)# (.*)$")
SKIP = "..."
_NUMBER = re.compile(r"0x[0-9a-f]+|\d+")
_DURATION = re.compile(r"\b(?:\d+[dhm])+\d+s\b")  # `up 1m06s` is `up 29s` an uptime later
_MAC = re.compile(r"\b[0-9a-f]{2}(?::[0-9a-f]{2}){5}\b")
_RULE = re.compile(r"^\+[-+]+\+$")


class GuideError(RoutedNvError, ValueError):
    """A marked block that is not of the runnable form (the message names its line)."""


@dataclass
class Command:
    line: int  # 1-based line of the guide where the command is
    host: str
    command: str
    output: list[str] = field(default_factory=list)


def runnable_commands(text: str) -> list[Command]:
    """Every command of the blocks marked `<!-- lab -->`, in the guide's order. Raises
    GuideError."""
    lines = text.splitlines()
    commands: list[Command] = []
    for number, line in enumerate(lines, 1):
        if line.strip() != MARK:
            continue
        body = _indented_block(lines, number)  # the block starts after the marker
        if not body or not PROMPT.match(body[0][1]):
            raise GuideError(f"line {number}: a lab block starts with `HOST# COMMAND`")
        for at, text_line in body:
            if prompt := PROMPT.match(text_line):
                commands.append(Command(at, prompt[1], prompt[2]))
            else:
                commands[-1].output.append(text_line)
    return commands


def _indented_block(lines: list[str], marker: int) -> list[tuple[int, str]]:
    """The 4-space indented code block after line `marker` (1-based), de-indented, with each
    line's number; blank lines inside it are kept, trailing ones dropped."""
    at = marker  # index of the line after the marker
    while at < len(lines) and not lines[at].strip():
        at += 1
    body: list[tuple[int, str]] = []
    while at < len(lines) and (lines[at].startswith("    ") or not lines[at].strip()):
        body.append((at + 1, lines[at][4:]))
        at += 1
    while body and not body[-1][1].strip():
        body.pop()
    return body


def mismatch(shown: list[str], actual: str) -> str:
    """ "" when `actual` output matches the output `shown`, else what differs first."""
    raw = [" ".join(line.split()) for line in actual.splitlines() if line.strip()]
    got = [_normal(line) for line in raw]
    at = 0
    skipping = False
    for want in shown:
        if want.strip().startswith(SKIP):  # `...`, or `... (a note for the reader)`
            skipping = True
            continue
        if not want.strip():
            continue
        pattern = _pattern(want)
        while at < len(got) and not pattern.fullmatch(got[at]):
            if not skipping:
                return f"expected {' '.join(want.split())!r}, got {raw[at]!r}"
            at += 1
        if at == len(got):
            return f"expected {' '.join(want.split())!r}, the output ended"
        at += 1
        skipping = False
    if not skipping and at < len(got):
        return f"unexpected line {raw[at]!r} after the output shown"
    return ""


def _normal(line: str) -> str:
    line = " ".join(line.split())
    if _RULE.match(line):
        return "+-+"
    return _NUMBER.sub("0", _DURATION.sub("0s", _MAC.sub("MAC", line)))


def _pattern(shown: str) -> re.Pattern[str]:
    parts = [part.strip() for part in _normal(shown).split(SKIP)]
    # `<redacted>` stands for key material: after _normal, any word
    return re.compile(
        ".*".join(re.escape(p).replace(re.escape("<redacted>"), r"\S+") for p in parts)
    )
