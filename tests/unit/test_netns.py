import pytest

from routed_nv import netns
from routed_nv.netns import NetnsError, run_in_netns


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


def test_every_driver_names_a_missing_namespace(tmp_path, monkeypatch):
    """The routing driver, the mirror watch and the netfilter driver enter namespaces through the
    one module: each reports the missing one by name, in its own error type."""
    from routed_nv.directory.netlink_watch import WatchError, _open_socket
    from routed_nv.routing.kernel import NetnsNotFound
    from routed_nv.routing.netlink import NetlinkKernel

    monkeypatch.setattr(netns, "NETNS_DIR", str(tmp_path))
    with pytest.raises(WatchError, match="rnvt-gone"):
        _open_socket("rnvt-gone")
    with pytest.raises(NetnsNotFound, match="rnvt-gone"):
        NetlinkKernel("rnvt-gone")
    assert netns.exists("rnvt-gone") is False
    (tmp_path / "rnvt-here").touch()
    assert netns.exists("rnvt-here") is True
