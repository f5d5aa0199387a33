"""Writing a Config back as TOML, for files routed_nv itself owns (lab hosts, runtime drop-ins).

The only module that imports tomli_w. Files that a configuration tool owns are never rewritten.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tomli_w

from routed_nv.config.model import Config


def to_toml(config: Config) -> str:
    # mode="json" turns addresses, networks, paths and enums into the strings the loader reads;
    # TOML has no null, and every None in the model is also its default, so leaving it out is exact
    return tables_to_toml(config.model_dump(mode="json", exclude_none=True))


def tables_to_toml(data: Mapping[str, Any]) -> str:
    """A part of a configuration (a drop-in's tables) as TOML."""
    return tomli_w.dumps(data)
