"""How kernel tests are spread over UML guests: whole modules, balanced by measured seconds,
each guest in collection order."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from routed_nv.lab.shards import (
    DEFAULT_TEST_S,
    guest_count,
    load_seconds,
    measured_seconds,
    shards,
)

IDS = [
    "tests/lab/test_a.py::test_1",
    "tests/lab/test_a.py::test_2",
    "tests/lab/test_b.py::test_1",
    "tests/lab/test_c.py::test_1",
    "tests/lab/test_c.py::test_2[0]",
    "tests/lab/test_d.py::test_1",
]


def test_modules_stay_whole_and_in_order_and_the_heaviest_gets_a_guest_of_its_own() -> None:
    seconds = {"tests/lab/test_c.py": 200.0, "tests/lab/test_a.py": 50.0}
    # b and d are not listed: one test each at DEFAULT_TEST_S
    first, second = shards(IDS, 2, seconds)
    assert first == ["tests/lab/test_c.py::test_1", "tests/lab/test_c.py::test_2[0]"]
    assert second == [
        "tests/lab/test_a.py::test_1",
        "tests/lab/test_a.py::test_2",
        "tests/lab/test_b.py::test_1",
        "tests/lab/test_d.py::test_1",
    ]
    assert sorted(first + second) == sorted(IDS)


def test_one_guest_runs_everything_as_collected_and_no_guest_is_left_empty() -> None:
    assert shards(IDS, 1, {}) == [IDS]
    assert shards(IDS[:2], 4, {}) == [IDS[:2]]  # one module: one guest
    assert shards([], 2, {}) == [[]]


def test_unlisted_modules_count_their_tests() -> None:
    # a and c (2 tests each) apart, then b and d (1 each) one to each guest
    first, second = shards(IDS, 2, {})
    assert {id.split("::")[0] for id in first} == {"tests/lab/test_a.py", "tests/lab/test_b.py"}
    assert {id.split("::")[0] for id in second} == {"tests/lab/test_c.py", "tests/lab/test_d.py"}
    # d listed as heavier than a and c: it goes first, b joins it (30 + 10 against 20 + 20)
    first, _ = shards(IDS, 2, {"tests/lab/test_d.py": 3 * DEFAULT_TEST_S})
    assert first == ["tests/lab/test_b.py::test_1", "tests/lab/test_d.py::test_1"]


def test_guest_count_from_the_environment_or_the_cpus() -> None:
    assert guest_count({}, 1) == 1
    assert guest_count({}, 2) == 2
    assert guest_count({}, 64) == 2
    assert guest_count({}, None) == 1
    assert guest_count({"ROUTED_NV_UML_GUESTS": "3"}, 2) == 3
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match=f"ROUTED_NV_UML_GUESTS='{bad}': not a number"):
            guest_count({"ROUTED_NV_UML_GUESTS": bad}, 2)


def test_seconds_measured_per_module_read_back(tmp_path: Path) -> None:
    results = {
        "tests/lab/test_a.py::test_1": [{"when": "setup", "duration": 1.25}, {"duration": 2.0}],
        "tests/lab/test_a.py::test_2": [{"when": "call", "duration": 0.5}],
        "tests/lab/test_b.py::test_1": [{"when": "call"}],
    }
    measured = measured_seconds(results)
    assert measured == {"tests/lab/test_a.py": 3.8, "tests/lab/test_b.py": 0.0}
    path = tmp_path / "seconds.json"
    path.write_text(json.dumps(measured))
    assert load_seconds(path) == measured
    assert load_seconds(tmp_path / "missing.json") == {}
    path.write_text("not json")
    assert load_seconds(path) == {}


def test_the_committed_seconds_name_existing_modules() -> None:
    root = Path(__file__).parents[2]
    listed = load_seconds(root / "tests" / "lab" / "guest_seconds.json")
    assert listed and all((root / module).is_file() for module in listed), listed
