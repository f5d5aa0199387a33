"""The layers of README's Layout, held by import-linter's contracts (pyproject.toml): checked here
and by .ci/run, so an import across a layer fails the tests, not a later review."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_project_keeps_its_layers() -> None:
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "12 kept, 0 broken." in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        (
            "calc/routing.py",
            "from routed_nv.routing import netlink",
            "Calculation imports only the model, the config and errors, and reads no files",
        ),
        (
            "calc/xfrm.py",
            "from routed_nv.esp import keys",
            "Calculation imports only the model, the config and errors, and reads no files",
        ),
        (
            "model/xfrm.py",
            "from routed_nv.config import model",
            "The model is the bottom: it imports only itself and routed_nv.errors",
        ),
        (
            "esp/driver.py",
            "from routed_nv.calc import xfrm",
            "Drivers import only the model, errors, netns and their own package",
        ),
        (
            "netfilter/driver.py",
            "from routed_nv.routing import driver",
            "Each driver keeps to its own package",
        ),
    ],
)
def test_an_import_across_a_layer_is_refused(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    shutil.copytree(
        ROOT / "routed_nv", tmp_path / "routed_nv", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    source = tmp_path / "routed_nv" / module
    source.write_text(source.read_text() + f"\n{line}  # noqa\n")
    done = lint(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    text = " ".join(done.stdout.split())  # lint-imports wraps long contract names
    assert re.search(re.escape(contract) + r"( \(\d+ ignored imports?\))? BROKEN", text), text
    importer = "routed_nv." + module.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> {line.split()[1]}" in done.stdout


# What each "only" contract allows, besides its own package: every other top-level module of
# routed_nv must be in its forbidden list.
ALLOWED = {
    "The model is the bottom: it imports only itself and routed_nv.errors": {"errors"},
    "Calculation imports only the model, the config and errors, and reads no files": {
        "model",
        "config",
        "errors",
    },
    # driver to driver: the independence contract
    "Drivers import only the model, errors, netns and their own package": {
        "model",
        "errors",
        "netns",
        "routing",
        "esp",
        "netfilter",
        "directory",
    },
    "The directory imports only the model, errors, netns, the config and its own package": {
        "model",
        "errors",
        "netns",
        "config",
        "routing",
        "esp",
        "netfilter",
    },
}


def test_the_only_contracts_name_every_other_package() -> None:
    package = ROOT / "routed_nv"
    top = {
        p.stem if p.suffix == ".py" else p.name
        for p in package.iterdir()
        if (p.suffix == ".py" and not p.name.startswith("__")) or (p / "__init__.py").exists()
    }
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    only = {c["name"]: c for c in contracts["contracts"] if " only " in c["name"]}
    assert only.keys() == ALLOWED.keys()
    for name, contract in only.items():
        named = {
            m.split(".")[1] for m in contract["forbidden_modules"] if m.startswith("routed_nv")
        }
        own = {m.split(".")[1] for m in contract["source_modules"]}
        assert top - named - own - ALLOWED[name] == set(), name
