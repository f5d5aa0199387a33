"""Reading and merging the layers of configuration, remembering which layer set each field.

Precedence, lowest first: the host file, conf.d/*.toml in name order, ROUTED_NV_* variables.
Tables merge key by key; any other value (including an array) is replaced whole by a later layer.
"""

from __future__ import annotations

import os
import stat
import threading
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from routed_nv.errors import RoutedNvError

ENV_PREFIX = "ROUTED_NV_"
ENV_SEPARATOR = "__"

Loc = tuple[str, ...]


@dataclass
class Layered:
    """The merged document and, for every key path, the layer that set it last."""

    data: dict[str, Any] = field(default_factory=dict)
    origin: dict[Loc, str] = field(default_factory=dict)

    def merge(self, layer: Mapping[str, Any], source: str) -> None:
        _merge(self.data, layer, (), source, self.origin)

    def source_of(self, loc: Loc, default: str) -> str:
        """The layer that set loc, or the closest enclosing table that a layer set."""
        for end in range(len(loc), 0, -1):
            if loc[:end] in self.origin:
                return self.origin[loc[:end]]
        return default


def _merge(
    into: dict[str, Any], layer: Mapping[str, Any], at: Loc, source: str, origin: dict[Loc, str]
) -> None:
    for key, value in layer.items():
        loc = (*at, key)
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value, loc, source, origin)
            continue
        into[key] = _plain(value)
        origin[loc] = source
        _mark_all(value, loc, source, origin)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _mark_all(value: Any, loc: Loc, source: str, origin: dict[Loc, str]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            origin[(*loc, key)] = source
            _mark_all(inner, (*loc, key), source, origin)


class SourceError(RoutedNvError):
    """A layer could not be read or parsed."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.message = message


# A layer is a regular file of at most this size: /dev/zero, a FIFO or a mistyped path to a
# disk image must fail at once instead of hanging; 16 MiB holds about 100,000 endpoints.
MAX_FILE_BYTES = 16 * 1024 * 1024
# No setting nests deeper than a few tables and arrays; a bound keeps pathological documents
# (`a = [[[[...]]]]`) out of the recursive merge and validation.
MAX_DEPTH = 32
TOO_DEEP = f"tables and arrays nest deeper than {MAX_DEPTH} levels"


# Parsed files by (device, inode) -> (mtime_ns, size, data): the agent validates the whole
# configuration at every endpoint API change, and parsing a run-time drop-in of 1,000 endpoints
# took longer than everything else (docs/agent.md, "Local endpoints at scale"). A file replaced
# by rename is a new inode, an edit in place changes the mtime; callers must not mutate the data.
# Like git's racily clean index entries: a file read within RACY_NS of its mtime may be edited
# again in place within the same timestamp tick (the kernel's clock is coarse), so it is not kept.
_PARSED: dict[tuple[int, int], tuple[int, int, dict[str, Any]]] = {}
_PARSED_MAX = 64
_PARSED_LOCK = threading.Lock()
RACY_NS = 2_000_000_000


def read_toml(path: Path, shown_as: str) -> dict[str, Any]:
    text, st, known = _read(path, shown_as, MAX_FILE_BYTES, cached=True)
    if known is not None:
        return known
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SourceError(shown_as, f"not valid TOML: {exc}") from None
    except RecursionError:
        raise SourceError(shown_as, TOO_DEEP) from None
    check_depth(data, shown_as)
    if time.time_ns() - st.st_mtime_ns > RACY_NS:
        _remember(st, data)
    return data


def remember_parsed(fd: int, data: dict[str, Any]) -> None:
    """`data` is what the file open as `fd` holds (its writer just wrote it from `data`): the
    next read_toml of it, under any name, need not parse it again."""
    _remember(os.fstat(fd), data)


def _remember(st: os.stat_result, data: dict[str, Any]) -> None:
    with _PARSED_LOCK:  # the agent's control threads load configurations concurrently
        if len(_PARSED) >= _PARSED_MAX:
            del _PARSED[next(iter(_PARSED))]
        _PARSED[(st.st_dev, st.st_ino)] = (st.st_mtime_ns, st.st_size, data)


def read_regular_file(path: Path, shown_as: str, limit: int) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes; SourceError otherwise."""
    return _read(path, shown_as, limit, cached=False)[0]


def _read(
    path: Path, shown_as: str, limit: int, cached: bool
) -> tuple[str, os.stat_result, dict[str, Any] | None]:
    """The text and status of the file; with `cached`, the parsed data instead of the text
    when _PARSED holds this very version of it (the status is the open file's, so a file
    replaced meanwhile is not mixed up with the one read)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SourceError(shown_as, "no such file") from None
    except PermissionError:
        raise SourceError(shown_as, "permission denied") from None
    except OSError as exc:
        raise SourceError(shown_as, f"cannot open: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise SourceError(shown_as, "is a directory, not a TOML file")
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(
                shown_as,
                f"is a {file_kind(st.st_mode)}: only regular files are read as configuration",
            )
        known = _PARSED.get((st.st_dev, st.st_ino))
        if cached and known is not None and known[:2] == (st.st_mtime_ns, st.st_size):
            return "", st, known[2]
        try:
            data = fh.read(limit + 1)
        except OSError as exc:
            raise SourceError(shown_as, f"cannot read: {exc.strerror}") from None
    if len(data) > limit:
        raise SourceError(shown_as, f"is larger than the limit of {limit // 2**20} MiB")
    try:
        return data.decode(), st, None
    except UnicodeDecodeError:
        raise SourceError(shown_as, "not UTF-8 text") from None


def file_kind(mode: int) -> str:
    kinds = {
        stat.S_IFCHR: "character device",
        stat.S_IFBLK: "block device",
        stat.S_IFIFO: "FIFO",
        stat.S_IFSOCK: "socket",
        stat.S_IFDIR: "directory",
    }
    return kinds.get(stat.S_IFMT(mode), "special file")


def check_depth(data: Any, shown_as: str) -> None:
    """SourceError when tables and arrays nest deeper than MAX_DEPTH (iterative: no recursion)."""
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SourceError(shown_as, TOO_DEEP)
        inner = value.values() if isinstance(value, dict) else value
        stack.extend((v, depth + 1) for v in inner if isinstance(v, dict | list))


def env_layers(env: Mapping[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """ROUTED_NV_SECTION__KEY[__KEY...]=VALUE, one layer per variable, in name order.

    The value is read as a TOML value when it parses as one (3, true, ["a", "b"]), else as a
    string, so ROUTED_NV_HOST__NAME=host7 needs no quotes. Variables without the double
    underscore (ROUTED_NV_CONFIG, ...) are not overrides.
    """
    layers = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX) or ENV_SEPARATOR not in name:
            continue
        path = [part.lower() for part in name.removeprefix(ENV_PREFIX).split(ENV_SEPARATOR)]
        if not all(path):
            raise SourceError(f"environment {name}", "empty name segment")
        value: Any = _env_value(env[name])
        for key in reversed(path):
            value = {key: value}
        check_depth(value, f"environment {name}")
        layers.append((f"environment {name}", value))
    return layers


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        return raw
