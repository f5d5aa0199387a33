"""Kernel tests run themselves inside user-mode-linux when this kernel cannot carry the datapath.

Tests marked `@pytest.mark.kernel` need ESP, VRF, ip6_tunnel and GCM. When some are selected,
this kernel lacks them (`routed-nv doctor`) and we are not already the guest, the first of them
to come up boots the guests (one per CPU, at most two: routed_nv/lab/shards.py, whole modules
each; ROUTED_NV_UML_GUESTS overrides) that run pytest sessions over exactly those node ids, with
their output streamed live. Each guest's `routed_nv.lab.guest_report` plugin writes every phase's
outcome and failure text to .rnv-lab/; each kernel test is then reported here with its real guest
outcome, without running any host-side fixture for it. If a guest times out or crashes, every
kernel test of it without a result fails with that reason. Other tests run normally on the host.
ROUTED_NV_UML_MEM and ROUTED_NV_UML_TIMEOUT (seconds) size each guest; the defaults fit the whole
kernel suite (BIRD, charon and many namespaces) inside CI's 90 minutes. The seconds each module
took are written to .rnv-lab/guest-seconds.json (copy it to tests/lab/ to rebalance).
"""

from __future__ import annotations

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from routed_nv.lab import shards, uml
from routed_nv.lab.guest_report import REPORT_ENV

SUITE_TIMEOUT_S = 3600.0
SUITE_MEM = "1G"
_GUEST_RUN = pytest.StashKey["_GuestRun | None"]()


class _GuestRun:
    def __init__(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        self.config = config
        # In collection order: the file order, and each module's tests as written (a module's
        # later tests may build on its earlier ones, and its docstring says so).
        self.nodeids = [item.nodeid for item in items]
        self.results: dict[str, list[dict[str, Any]]] | None = None
        self.failures: dict[str, str] = {}  # node id -> why its guest gave no result
        self.timeout = float(os.environ.get("ROUTED_NV_UML_TIMEOUT", SUITE_TIMEOUT_S))
        self._reasons = {
            uml.EXIT_TIMEOUT: f"the UML guest timed out after {self.timeout:g} s",
            uml.EXIT_NO_REPORT: "the UML guest crashed or did not report",
        }

    def run(self) -> dict[str, list[dict[str, Any]]]:
        if self.results is not None:
            return self.results
        root = self.config.rootpath
        groups = shards.shards(
            self.nodeids,
            shards.guest_count(os.environ, shards.cpus()),
            shards.load_seconds(root / "tests" / "lab" / "guest_seconds.json"),
        )
        terminal = self.config.pluginmanager.get_plugin("terminalreporter")
        capture = self.config.pluginmanager.get_plugin("capturemanager")
        if terminal is not None:
            terminal.write_sep(
                "-", f"{len(self.nodeids)} kernel tests in {len(groups)} UML guest(s)"
            )
        with capture.global_and_fixture_disabled(), ThreadPoolExecutor(len(groups)) as pool:
            runs = list(pool.map(self._run_guest, range(len(groups)), groups))
        self.results = {}
        for group, (rc, results) in zip(groups, runs, strict=True):
            if terminal is not None:
                terminal.write_sep("-", f"UML guest of {len(group)} tests exited {rc}")
            self.results.update(results)
            reason = self._reasons.get(
                rc, f"no result from the guest pytest session (exit status {rc})"
            )
            self.failures.update(dict.fromkeys(group, reason))
        seconds = root / ".rnv-lab" / "guest-seconds.json"
        seconds.write_text(json.dumps(shards.measured_seconds(self.results), indent=1) + "\n")
        return self.results

    def _run_guest(self, index: int, nodeids: list[str]) -> tuple[int, dict[str, Any]]:
        report = self.config.rootpath / ".rnv-lab" / f"kernel-tests-{os.getpid()}-{index}.json"
        report.parent.mkdir(exist_ok=True)
        report.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "pytest", "-p", "routed_nv.lab.guest_report"]
        argv += ["-p", "no:cacheprovider", "-q", *nodeids]
        # Without pyproject's --durations: the host lists the slowest tests, these included.
        argv += ["-o", "addopts=-ra"]
        rc = uml.run_in_uml(
            argv,
            cwd=self.config.rootpath,
            env={REPORT_ENV: str(report)},
            mem=os.environ.get("ROUTED_NV_UML_MEM", SUITE_MEM),
            timeout=self.timeout,
        )
        return rc, json.loads(report.read_text()) if report.exists() else {}


def pytest_configure(config: pytest.Config) -> None:
    try:
        shards.guest_count(os.environ, shards.cpus())
    except ValueError as exc:  # before any test runs: one line, no traceback
        raise pytest.UsageError(str(exc)) from None


def _guest_run(item: pytest.Item) -> _GuestRun | None:
    config = item.config
    if _GUEST_RUN not in config.stash:
        # Decided once, on the final selection (after -k/-m deselection).
        kernel = [i for i in item.session.items if i.get_closest_marker("kernel")]
        config.stash[_GUEST_RUN] = _GuestRun(config, kernel) if kernel and uml.needs_uml() else None
    return config.stash[_GUEST_RUN]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    if item.get_closest_marker("kernel") is None:
        return None
    guest = _guest_run(item)
    if guest is None:
        return None
    phases = guest.run().get(item.nodeid) or [
        {"when": "setup", "outcome": "passed"},
        {"when": "call", "outcome": "failed", "longrepr": guest.failures.get(item.nodeid, "")},
        {"when": "teardown", "outcome": "passed"},
    ]
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    for phase in phases:
        longrepr = phase.get("longrepr")
        report = pytest.TestReport(
            nodeid=item.nodeid,
            location=item.location,
            keywords=dict.fromkeys(item.keywords, 1),
            outcome=phase["outcome"],
            longrepr=tuple(longrepr) if isinstance(longrepr, list) else longrepr,
            when=phase["when"],
            sections=[tuple(s) for s in phase.get("sections", [])],
            duration=phase.get("duration", 0.0),
        )
        if phase.get("wasxfail") is not None:
            report.wasxfail = phase["wasxfail"]
        item.ihook.pytest_runtest_logreport(report=report)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    # What runtestprotocol's teardown phase does: tear down what nextitem does not share (a
    # host-side test's module before this kernel test still holds its place otherwise, and the
    # next test's setup fails with "previous item was not torn down properly").
    item.session._setupstate.teardown_exact(nextitem)
    return True
