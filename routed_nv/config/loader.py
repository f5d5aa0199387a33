"""Loading a host's configuration: layers -> typed Config, or every problem at once.

Each problem names the file (or environment variable) that set the field, the field's dotted
path and the offending value, e.g.
    conf.d/tenants.toml: tenants.blue.id: 70000 is out of range 1..65535
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from routed_nv.config import crosscheck, files, kernel
from routed_nv.config.model import Config
from routed_nv.config.sources import Layered, Loc, SourceError, env_layers, read_toml
from routed_nv.doctor import kernel_facts
from routed_nv.errors import RoutedNvError

DEFAULT_PATH = Path("/etc/routed-nv/routed-nv.toml")
CONFIG_ENV = "ROUTED_NV_CONFIG"
DROP_IN_DIR = "conf.d"
NO_HOST_FILE = (
    f"no such file; name the host file with -c/--config or ${CONFIG_ENV} (default {DEFAULT_PATH})"
)


@dataclass(frozen=True)
class Problem:
    source: str
    field: str  # dotted path, empty for a whole-file problem
    value: Any
    message: str

    def __str__(self) -> str:
        # every part may echo input: a 100 kB name must not become 200 kB of output, and a key
        # with a newline or another control character must not break the one line
        source, field, message = _clean(self.source), _clean(self.field), _clean(self.message, 400)
        if not field:
            return f"{source}: {message}"
        if self.value is None:  # TOML has no null: None means "no value to show"
            return f"{source}: {field}: {message}"
        return f"{source}: {field}: {_clean(_show(self.value))} {message}"


class ConfigError(RoutedNvError):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def default_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get(CONFIG_ENV, str(DEFAULT_PATH)))


def load_config(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    drop_in_dir: Path | None = None,
    substitute: tuple[str, Path] | None = None,
    check_files: bool = False,
) -> Config:
    """Load the host file, its conf.d drop-ins and the environment overrides.

    drop_in_dir defaults to conf.d beside the host file, which may then be absent (a host with
    a single file); a drop_in_dir given explicitly must exist. substitute=(name, file) reads
    `file` in place of the drop-in `name` (or in addition, if there is none), which lets
    configuration tools validate a drop-in before installing it. check_files also checks the
    files the configuration names (keys, certificates, the BGP password file).
    """
    env = os.environ if env is None else env
    path = path or default_path(env)
    base = path.parent
    layered = Layered()
    problems: list[Problem] = []
    try:
        drop_ins = _drop_ins(drop_in_dir or base / DROP_IN_DIR, required=drop_in_dir is not None)
    except SourceError as exc:
        problems.append(Problem(exc.source, "", None, exc.message))
        drop_ins = []
    for shown, file in _files(path, drop_ins, drop_in_dir or base / DROP_IN_DIR, substitute):
        try:
            layered.merge(read_toml(file, _display(shown, base)), _display(shown, base))
        except SourceError as exc:
            problems.append(Problem(exc.source, "", None, exc.message))
            if file is path and not os.path.lexists(path):
                # the commonest first mistake: say which file was looked for and how to name it
                problems[-1] = Problem(str(path.absolute()), "", None, NO_HOST_FILE)
    try:
        for source, layer in env_layers(env):
            layered.merge(layer, source)
    except SourceError as exc:
        problems.append(Problem(exc.source, "", None, exc.message))
    if problems:
        raise ConfigError(problems)
    return validate(layered, _display(path, base), check_files)


def validate(layered: Layered, main_source: str, check_files: bool = False) -> Config:
    try:
        config = Config.model_validate(layered.data)
    except ValidationError as exc:
        raise ConfigError(
            [_problem(layered, main_source, err) for err in exc.errors(include_url=False)]
        ) from None
    found = [
        Problem(layered.source_of(_keys(loc), main_source), dotted(loc), value, message)
        for loc, value, message in [
            *crosscheck.problems(config),
            *(files.problems(config) if check_files else ()),
            *(kernel.problems(config, kernel_facts) if check_files else ()),
        ]
    ]
    if found:
        raise ConfigError(found)
    return config


def _drop_ins(drop_in_dir: Path, required: bool) -> list[Path]:
    """The *.toml files in drop_in_dir; SourceError when it cannot be listed (or, if required,
    does not exist): a drop-in directory nobody can read must not look like an empty one."""
    shown = str(drop_in_dir)
    try:
        names = os.listdir(drop_in_dir)
    except FileNotFoundError:
        if required:
            raise SourceError(shown, "no such drop-in directory") from None
        return []
    except OSError as exc:  # not a directory, permission denied, ...
        raise SourceError(shown, f"cannot list the drop-ins: {exc.strerror}") from None
    return [drop_in_dir / n for n in names if fnmatch.fnmatch(n, "*.toml")]


def _files(
    path: Path, found: list[Path], drop_in_dir: Path, substitute: tuple[str, Path] | None
) -> list[tuple[Path, Path]]:
    """(name shown in messages, file to read) for every layer file, in precedence order."""
    drop_ins = {p.name: p for p in found}
    shown = dict(drop_ins)
    if substitute is not None:
        name, file = substitute
        drop_ins[name] = file
        shown[name] = drop_in_dir / name
    return [(path, path)] + [(shown[n], drop_ins[n]) for n in sorted(drop_ins)]


def _display(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _problem(layered: Layered, main_source: str, err: Mapping[str, Any]) -> Problem:
    kind = err["type"]
    loc = _data_loc(layered.data, err["loc"])
    if kind == "missing":  # a missing key is, by definition, not in the document
        loc = (*loc, err["loc"][-1])
    message = str(err["msg"]).removeprefix("Value error, ")
    source = layered.source_of(_keys(loc), main_source)
    if kind == "missing":
        return Problem(source, dotted(loc), None, "is required")
    if kind == "extra_forbidden":
        return Problem(source, dotted(loc), None, "is not a known setting")
    return Problem(source, dotted(loc), err.get("input"), message[:1].lower() + message[1:])


def dotted(loc: tuple[str | int, ...]) -> str:
    """tenants.blue.ipv4[0]: table keys joined by dots, array indices in brackets."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _keys(loc: tuple[str | int, ...]) -> Loc:
    """The table-key part of a location: provenance is tracked per key, not per array item."""
    keys: list[str] = []
    for part in loc:
        if isinstance(part, int):
            break
        keys.append(part)
    return tuple(keys)


def _data_loc(data: Any, loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """The part of a pydantic location that exists in the document.

    pydantic also puts tags into locations (the union member tried, `[key]` for a dict key's
    own error); walking the document keeps real keys and indices and drops the tags.
    """
    kept: list[str | int] = []
    for part in loc:
        in_table = isinstance(data, dict) and part in data
        in_array = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        if in_table or in_array:
            data = data[part]
            kept.append(part)
    return tuple(kept)


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


SHORT = 120


def _clean(text: str, limit: int = SHORT) -> str:
    printable = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return shorten(printable, limit)


def shorten(text: str, limit: int = SHORT) -> str:
    """text, or its start and end around a note of how much was left out."""
    if len(text) <= limit:
        return text
    keep = limit // 2
    return f"{text[:keep]}...[{len(text) - 2 * keep} characters]...{text[-keep:]}"
