import pytest

from routed_nv.netfilter import netns
from routed_nv.netfilter.netns import NetnsError, run_in_netns


def test_no_namespace_runs_in_place():
    assert run_in_netns(None, lambda: 42) == 42


def test_missing_namespace_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(netns, "NETNS_DIR", str(tmp_path))
    with pytest.raises(NetnsError, match="network namespace rnvt-nope: No such file or directory"):
        run_in_netns("rnvt-nope", lambda: 42)


def test_errors_of_the_work_reach_the_caller(monkeypatch):
    monkeypatch.setattr(netns, "NETNS_DIR", "/proc/self/ns")  # "net" there: our own namespace

    def fail():
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_in_netns("net", fail)
    assert run_in_netns("net", lambda: "ok") == "ok"
