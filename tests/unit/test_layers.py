"""The layers of README's Layout, held by import-linter's contracts (pyproject.toml): checked here
and by .ci/run, so an import across a layer fails the tests, not a later review."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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
    assert "7 kept, 0 broken." in done.stdout


def test_an_import_across_a_layer_is_refused(tmp_path: Path) -> None:
    shutil.copytree(
        ROOT / "routed_nv", tmp_path / "routed_nv", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    calc = tmp_path / "routed_nv" / "calc" / "routing.py"
    calc.write_text(calc.read_text() + "\nfrom routed_nv.routing import netlink  # noqa\n")
    done = lint(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Calculation is pure: no driver, adapter or agent BROKEN" in done.stdout
    assert "routed_nv.calc.routing -> routed_nv.routing.netlink" in done.stdout
