"""Endpoints added at run time (`routed-nv endpoint add|del`): a drop-in routed_nv owns.

routed_nv never rewrites a file that the configuration tool owns. Run-time endpoints live in
their own drop-in, conf.d/90-routed-nv-runtime.toml beside the host file, so the ordinary loader
merges them (`config check`, `apply` and the agent all see them) and the configuration tool can
leave the file alone. A change is validated together with every other layer before it replaces
the file, so an invalid endpoint never reaches the agent. Every change runs under an flock and
replaces the file atomically (write, fsync, rename, fsync the directory), so concurrent
`endpoint add|del` never lose one another's update.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from routed_nv.config.loader import DROP_IN_DIR, ConfigError, default_path, load_config
from routed_nv.config.model import Config, EndpointStyle
from routed_nv.config.sources import SourceError, read_toml, remember_parsed
from routed_nv.config.writer import tables_to_toml
from routed_nv.errors import RoutedNvError

RUNTIME_DROP_IN = "90-routed-nv-runtime.toml"
HEADER = (
    "# Written by `routed-nv endpoint add|del`; edit with those commands, not by hand.\n"
    "# The configuration tool's files are never rewritten: this is routed_nv's own drop-in.\n"
)


LOCK_TIMEOUT_S = 30  # a change takes well under a second; a hung holder must not hang us all


class Refused(RoutedNvError, ValueError):
    """The change is refused; problems lists one line per reason. `code` is the control
    socket's: bad-request (invalid), conflict (the id exists with other fields, or the
    configuration files own it)."""

    def __init__(self, problems: list[str], code: str = "bad-request") -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.code = code


def drop_in_path(config_path: Path | None) -> Path:
    return (config_path or default_path()).parent / DROP_IN_DIR / RUNTIME_DROP_IN


def runtime_endpoints(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return dict(read_toml(path, str(path)).get("endpoints", {}))
    except SourceError as exc:
        raise Refused([f"{exc.source}: {exc.message}"]) from None


Check = Callable[[Config], None]  # raises Refused: the caller cannot take this config


def add(
    config_path: Path | None,
    name: str,
    entry: dict[str, Any],
    replace: bool = False,
    check: Check | None = None,
) -> tuple[str, Config | None]:
    """Add a run-time endpoint, idempotent by name: ("added" | "replaced", the new config), or
    ("unchanged", None) when the drop-in already has exactly this entry. The same name with
    other fields is a conflict unless `replace`."""
    entry = {"style": EndpointStyle.HOST.value, **entry}
    path = drop_in_path(config_path)
    with _locked(path):
        ours = runtime_endpoints(path)
        if name in ours:
            if ours[name] == entry:
                return "unchanged", None
            if not replace:
                raise Refused(
                    [
                        f"endpoint {name} exists with other fields ({_differ(ours[name], entry)}); "
                        "delete it first or replace it"
                    ],
                    "conflict",
                )
        elif name in load(config_path).endpoints:
            raise Refused(
                [
                    f"endpoint {name} is defined in the configuration files; routed-nv endpoint "
                    f"add only manages {path}"
                ],
                "conflict",
            )
        verb = "replaced" if name in ours else "added"
        return verb, _write(config_path, path, {**ours, name: entry}, check)


def delete(
    config_path: Path | None, name: str, check: Check | None = None
) -> tuple[str, Config | None]:
    """Remove a run-time endpoint: ("deleted", the new config), or ("absent", None)."""
    path = drop_in_path(config_path)
    with _locked(path):
        ours = runtime_endpoints(path)
        if name not in ours:
            if name in load(config_path).endpoints:
                raise Refused(
                    [
                        f"endpoint {name} is defined in the configuration files, not by "
                        "routed-nv endpoint add: remove it there"
                    ],
                    "conflict",
                )
            return "absent", None
        rest = {k: v for k, v in ours.items() if k != name}
        return "deleted", _write(config_path, path, rest, check)


def _differ(old: dict[str, Any], new: dict[str, Any]) -> str:
    fields = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} != {new.get(k)!r}" for k in fields)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the drop-in's lock: each change reads, validates and replaces the file while no
    other `endpoint add|del` can, so concurrent changes all take effect, one after the other."""
    lock = path.with_name(f".{path.name}.lock")  # not *.toml: the loader ignores it
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise _unwritable(lock, exc) from None
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise Refused(
                        [
                            f"{lock}: another change held the lock for {LOCK_TIMEOUT_S} s; "
                            "nothing changed"
                        ]
                    ) from None
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)  # releases the lock


def load(config_path: Path | None, substitute: tuple[str, Path] | None = None) -> Config:
    try:
        return load_config(config_path, substitute=substitute)
    except ConfigError as exc:
        raise Refused([str(p) for p in exc.problems]) from None


def _write(
    config_path: Path | None, path: Path, endpoints: dict[str, Any], check: Check | None
) -> Config:
    """Validate the whole configuration with the new drop-in, then put it in place atomically:
    a crash leaves the old file or the new one, never a torn one."""
    # not *.toml: the loader must not pick a half-written file up
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = {"endpoints": endpoints} if endpoints else {}
    text = HEADER + tables_to_toml(data) if endpoints else HEADER
    try:
        with open(tmp, "w") as fh:
            os.fchmod(fh.fileno(), 0o644)
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
            # the loader below (and every later read of the renamed file) need not parse the
            # text again: at 1,000 endpoints that was most of a change's cost
            remember_parsed(fh.fileno(), data)
        config = load(config_path, substitute=(RUNTIME_DROP_IN, tmp))
        if check is not None:
            check(config)
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # the rename itself survives a crash
    except OSError as exc:
        raise _unwritable(path, exc) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return config


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unwritable(path: Path, exc: OSError) -> Refused:
    return Refused([f"{path}: cannot write the run-time drop-in: {exc.strerror}; nothing changed"])
