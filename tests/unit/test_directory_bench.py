"""The directory benchmark's own bookkeeping: /proc readings, the lab config, the JSON keys."""

from __future__ import annotations

import argparse
import ipaddress
import os
import resource
from pathlib import Path

import pytest

from routed_nv.bench import directory as bench
from routed_nv.lab.datapath import host_config
from routed_nv.lab.topology import directory_topology


def test_cpu_time_follows_this_process_in_nanoseconds() -> None:
    before = bench.cpu_ns(os.getpid())
    start = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    while resource.getrusage(resource.RUSAGE_SELF).ru_utime - start < 0.05:
        pass
    assert bench.cpu_ns(os.getpid()) - before >= 40_000_000


def test_rss_is_read_in_bytes() -> None:
    rss = bench.rss_bytes(os.getpid())
    block = b"x" * (64 * 1024 * 1024)  # written, so resident
    assert bench.rss_bytes(os.getpid()) - rss >= 60 * 1024 * 1024
    del block


def test_the_benchmark_space_is_inside_the_tenant_only_in_the_bench_config(
    tmp_path: Path,
) -> None:
    topology = directory_topology()
    config = host_config(topology, topology.host("host2"), tmp_path)
    assert bench.SPACE not in config.tenants[bench.TENANT].ipv4
    wider = bench.widen(config)
    assert wider.tenants[bench.TENANT].ipv4 == [*config.tenants[bench.TENANT].ipv4, bench.SPACE]
    assert wider.tenants["red"] == config.tenants["red"]
    assert not any(ipaddress.ip_network(w.ipv4).subnet_of(bench.SPACE) for w in topology.workloads)


RESULT = {
    "header": {"mode": "2-host/1-RR", "guest_kernel": "6.12", "commit": "abc", "host_load": [1.0]},
    "ready_s": 1.5,
    "in_sync_s": 7.0,
    "publish_to_vrf": [{"routes": 1000, "seconds": 2.0, "floor_seconds": 0.5, "ratio": 4.0}],
    "event_cpu_ms": [{"routes": 1000, "p50": 3.0, "p99": 9.0, "n": 6, "lab": {"mean_ms": 4.0}}],
    "agent_rss_bytes_per_route": 1800.0,
    "add_to_reachable_s": {"p50": 5.0, "p99": 6.0, "n": 4},
    "move_to_traffic_s": {"p50": 4.0, "p99": 4.5, "n": 2, "lost_pings": 0},
}


def test_the_json_keys_are_the_stable_ones_of_issue_16() -> None:
    # a literal, not bench.KEYS: renaming a key must fail here (machines read them)
    stable = "header ready_s in_sync_s publish_to_vrf event_cpu_ms agent_rss_bytes_per_route"
    assert (*stable.split(), "add_to_reachable_s", "move_to_traffic_s") == bench.KEYS
    assert tuple(RESULT) == bench.KEYS


def test_the_table_shows_every_figure() -> None:
    text = bench.table(RESULT)
    figures = ("2-host/1-RR", "READY 1.50 s", "in sync 7.00 s", "ratio 4.00", "p50 3.00 ms",
               "lab mean 4.0 ms", "1800 B", "p50 5.00 s", "lost 0")  # fmt: skip
    for figure in figures:
        assert figure in text, figure


def test_a_summary_has_the_median_the_99th_percentile_and_the_count() -> None:
    assert bench.summary([2.0]) == {"p50": 2.0, "p99": 2.0, "n": 1}
    values = bench.summary([1.0, 2.0, 3.0, 10.0])
    assert (values["p50"], values["n"]) == (2.5, 4)
    assert 9.0 < values["p99"] <= 10.0


def test_unit_events_add_p50_and_p99_to_each_row() -> None:
    result = {"event_cpu_ms": [{"routes": 100, "lab": {"mean_ms": 4.0}}]}
    bench.unit_events(result, 5)
    row = result["event_cpu_ms"][0]
    assert (row["routes"], row["n"], row["lab"]) == (100, 5, {"mean_ms": 4.0})
    assert 0 < row["p50"] <= row["p99"]
    assert row["measured_by"] == "bench events (in-memory kernel) on the host"


def test_uml_guests_are_counted_by_umid_not_by_process(tmp_path: Path) -> None:
    def process(pid: int, *args: str) -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in args))

    process(10, "/usr/bin/linux.uml", "mem=512M", "umid=rnv1", "quiet")
    process(11, "/usr/bin/linux.uml", "mem=512M", "umid=rnv1", "quiet")  # the same guest
    process(12, "linux", "mem=6G", "umid=rnv2")
    process(13, "/usr/bin/python3", "umid=rnv3")  # not a UML kernel
    assert bench.uml_guests(tmp_path) == 2


def test_the_two_host_lab_has_one_route_reflector() -> None:
    small = directory_topology(hosts=2, reflectors=1)
    assert [n.name for n in small.underlay_nodes] == ["host1", "host2", "rr1"]
    assert {w.host for w in small.workloads} == {"host1", "host2"}
    assert len(directory_topology().underlay_nodes) == 5


def test_a_size_is_n_or_n_with_repetitions() -> None:
    assert bench.size("100000") == (100000, 1)
    assert bench.size("1000:3") == (1000, 3)
    for bad in ("many", "10:x", "0", "5:0"):
        with pytest.raises(argparse.ArgumentTypeError, match=repr(bad)):
            bench.size(bad)
