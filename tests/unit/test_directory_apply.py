"""bird_apply: check before load, nothing reapplied when unchanged, rejected configs never land."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_bird_config import config

from routed_nv.directory import bird_apply, bird_config
from routed_nv.directory.bird_config import BirdConfigError
from routed_nv.directory.birdc import BirdClient, BirdError
from tests.fakes import FakeReconfigureClient


@pytest.fixture(autouse=True)
def fakes(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeReconfigureClient.calls = []
    monkeypatch.setattr(bird_apply, "BirdClient", FakeReconfigureClient)
    monkeypatch.setattr(
        bird_config, "check", lambda path: FakeReconfigureClient.calls.append("parse")
    )


def test_first_apply_parses_checks_then_configures(tmp_path: Path) -> None:
    path = tmp_path / "bird.conf"
    applied = bird_apply.apply(config(), path)
    assert applied.changed and applied.message == "Reconfigured"
    assert FakeReconfigureClient.calls == ["parse", "check bird.conf.new", "configure bird.conf"]
    version = bird_config.installed_version()
    assert path.read_text() == bird_config.render_host(config(), None, version=version)


def test_unchanged_config_is_not_reapplied(tmp_path: Path) -> None:
    path = tmp_path / "bird.conf"
    bird_apply.apply(config(), path)
    FakeReconfigureClient.calls = []
    assert not bird_apply.apply(config(), path).changed
    assert FakeReconfigureClient.calls == []


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
    assert FakeReconfigureClient.calls == []


def test_bird_not_running_costs_no_parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent retries the config every poll until BIRD is up: no `bird -p` per retry."""
    monkeypatch.setattr(bird_apply, "BirdClient", BirdClient)
    absent = config().directory.model_copy(update={"bird_socket": tmp_path / "bird.ctl"})
    with pytest.raises(BirdError, match="cannot connect"):
        bird_apply.apply(config().model_copy(update={"directory": absent}), tmp_path / "bird.conf")
    assert FakeReconfigureClient.calls == []  # not parsed
    assert not (tmp_path / "bird.conf").exists()
