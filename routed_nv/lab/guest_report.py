"""pytest plugin for the guest half of a kernel-test run (`pytest -p routed_nv.lab.guest_report`).

It records each test phase's outcome and failure text in the JSON file named by
ROUTED_NV_LAB_REPORT, rewritten after every phase so a guest that dies mid-run still leaves the
results it had. tests/conftest.py on the host reads the file and reports each test from it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REPORT_ENV = "ROUTED_NV_LAB_REPORT"

_results: dict[str, list[dict[str, Any]]] = {}


def pytest_runtest_logreport(report: Any) -> None:
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    # Skips carry (path, line, reason), which the host's summary needs as such.
    longrepr = list(report.longrepr) if isinstance(report.longrepr, tuple) else report.longreprtext
    _results.setdefault(report.nodeid, []).append(
        {
            "when": report.when,
            "outcome": report.outcome,
            "longrepr": longrepr or None,
            "duration": report.duration,
            "sections": list(report.sections),
            "wasxfail": getattr(report, "wasxfail", None),
        }
    )
    tmp = Path(path + ".tmp")
    tmp.write_text(json.dumps(_results))
    tmp.replace(path)
