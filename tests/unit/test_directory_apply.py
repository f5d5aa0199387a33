"""bird_apply: check before load, nothing reapplied when unchanged, rejected configs never land."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import pytest
from test_bird_config import config

from routed_nv.directory import bird_apply, bird_config
from routed_nv.directory.bird_config import BirdConfigError


class FakeClient:
    calls: ClassVar[list[str]] = []

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def configure_check(self, path: Path) -> None:
        self.calls.append(f"check {path.name}")

    def configure(self, path: Path) -> str:
        self.calls.append(f"configure {path.name}")
        return "Reconfigured"


@pytest.fixture(autouse=True)
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeClient.calls = []
    monkeypatch.setattr(bird_apply, "BirdClient", FakeClient)
    monkeypatch.setattr(bird_config, "check", lambda path: FakeClient.calls.append("parse"))


def test_first_apply_parses_checks_then_configures(tmp_path: Path) -> None:
    path = tmp_path / "bird.conf"
    applied = bird_apply.apply(config(), path)
    assert applied.changed and applied.message == "Reconfigured"
    assert FakeClient.calls == ["parse", "check bird.conf.new", "configure bird.conf"]
    version = bird_config.installed_version()
    assert path.read_text() == bird_config.render_host(config(), None, version=version)


def test_unchanged_config_is_not_reapplied(tmp_path: Path) -> None:
    path = tmp_path / "bird.conf"
    bird_apply.apply(config(), path)
    FakeClient.calls = []
    assert not bird_apply.apply(config(), path).changed
    assert FakeClient.calls == []


def test_a_rejected_config_never_replaces_the_running_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bird.conf"
    path.write_text("old")

    def reject(path: Path) -> None:
        raise BirdConfigError("BIRD rejects it")

    monkeypatch.setattr(bird_config, "check", reject)
    with pytest.raises(BirdConfigError):
        bird_apply.apply(config(), path)
    assert path.read_text() == "old"
    assert FakeClient.calls == []
