from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from routed_nv.calc.xfrm import desired_xfrm
from routed_nv.config.model import Config
from routed_nv.config.views import static_view
from routed_nv.model import markers, spi
from routed_nv.model.directory import tenant_outer_address
from routed_nv.model.keys import KeyFileError, TenantKeys, derive_sa_key
from routed_nv.model.secret import Secret
from routed_nv.model.xfrm import Action, Direction
from tests.factories import HOST1

SECRETS = {0: Secret(b"\x00" * 32), 1: Secret(b"\x01" * 32)}


def config(mode: str = "static", **extra: Any) -> Config:
    return Config.model_validate(
        {
            "host": HOST1,
            "keying": {"mode": mode},
            "tenants": {"blue": {"id": 100}, "red": {"id": 200}},
            "peers": {
                "host2": {"id": 2, "underlay_prefix": "2001:db8:0:2::/64"},
                "host3": {"id": 3, "underlay_prefix": "2001:db8:0:3::/64"},
            },
            "remote_endpoints": {
                "b2": {"tenant": "blue", "addresses": ["10.0.0.2"], "host": "host2"},
                "b3": {"tenant": "blue", "addresses": ["10.0.0.3"], "host": "host3"},
                "r2": {"tenant": "red", "addresses": ["10.0.0.2"], "host": "host2"},
            },
            **extra,
        }
    )


def keys_of(generations: dict[int, Secret], active: int) -> dict[str, TenantKeys | KeyFileError]:
    return {t: TenantKeys(t, Path(f"/k/{t}.key"), generations, active) for t in ("blue", "red")}


def addr(prefix: str, tenant: int) -> ipaddress.IPv6Address:
    return tenant_outer_address(ipaddress.IPv6Network(prefix), tenant)


def test_policies_per_tenant_and_protocol() -> None:
    cfg = config()
    desired = desired_xfrm(cfg, static_view(cfg), keys_of({0: SECRETS[0]}, 0))
    assert len(desired.policies) == 2 * 2 * 4  # tenants x protos x (out, in, 2 blocks)
    here = ipaddress.IPv6Network(cfg.host.tenant_address(100))
    blue = [p for p in desired.policies.values() if here in (p.src, p.dst)]
    assert {p.proto for p in blue} == {4, 41}  # never ICMPv6 (58)
    allow = [p for p in blue if p.action is Action.ALLOW]
    assert {(p.direction, p.src, p.dst) for p in allow} == {
        (Direction.OUT, here, cfg.host.underlay_aggregate),
        (Direction.IN, cfg.host.underlay_aggregate, here),
    }
    assert all(p.reqid == markers.reqid(100) for p in allow)
    assert all(p.priority == markers.XFRM_POLICY_PRIORITY for p in allow)
    blocks = [p for p in blue if p.is_block]
    assert {(p.direction, str(p.src), str(p.dst)) for p in blocks} == {
        (Direction.OUT, str(here), "::/0"),
        (Direction.IN, "::/0", str(here)),
    }
    assert all(p.priority == markers.XFRM_BLOCK_PRIORITY and p.reqid is None for p in blocks)


def test_states_outbound_active_only_inbound_every_generation() -> None:
    cfg = config()
    desired = desired_xfrm(cfg, static_view(cfg), keys_of(SECRETS, active=1))
    assert desired.states is not None and not desired.errors
    me, h2 = cfg.host.tenant_address(100), addr("2001:db8:0:2::/64", 100)
    blue_h2 = {s.spi: s for s in desired.states.values() if h2 in (s.src, s.dst)}
    assert set(blue_h2) == {
        spi.encode(100, 1, 1),  # out: this host is the sender, active generation
        spi.encode(100, 2, 0),  # in: the peer is the sender, every generation
        spi.encode(100, 2, 1),
    }
    out = blue_h2[spi.encode(100, 1, 1)]
    assert (out.src, out.dst, out.reqid) == (me, h2, markers.reqid(100))
    assert out.key_material == derive_sa_key(SECRETS[1], 100, 1, 2, 1)
    inbound = blue_h2[spi.encode(100, 2, 0)]
    assert (inbound.src, inbound.dst) == (h2, me)
    assert inbound.key_material == derive_sa_key(SECRETS[0], 100, 2, 1, 0)
    # blue: 2 peers x 3, red: 1 peer x 3
    assert len(desired.states) == 9


def test_both_ends_agree_on_every_sa() -> None:
    """Host 1's outbound SA is host 2's inbound SA: same addresses, SPI and key."""
    cfg1 = config()
    cfg2 = Config.model_validate(
        {
            **cfg1.model_dump(),
            "host": {
                **cfg1.host.model_dump(),
                "name": "host2",
                "id": 2,
                "underlay_prefix": "2001:db8:0:2::/64",
            },
            "peers": {"host1": {"id": 1, "underlay_prefix": "2001:db8:0:1::/64"}},
            "remote_endpoints": {
                "b1": {"tenant": "blue", "addresses": ["10.0.0.1"], "host": "host1"}
            },
        }
    )
    loader = keys_of(SECRETS, active=0)
    s1 = desired_xfrm(cfg1, static_view(cfg1), loader).states
    s2 = desired_xfrm(cfg2, static_view(cfg2), loader).states
    assert s1 is not None and s2 is not None
    shared = s1.keys() & s2.keys()
    assert len(shared) == 2  # one per direction for the active generation
    assert all(s1[k] == s2[k] for k in shared)


def test_ike_mode_leaves_states_to_charon() -> None:
    cfg = config(mode="ike")

    desired = desired_xfrm(cfg, static_view(cfg), {})  # none loaded: IKE mode needs none
    assert desired.states is None and len(desired.policies) == 16


def test_unreadable_keys_keep_that_tenants_sas_and_the_others_go_on() -> None:
    cfg = config()

    loaded = keys_of({0: SECRETS[0]}, 0)
    loaded["red"] = KeyFileError("/k/red.key: secret file is missing")
    desired = desired_xfrm(cfg, static_view(cfg), loaded)
    assert desired.errors == ("tenant red: /k/red.key: secret file is missing",)
    assert desired.keep_states_of == {200}
    assert desired.states and {s.reqid for s in desired.states.values()} == {markers.reqid(100)}
    assert len(desired.policies) == 16  # red stays fail-closed: its policies are still there


def test_peer_with_clashing_host_id_gets_no_sas() -> None:
    peers = {
        "host2": {"id": 2, "underlay_prefix": "2001:db8:0:2::/64"},
        "host3": {"id": 1, "underlay_prefix": "2001:db8:0:3::/64"},
    }
    cfg = config(peers=peers)
    desired = desired_xfrm(cfg, static_view(cfg), keys_of({0: SECRETS[0]}, 0))
    assert "tenant blue: peer host3 has this host's id 1; no SAs to it" in desired.errors
    assert desired.states is not None
    peers_with_sas = {s.dst for s in desired.states.values() if s.src in cfg.host.underlay_prefix}
    assert peers_with_sas == {addr("2001:db8:0:2::/64", 100), addr("2001:db8:0:2::/64", 200)}


def test_tenant_without_peers_needs_no_key_file() -> None:
    cfg = config(remote_endpoints={})
    desired = desired_xfrm(cfg, static_view(cfg), {})
    assert desired.states == {} and not desired.errors
