import subprocess

from routed_nv.netfilter.restore import detect_backend


def runner(stdout="", exc=None):
    def run(args, **kwargs):
        assert args == ["iptables", "-V"]
        if exc:
            raise exc
        return subprocess.CompletedProcess(args, 0, stdout=stdout, stderr="")

    return run


def test_nf_tables_system_says_where_our_legacy_rules_are():
    backend = detect_backend(runner("iptables v1.8.9 (nf_tables)\n"))
    assert backend.system == "nf_tables"
    assert "iptables-legacy -t raw -L" in backend.description
    assert "iptables v1.8.9 (nf_tables)" in backend.description


def test_legacy_system():
    backend = detect_backend(runner("iptables v1.8.9 (legacy)\n"))
    assert backend.system == "legacy"
    assert backend.description.startswith("iptables is legacy (iptables v1.8.9 (legacy))")


def test_missing_iptables_is_unknown_not_a_traceback():
    backend = detect_backend(runner(exc=FileNotFoundError(2, "No such file or directory")))
    assert backend.system == "unknown"
    assert "cannot run iptables -V" in backend.description
