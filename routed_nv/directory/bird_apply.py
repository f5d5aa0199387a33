"""Bring the running BIRD to the config rendered from routed_nv's Config.

Order: render, connect, parse with `bird -p` (no daemon needed), `configure check` by the
running BIRD (its own version and state), then replace the file and `configure`. A config BIRD
rejects never replaces the one it runs, and one syntax error cannot take down every session. An
unchanged config is not reapplied, so the agent may call this on every reconcile pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from routed_nv.config.model import Config
from routed_nv.directory import bird_config
from routed_nv.directory.birdc import BirdClient


@dataclass(frozen=True)
class Applied:
    changed: bool
    message: str  # BIRD's words, or why nothing was done


def apply(config: Config, path: Path, log: Path | None = None) -> Applied:
    """Render the host's bird.conf into `path` and have the BIRD at directory.bird_socket load
    it. Raises BirdConfigError or BirdError with a message for people."""
    password = bird_config.read_password(config.directory.password_file)
    text = bird_config.render_host(config, password, log, version=bird_config.installed_version())
    if path.exists() and path.read_text() == text:
        return Applied(False, "unchanged")
    candidate = path.with_name(f"{path.name}.new")
    # connect first: the agent retries while BIRD is not up yet (it starts after the agent's
    # first apply), and each retry would otherwise fork `bird -p` for nothing
    with BirdClient(config.directory.bird_socket) as bird:
        bird_config.write_private(candidate, text)
        bird_config.check(candidate)
        bird.configure_check(candidate)
        candidate.replace(path)
        return Applied(True, bird.configure(path))
