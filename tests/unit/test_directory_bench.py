"""The directory benchmark's own bookkeeping: /proc readings, the lab config, the table row."""

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


def test_cpu_seconds_follow_this_process() -> None:
    before = bench.cpu_seconds(os.getpid())
    start = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    while resource.getrusage(resource.RUSAGE_SELF).ru_utime - start < 0.05:
        pass
    assert bench.cpu_seconds(os.getpid()) - before >= 0.04


def test_memory_is_read_in_kilobytes() -> None:
    rss, hwm = bench.memory_kb(os.getpid())
    assert 0 < rss <= hwm
    block = b"x" * (64 * 1024 * 1024)  # written, so resident
    grown, _ = bench.memory_kb(os.getpid())
    assert grown - rss >= 60 * 1024
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


def test_a_row_prints_medians_the_ratio_and_every_node(capsys: pytest.CaptureFixture[str]) -> None:
    row = bench.Row(1000, [0.1, 0.3], [1.0, 3.0], [0.5, 0.5], [0.2, 0.2], [1.5, 0.5], [0.1, 0.1])
    row.agent_rss_kb, row.agent_hwm_kb = 71 * 1024, 80 * 1024
    row.bird_memory = {n: 2048 for n in bench.BIRD_NODES}
    bench.line(row)
    cells = [c.strip() for c in capsys.readouterr().out.strip().strip("|").split("|")]
    assert cells[:7] == ["1,000", "2", "200.0 / 298.0", "2000.0 / 2980.0", "500.0 / 500.0",
                         "200.0 / 200.0", "10.0x"]  # fmt: skip
    assert cells[7:] == ["1.00 + 0.10", "71 / 80 MB", "2 kB", "2 kB", "2 kB"]


def test_a_size_is_n_or_n_with_repetitions() -> None:
    assert bench.size("100000") == (100000, 1)
    assert bench.size("1000:3") == (1000, 3)
    for bad in ("many", "10:x", "0", "5:0"):
        with pytest.raises(argparse.ArgumentTypeError, match=repr(bad)):
            bench.size(bad)
