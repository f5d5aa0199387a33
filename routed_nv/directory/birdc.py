"""A client for BIRD's control socket (the protocol birdc speaks), written here because the PyPI
clients are unusable (birdclient hangs on `configure`, pybird cannot parse BIRD 2).

The protocol: BIRD greets with `0001 BIRD <version> ready.`; every reply line starts with a
four-digit code and `-` when more lines follow or ` ` on the last one; a line starting with a
space continues the previous code; lines starting with `+` are asynchronous messages (logged
events, not part of the reply). Codes 0xxx end a successful reply, 1xxx are data, 2xxx table
headings, 8xxx runtime errors and 9xxx parse errors. Failures become BirdError with a message
meant for people; nothing here raises a bare socket error.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from routed_nv.errors import TransientError

DEFAULT_TIMEOUT_S = 30.0
_LINE = re.compile(r"^(\d{4})([ -])(.*)$")
_RECV = 65536

# Reply codes (BIRD's doc/reply_codes) that this client interprets.
WELCOME = 1
CONFIG_OK = 20  # `configure check`
RECONFIGURED = {3, 4, 5}  # done / in progress / queued behind a running one
PROTOCOL_ROW = 1002
ROUTE_ROW = 1007
ROUTE_ATTRIBUTE = 1012
ROUTE_DETAIL = 1008
MEMORY_ROW = 1018
ROUTE_NOT_FOUND = 8001
ERROR_MIN = 8000
GR_RECOVERY = "Graceful restart recovery in progress"  # a line of `show status` (BIRD 2.0)


_PROTOCOL = re.compile(
    r"^(?P<name>\S+)\s+(?P<proto>\S+)\s+(?P<table>\S+)\s+(?P<state>\S+)\s+"
    r"(?P<since>\d{4}-\d\d-\d\d \S+|\S+)\s*(?P<info>.*)$"
)
_ROUTE = re.compile(r"^(?P<prefix>\S+)?\s+\S+ \[(?P<proto>\S+) [^\]]*\](?P<primary> \*)?")
_LARGE_COMMUNITY = re.compile(r"\((\d+), (\d+), (\d+)\)")
_SIZE = re.compile(r"^Total:\s+([\d.]+)\s*(B|kB|MB|GB)\b")
_UNITS = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3}


class BirdError(TransientError, RuntimeError):
    """BIRD cannot be reached or answered what a BIRD never says: it may be restarting."""


class CommandError(BirdError):
    transient = False  # BIRD answered and refused: the same command fails again

    def __init__(self, command: str, code: int, message: str) -> None:
        super().__init__(f"BIRD refused `{command}`: {message} (code {code})")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Line:
    code: int
    text: str


@dataclass(frozen=True)
class Reply:
    lines: tuple[Line, ...]

    @property
    def code(self) -> int:
        return self.lines[-1].code

    @property
    def message(self) -> str:
        return self.lines[-1].text

    def data(self, code: int) -> list[str]:
        return [line.text for line in self.lines if line.code == code]


@dataclass(frozen=True)
class Protocol:
    """One row of `show protocols`."""

    name: str
    proto: str  # BGP, Kernel, Pipe, ...
    table: str
    state: str  # up, start, down, ...
    since: str
    info: str  # for BGP the session state first: Established, Active, Connect, ...

    @property
    def session(self) -> str:
        return self.info.split(maxsplit=1)[0] if self.info else ""


@dataclass
class Route:
    """One path of `show route ... all` (enough for lookups: who announced what, for whom)."""

    table: str
    prefix: str
    protocol: str
    primary: bool
    next_hop: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    large_communities: list[tuple[int, int, int]] = field(default_factory=list)


class BirdClient:
    """One connection to BIRD's control socket. Use as a context manager."""

    def __init__(self, path: Path, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.path = path
        self.timeout = timeout
        self.version = ""
        self.messages: list[str] = []  # asynchronous `+` lines seen while reading replies
        self._sock: socket.socket | None = None
        self._buffer = b""

    def connect(self) -> BirdClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self.path))
        except OSError as exc:
            sock.close()
            reason = exc.strerror or str(exc)
            raise BirdError(f"cannot connect to BIRD at {self.path}: {reason}") from None
        self._sock = sock
        greeting = self._reply("(greeting)")
        if greeting.code != WELCOME:
            self.close()
            raise BirdError(f"{self.path} is not a BIRD control socket: {greeting.message!r}")
        self.version = greeting.message.removesuffix(" ready.")
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buffer = b""

    def __enter__(self) -> BirdClient:
        return self.connect()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def command(self, command: str) -> Reply:
        """Send one command; its reply, or CommandError for an 8xxx/9xxx answer."""
        if self._sock is None:
            raise BirdError("not connected to BIRD")
        if "\n" in command:
            raise BirdError(f"a BIRD command is one line: {command!r}")
        try:
            self._sock.sendall(command.encode() + b"\n")
        except OSError as exc:
            self.close()
            raise BirdError(f"lost BIRD at {self.path}: {exc.strerror or exc}") from None
        reply = self._reply(command)
        if reply.code >= ERROR_MIN:
            raise CommandError(command, reply.code, reply.message)
        return reply

    def configure_check(self, path: Path) -> None:
        """Have the running BIRD parse a config without applying it."""
        reply = self.command(f'configure check "{path}"')
        if reply.code != CONFIG_OK:
            raise BirdError(f"unexpected answer to configure check: {reply.message}")

    def configure(self, path: Path) -> str:
        """Apply a config (BIRD reconfigures protocols whose config changed, restarting as
        little as it can). Returns BIRD's words for the outcome."""
        reply = self.command(f'configure "{path}"')
        if reply.code not in RECONFIGURED:
            raise BirdError(f"BIRD did not reconfigure: {reply.message}")
        return reply.message

    def protocols(self) -> list[Protocol]:
        return parse_protocols(self.command("show protocols"))

    def routes(self, arguments: str = "") -> list[Route]:
        """`show route <arguments> all`; a lookup that finds nothing is an empty list."""
        try:
            reply = self.command(" ".join(["show route", *arguments.split(), "all"]))
        except CommandError as exc:
            if exc.code == ROUTE_NOT_FOUND:
                return []
            raise
        return parse_routes(reply)

    def memory(self) -> int:
        """BIRD's total effective memory use in bytes (`show memory`)."""
        return parse_memory(self.command("show memory"))

    def _reply(self, command: str) -> Reply:
        lines: list[Line] = []
        while True:
            raw = self._readline(command)
            if raw.startswith("+"):
                self.messages.append(raw[1:])
                continue
            if raw.startswith(" ") and lines:
                lines.append(Line(lines[-1].code, raw[1:]))
                continue
            match = _LINE.match(raw)
            if match is None:
                raise BirdError(f"unexpected line from BIRD after `{command}`: {raw!r}")
            lines.append(Line(int(match[1]), match[3]))
            if match[2] == " ":
                return Reply(tuple(lines))

    def _readline(self, command: str) -> str:
        assert self._sock is not None
        while b"\n" not in self._buffer:
            try:
                chunk = self._sock.recv(_RECV)
            except TimeoutError:
                self.close()
                raise BirdError(
                    f"BIRD at {self.path} did not answer `{command}` within {self.timeout:g} s"
                ) from None
            except OSError as exc:
                self.close()
                raise BirdError(f"lost BIRD at {self.path}: {exc.strerror or exc}") from None
            if not chunk:
                self.close()
                raise BirdError(f"BIRD at {self.path} closed the connection during `{command}`")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode(errors="replace")


