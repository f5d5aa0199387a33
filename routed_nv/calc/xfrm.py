"""Desired XFRM state of this host: policies per local tenant, and (static keying) one SA per peer,
direction and key generation. Pure: the caller reads the tenants' key files (esp/keys.py).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterator

from routed_nv.config.model import Config, Host, KeyingMode, Tenant
from routed_nv.model import markers, spi
from routed_nv.model.directory import DirectoryView, PeerHost
from routed_nv.model.keys import KeyFileError, LoadedKeys, TenantKeys, derive_sa_key
from routed_nv.model.protection import suite
from routed_nv.model.secret import Secret
from routed_nv.model.xfrm import (
    TUNNELLED_PROTOS,
    Action,
    DesiredXfrm,
    Direction,
    StateKey,
    XfrmPolicy,
    XfrmState,
)

ANY = ipaddress.IPv6Network("::/0")


def desired_xfrm(config: Config, view: DirectoryView, keys: LoadedKeys) -> DesiredXfrm:
    policies = {p.key(): p for t in config.tenants.values() for p in tenant_policies(config, t)}
    if config.keying.mode is not KeyingMode.STATIC:
        return DesiredXfrm(policies, states=None)
    states: dict[StateKey, XfrmState] = {}
    keep: set[int] = set()
    errors: list[str] = []
    for name, tenant in sorted(config.tenants.items()):
        peers, peer_errors = _usable_peers(config, view.peers_of(tenant.id))
        errors += [f"tenant {name}: {e}" for e in peer_errors]
        if not peers:
            continue  # no SA needed, so no key file needed either
        loaded = keys[name]
        try:
            if isinstance(loaded, KeyFileError):
                raise loaded
            tenant_states = list(tenant_sas(config, tenant, peers, loaded))
        except (KeyFileError, spi.SpiExhausted) as exc:
            errors.append(f"tenant {name}: {exc}")
            keep.add(tenant.id)
            continue
        states.update((s.key(), s) for s in tenant_states)
    return DesiredXfrm(policies, states, frozenset(keep), tuple(errors))


def tenant_policies(config: Config, tenant: Tenant) -> Iterator[XfrmPolicy]:
    """ESP required for the tenant's tunnel traffic to and from the underlay aggregate, with
    block policies for any address beneath as a backstop.

    Both directions are scoped to the aggregate (ARCHITECTURE.md has `src ::/0` inbound): the
    kernel identifies a policy by selector and direction only, not priority, so an inbound
    ESP-required policy from ::/0 and the inbound block from ::/0 cannot coexist (verified on 6.1:
    `add` fails with EEXIST, `update` replaces one with the other).
    """
    here = ipaddress.IPv6Network(config.host.tenant_address(tenant.id))
    aggregate = config.host.underlay_aggregate
    reqid = markers.reqid(tenant.id)
    for proto in TUNNELLED_PROTOS:
        for direction, src, dst, block_src, block_dst in (
            (Direction.OUT, here, aggregate, here, ANY),
            (Direction.IN, aggregate, here, ANY, here),
        ):
            yield XfrmPolicy(
                direction, src, dst, proto, markers.XFRM_POLICY_PRIORITY, Action.ALLOW, reqid
            )
            yield XfrmPolicy(
                direction, block_src, block_dst, proto, markers.XFRM_BLOCK_PRIORITY, Action.BLOCK
            )


def tenant_sas(
    config: Config, tenant: Tenant, peers: list[PeerHost], keys: TenantKeys
) -> Iterator[XfrmState]:
    """Per peer: an outbound SA for the active generation, an inbound SA for every generation,
    each in its generation's protection mode."""
    me = config.host
    reqid = markers.reqid(tenant.id)

    def sa(src: PeerHost | Host, dst: PeerHost | Host, gen: int, secret: Secret) -> XfrmState:
        mode = tenant.protection_of(gen)
        cipher = suite(mode)
        return XfrmState(
            src=src.tenant_address(tenant.id),
            dst=dst.tenant_address(tenant.id),
            spi=spi.encode(tenant.id, src.id, gen),
            reqid=reqid,
            key_material=derive_sa_key(secret, tenant.id, src.id, dst.id, gen, mode),
            algorithm=cipher.algorithm,
            icv_bits=cipher.icv_bits,
            aead=cipher.aead,
        )

    for peer in peers:
        yield sa(me, peer, keys.active, keys.generations[keys.active])
        for gen, secret in sorted(keys.generations.items()):
            yield sa(peer, me, gen, secret)


def _usable_peers(config: Config, peers: frozenset[PeerHost]) -> tuple[list[PeerHost], list[str]]:
    """Peers whose host id is a unique sender slot; a clash would make two SAs share an SPI."""
    counts = Counter(p.id for p in peers)
    usable, errors = [], []
    for peer in sorted(peers):
        if peer.id == config.host.id:
            errors.append(f"peer {peer.name} has this host's id {peer.id}; no SAs to it")
        elif counts[peer.id] > 1:
            errors.append(f"peer {peer.name} shares host id {peer.id} with another peer; no SAs")
        else:
            usable.append(peer)
    return usable, errors
