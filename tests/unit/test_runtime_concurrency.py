"""Concurrent `routed-nv endpoint add|del`, as real processes: none loses another's change.

No agent runs: the run-time drop-in is the store, and the commands only find no control socket.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from routed_nv.agent import runtime

EXAMPLES = Path(__file__).resolve().parents[2] / "configs"
CHANGES = 50  # half of them add, half delete, all at once


def test_fifty_concurrent_adds_and_deletes_all_take_effect(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    shutil.copytree(EXAMPLES, etc)
    config = etc / "routed-nv.toml"
    half = CHANGES // 2
    for i in range(half):
        runtime.add(config, f"old{i}", _entry(100 + i, f"old{i}"))
    env = {"PATH": os.environ["PATH"]}
    common = ["-c", str(config), "--run-dir", str(tmp_path / "run")]
    adds = [
        ["endpoint", "add", f"new{i}", "--tenant=blue", f"--address=10.0.0.{150 + i}", "--netns"]
        for i in range(half)
    ]
    commands = [
        *([*add, add[2], *common] for add in adds),
        *(["endpoint", "del", f"old{i}", *common] for i in range(half)),
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "routed_nv", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    failed = [(args, r) for args, r in zip(commands, results, strict=True) if r[0] != 0]
    assert not failed, failed
    drop_in = runtime.drop_in_path(config)
    assert sorted(runtime.runtime_endpoints(drop_in)) == sorted(f"new{i}" for i in range(half))
    # nothing half-written is left behind, and only the lock beside the file
    assert sorted(p.name for p in drop_in.parent.iterdir() if p.name.startswith(".")) == [
        f".{runtime.RUNTIME_DROP_IN}.lock"
    ]


def _entry(host: int, netns: str) -> dict[str, object]:
    return {"tenant": "blue", "addresses": [f"10.0.0.{host}"], "netns": netns, "style": "host"}
