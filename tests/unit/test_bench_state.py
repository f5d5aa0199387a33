"""State-per-host formulas of the benchmark."""

from __future__ import annotations

from routed_nv.bench import state
from routed_nv.bench.results import HostState, Variant
from routed_nv.bench.run import SETUPS, lab_load, projections


def test_lab_host_matches_what_routed_nv_installs_on_three_hosts() -> None:
    # Measured on host1 of the 3-host lab: 2 tenants x (2 unreachable + 2 local addresses in 2
    # tables + 2 remote workloads x 2 addresses), 2 SAs per (tenant, peer), 8 policies per tenant.
    assert state.per_host(Variant.ROUTED, lab_load(Variant.ROUTED, 3)) == HostState(
        routes=20, sas=8, policies=16, fdb=0
    )


def test_routed_nv_keys_only_peers_with_the_tenants_workloads() -> None:
    assert state.per_host(Variant.ROUTED, lab_load(Variant.ROUTED, 30)).sas == 8


def test_bridged_state_is_fdb_and_host_pair_sas() -> None:
    load = lab_load(Variant.VXLAN, 10)
    assert state.per_host(Variant.VXLAN, load) == HostState(routes=0, sas=0, policies=0, fdb=22)
    assert state.per_host(Variant.VXLAN_IPSEC, load) == HostState(
        routes=0, sas=18, policies=2, fdb=22
    )


def test_underlay_routes_only_its_own_workloads() -> None:
    assert state.per_host(Variant.UNDERLAY, lab_load(Variant.UNDERLAY, 30)).routes == 3


def test_dense_deployment_counts() -> None:
    load = state.dense(hosts=1000, tenants=10, endpoints=4)
    assert (load.peers, load.remote, load.peer_hosts) == (999, 3996, 999)
    routed = state.per_host(Variant.ROUTED, load)
    assert routed.sas == 2 * 10 * 999
    assert routed.routes == 10 * (2 + 2 * 4 * 2 + 3996 * 2)
    assert state.per_host(Variant.VXLAN_IPSEC, load).sas == 2 * 999
    assert state.per_host(Variant.VXLAN, load).fdb == 10 * (999 + 3996)


def test_sparse_tenants_bound_the_peers() -> None:
    load = state.dense(hosts=1000, tenants=10, endpoints=4, span=20)
    assert (load.peers, load.peer_hosts) == (19, 190)
    assert state.dense(hosts=10, tenants=10, endpoints=4, span=20).peers == 9


def test_projection_grid_covers_every_variant_and_size() -> None:
    rows = projections()
    assert {(p.variant, p.hosts, p.span) for p in rows} >= {
        (v, h, h) for v in SETUPS for h in (10, 100, 1000)
    }
    # sparse only where it differs from dense; the protection modes' state is their variant's
    assert len(rows) == (3 + 2) * len(SETUPS)
