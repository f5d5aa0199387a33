"""The agent's log: one line per event, a dotted event name and key=value fields (as ExaBGP).

    agent.apply ok=true changes=3 seconds=0.42 trigger=directory
    agent.reload ok=false problem="conf.d/10-tenants.toml: tenants.blue.id: 70000 is out of ..."

or, with the JSON format, one object per line with the same names. Lines go to stderr, which
systemd's journal (or a lab test) collects; there is no log file to rotate.

Secrets never reach the log: a field whose name looks like it holds one is replaced by
<redacted>, whatever its value; key material elsewhere is a `Secret`, whose str() is redacted.
"""

from __future__ import annotations

import json
import re
import sys
import time
from typing import TextIO

from routed_nv.config.model import LogFormat

_SECRET_NAME = re.compile(r"key|secret|password|psk|token", re.IGNORECASE)
_BARE = re.compile(r"[^\s=\"]+")
REDACTED = "<redacted>"

Field = str | int | float | bool | None


class EventLog:
    def __init__(self, fmt: LogFormat = LogFormat.TEXT, stream: TextIO | None = None) -> None:
        self.fmt = fmt
        self._stream = stream

    def __call__(self, event: str, **fields: Field) -> None:
        clean = {k: REDACTED if _SECRET_NAME.search(k) else v for k, v in fields.items()}
        stream = self._stream or sys.stderr  # looked up late: tests swap sys.stderr
        stream.write(render(self.fmt, event, clean) + "\n")
        stream.flush()


def render(fmt: LogFormat, event: str, fields: dict[str, Field]) -> str:
    if fmt is LogFormat.JSON:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return json.dumps({"time": stamp, "event": event, **fields}, default=str)
    return " ".join([event, *(f"{k}={_text(v)}" for k, v in fields.items())])


def _text(value: Field) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)  # true / false / null, as in the JSON form
    if isinstance(value, float):
        return f"{value:.3f}"
    text = str(value)
    return text if _BARE.fullmatch(text) else json.dumps(text)
