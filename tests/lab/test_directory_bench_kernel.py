"""The directory benchmark (`python -m routed_nv.bench.directory`) on a real kernel: every size's
N routes reach the receiving agent's VRF table with the publishing host's tenant address as next
hop (and its mirror table with its host address), and every figure is there. Timings are
printed, never asserted."""

from __future__ import annotations

import pytest

from routed_nv.bench import directory as bench
from routed_nv.lab.bird import bgp_address
from routed_nv.lab.topology import directory_topology
from routed_nv.model.directory import tenant_outer_address

pytestmark = pytest.mark.kernel
# --quick's sizes with fewer repetitions: about 3 minutes in a loaded guest (CI runs every
# kernel module); p99 needs the CLI's repetitions, this test checks what is real
SIZES = {1: 5, 1000: 2, 10000: 1}


@pytest.fixture(scope="module")
def rows() -> list[bench.Row]:
    print()
    bench.header()
    return bench.run(SIZES, bench.line)


def test_every_size_is_measured_as_often_as_asked(rows: list[bench.Row]) -> None:
    assert [(r.n, len(r.publish)) for r in rows] == list(SIZES.items())
    for r in rows:
        reps = SIZES[r.n]
        lists = (r.publish_mirror, r.withdraw, r.floor, r.agent_cpu_publish, r.agent_cpu_withdraw)
        assert [len(values) for values in lists] == [reps] * len(lists), r.n


def test_the_routes_arrive_with_the_publishers_next_hops(rows: list[bench.Row]) -> None:
    host1 = directory_topology().host("host1")
    for r in rows:
        assert r.vrf_next_hops == [str(tenant_outer_address(host1.prefix, bench.TENANT_ID))]
        assert r.mirror_next_hops == [str(bgp_address(host1))]


def test_every_figure_is_present_and_positive(rows: list[bench.Row]) -> None:
    for r in rows:
        assert all(t > 0 for t in [*r.publish_mirror, *r.publish, *r.withdraw, *r.floor]), r
        # the agent learns from the mirror table: its VRF routes cannot come first
        assert all(m <= v for m, v in zip(r.publish_mirror, r.publish, strict=True)), r
        # at 100 ticks/s one repetition of N=1 may round to 0; all of them cannot
        assert sum(r.agent_cpu_publish) > 0 and sum(r.agent_cpu_withdraw) > 0, r
        assert 0 < r.agent_rss_kb <= r.agent_hwm_kb, r
        assert sorted(r.bird_memory) == sorted(bench.BIRD_NODES)
        assert all(m > 0 for m in r.bird_memory.values()), r.bird_memory