def parse_protocols(reply: Reply) -> list[Protocol]:
    rows = (_PROTOCOL.match(text) for text in reply.data(PROTOCOL_ROW))
    return [Protocol(**{k: v.strip() for k, v in m.groupdict().items()}) for m in rows if m]


def parse_routes(reply: Reply) -> list[Route]:
    routes: list[Route] = []
    table, prefix = "", ""
    for line in reply.lines:
        text = line.text
        if line.code == ROUTE_ROW and text.startswith("Table "):
            table = text.removeprefix("Table ").rstrip(":")
        elif line.code == ROUTE_ROW and (match := _ROUTE.match(text)):
            prefix = match["prefix"] or prefix  # further paths of a prefix leave it blank
            routes.append(Route(table, prefix, match["proto"], bool(match["primary"])))
        elif line.code == ROUTE_ATTRIBUTE and routes:
            name, _, value = text.strip().partition(": ")
            if name == "BGP.next_hop":
                routes[-1].next_hop = ipaddress.ip_address(value.split()[0])
            elif name == "BGP.large_community":
                routes[-1].large_communities = [
                    (int(a), int(b), int(c)) for a, b, c in _LARGE_COMMUNITY.findall(value)
                ]
    return routes


def parse_memory(reply: Reply) -> int:
    for text in reply.data(MEMORY_ROW):
        if match := _SIZE.match(text):
            return int(float(match[1]) * _UNITS[match[2]])
    raise BirdError("no total in BIRD's `show memory`")
