"""Endpoints added at run time (`routed-nv endpoint add|del`): a drop-in routed_nv owns.

routed_nv never rewrites a file that the configuration tool owns. Run-time endpoints live in
their own drop-in, conf.d/90-routed-nv-runtime.toml beside the host file, so the ordinary loader
merges them (`config check`, `apply` and the agent all see them) and the configuration tool can
leave the file alone. A change is validated together with every other layer before it replaces
the file (atomically), so an invalid endpoint never reaches the agent.
"""

from __future__ import annotations

import contextlib
import os
import tomllib
from pathlib import Path
from typing import Any

from routed_nv.config.loader import DROP_IN_DIR, ConfigError, default_path, load_config
from routed_nv.config.model import Config
from routed_nv.config.writer import tables_to_toml

RUNTIME_DROP_IN = "90-routed-nv-runtime.toml"
HEADER = (
    "# Written by `routed-nv endpoint add|del`; edit with those commands, not by hand.\n"
    "# The configuration tool's files are never rewritten: this is routed_nv's own drop-in.\n"
)


class Refused(ValueError):
    """The change is refused; problems lists one line per reason."""

    def __init__(self, problems: list[str], not_found: bool = False) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.not_found = not_found


def drop_in_path(config_path: Path | None) -> Path:
    return (config_path or default_path()).parent / DROP_IN_DIR / RUNTIME_DROP_IN


def runtime_endpoints(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    with path.open("rb") as fh:
        return dict(tomllib.load(fh).get("endpoints", {}))


def add(config_path: Path | None, name: str, entry: dict[str, Any]) -> tuple[str, Config]:
    """Add (or replace) a run-time endpoint; returns ("added" | "replaced", the new config)."""
    path = drop_in_path(config_path)
    ours = runtime_endpoints(path)
    config = _load(config_path)
    if name in config.endpoints and name not in ours:
        raise Refused(
            [
                f"endpoint {name} is defined in the configuration files; routed-nv endpoint add "
                f"only manages {path}"
            ]
        )
    verb = "replaced" if name in ours else "added"
    return verb, _write(config_path, path, {**ours, name: entry})


def delete(config_path: Path | None, name: str) -> Config:
    path = drop_in_path(config_path)
    ours = runtime_endpoints(path)
    if name not in ours:
        config = _load(config_path)
        if name in config.endpoints:
            raise Refused(
                [
                    f"endpoint {name} is defined in the configuration files, not by routed-nv "
                    "endpoint add: remove it there"
                ]
            )
        raise Refused([f"no endpoint {name}"], not_found=True)
    return _write(config_path, path, {k: v for k, v in ours.items() if k != name})


def _load(config_path: Path | None, substitute: tuple[str, Path] | None = None) -> Config:
    try:
        return load_config(config_path, substitute=substitute)
    except ConfigError as exc:
        raise Refused([str(p) for p in exc.problems]) from None


def _write(config_path: Path | None, path: Path, endpoints: dict[str, Any]) -> Config:
    """Validate the whole configuration with the new drop-in, then put it in place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # not *.toml: the loader must not pick a half-written file up
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = HEADER + tables_to_toml({"endpoints": endpoints}) if endpoints else HEADER
    try:
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        config = _load(config_path, substitute=(RUNTIME_DROP_IN, tmp))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return config
