"""Reading and merging the layers of configuration, remembering which layer set each field.

Precedence, lowest first: the host file, conf.d/*.toml in name order, ROUTED_NV_* variables.
Tables merge key by key; any other value (including an array) is replaced whole by a later layer.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


class SourceError(Exception):
    """A layer could not be read or parsed."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(f"{source}: {message}")
        self.source = source
        self.message = message


def read_toml(path: Path, shown_as: str) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SourceError(shown_as, "no such file") from None
    except PermissionError:
        raise SourceError(shown_as, "permission denied") from None
    except IsADirectoryError:
        raise SourceError(shown_as, "is a directory, not a TOML file") from None
    except tomllib.TOMLDecodeError as exc:
        raise SourceError(shown_as, f"not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise SourceError(shown_as, "not UTF-8 text") from None


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
        layers.append((f"environment {name}", value))
    return layers


def _env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw
