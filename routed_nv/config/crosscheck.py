"""Checks that relate fields to each other, each reported against the field that is wrong."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from typing import Any

from routed_nv.config.model import Config, DirectorySourceKind, KeyingMode
from routed_nv.model.protection import Protection, suite

Found = tuple[tuple[str | int, ...], Any, str]  # (field path, offending value, message)


def problems(config: Config) -> list[Found]:
    return [
        *_host(config),
        *_tenants(config),
        *_endpoints(config),
        *_peers(config),
        *_remote_endpoints(config),
        *_addresses_unique(config),
        *_keying(config),
        *_mobility(config),
    ]


# the [directory] settings that only the BGP directory source uses
BGP_SETTINGS = (
    "asn",
    "route_reflectors",
    "password_file",
    "upstreams",
    "bird_socket",
    "bird_config",
)


def warnings(config: Config) -> list[str]:
    """Settings that are valid but have no effect, one message each (the configuration loads)."""
    directory = config.directory
    unused = [f for f in BGP_SETTINGS if f in directory.model_fields_set]
    if directory.source is DirectorySourceKind.BGP or not unused:
        return []
    return [
        f"directory.{', directory.'.join(unused)} {'is' if len(unused) == 1 else 'are'} set but "
        'directory.source is "static": the agent ignores BGP settings and takes remote endpoints '
        'from peers and remote_endpoints (set directory.source = "bgp" to use BIRD)'
    ]


def _host(config: Config) -> Iterator[Found]:
    host = config.host
    if not 8 <= host.underlay_aggregate.prefixlen <= 64:
        # XFRM policies select on the aggregate; ::/0 would collide with the catch-all blocks
        yield (
            ("host", "underlay_aggregate"),
            str(host.underlay_aggregate),
            "is not a prefix of length 8..64",
        )
    if host.underlay_prefix.prefixlen != 64:
        yield ("host", "underlay_prefix"), str(host.underlay_prefix), "is not a /64"
    if not host.underlay_prefix.subnet_of(host.underlay_aggregate):
        yield (
            ("host", "underlay_prefix"),
            str(host.underlay_prefix),
            f"is not inside host.underlay_aggregate {host.underlay_aggregate}",
        )


def _tenants(config: Config) -> Iterator[Found]:
    seen: dict[int, str] = {}
    for name, tenant in config.tenants.items():
        if tenant.id in seen:
            yield (
                ("tenants", name, "id"),
                tenant.id,
                f"is already used by tenants.{seen[tenant.id]}",
            )
        seen.setdefault(tenant.id, name)
        if not tenant.ipv4 and not tenant.ipv6:
            yield ("tenants", name), name, "has no ipv4 or ipv6 subnet"
        limit = config.tunnel_mtu(name)
        if tenant.mtu is not None and tenant.mtu > limit:
            overhead = config.host.underlay_mtu - limit
            yield (
                ("tenants", name, "mtu"),
                tenant.mtu,
                f"is above host.underlay_mtu - {overhead} = {limit} "
                f"(the overhead of {_modes(tenant.protections)})",
            )
        yield from _protection(config, name)


def _protection(config: Config, name: str) -> Iterator[Found]:
    """The modes the keying can do: charon negotiates no ESP without an ICV, and its rekeys
    replace SAs on their own (docs/ike.md), so key generations mean nothing to IKE."""
    if config.keying.mode is not KeyingMode.IKE:
        return
    tenant = config.tenants[name]
    if suite(tenant.protection).esp_proposal is None:
        yield (
            ("tenants", name, "protection"),
            str(tenant.protection),
            'is not possible with keying.mode "ike" (strongSwan negotiates no ESP without an '
            'integrity check): use "integrity", or static keying',
        )
    if tenant.generation_protection:
        yield (
            ("tenants", name, "generation_protection"),
            {str(g): str(p) for g, p in tenant.generation_protection.items()},
            'is for keying.mode "static" (key generations); with IKE, change protection: '
            "charon rekeys the CHILD_SAs",
        )


def _modes(modes: frozenset[Protection]) -> str:
    return ", ".join(sorted(modes))


def _endpoints(config: Config) -> Iterator[Found]:
    interfaces: dict[str, str] = {}
    for name, ep in config.endpoints.items():
        yield from _tenant_addresses(config, "endpoints", name, ep.tenant, ep.addresses)
        if ep.interface is None and ep.netns is None:
            yield ("endpoints", name), name, "needs an interface or a netns"
        elif ep.interface is not None and ep.netns is not None:
            yield (
                ("endpoints", name),
                name,
                "has both an interface and a netns: set one (interface: an existing tap or veth; "
                "netns: routed_nv makes the veth pair)",
            )
        if ep.interface is not None:
            if ep.interface in interfaces:
                yield (
                    ("endpoints", name, "interface"),
                    ep.interface,
                    f"is already used by endpoints.{interfaces[ep.interface]}",
                )
            interfaces.setdefault(ep.interface, name)


def _peers(config: Config) -> Iterator[Found]:
    ids = {config.host.id: "host"}
    prefixes = {config.host.underlay_prefix: "host"}
    for name, peer in config.peers.items():
        if peer.id in ids:
            yield ("peers", name, "id"), peer.id, f"is already used by {_where(ids[peer.id])}"
        ids.setdefault(peer.id, f"peers.{name}")
        prefix = peer.underlay_prefix
        if prefix.prefixlen != 64:
            yield ("peers", name, "underlay_prefix"), str(prefix), "is not a /64"
        elif prefix in prefixes:
            yield (
                ("peers", name, "underlay_prefix"),
                str(prefix),
                f"is already used by {_where(prefixes[prefix])}",
            )
        prefixes.setdefault(prefix, f"peers.{name}")
        if not prefix.subnet_of(config.host.underlay_aggregate):
            yield (
                ("peers", name, "underlay_prefix"),
                str(prefix),
                f"is not inside host.underlay_aggregate {config.host.underlay_aggregate}",
            )


def _where(owner: str) -> str:
    return "this host" if owner == "host" else owner


def _remote_endpoints(config: Config) -> Iterator[Found]:
    for name, ep in config.remote_endpoints.items():
        yield from _tenant_addresses(config, "remote_endpoints", name, ep.tenant, ep.addresses)
        if ep.host not in config.peers:
            yield ("remote_endpoints", name, "host"), ep.host, "is not a configured peer"


def _tenant_addresses(
    config: Config, section: str, name: str, tenant_name: str, addresses: list[Any]
) -> Iterator[Found]:
    tenant = config.tenants.get(tenant_name)
    if tenant is None:
        yield (section, name, "tenant"), tenant_name, "is not a configured tenant"
        return
    subnets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = [*tenant.ipv4, *tenant.ipv6]
    for i, addr in enumerate(addresses):
        if not any(addr in net for net in subnets):
            yield (
                (section, name, "addresses", i),
                str(addr),
                f"is outside the subnets of tenants.{tenant_name}",
            )


def _addresses_unique(config: Config) -> Iterator[Found]:
    """An address belongs to one workload per tenant, whether local or remote."""
    owners: dict[tuple[str, Any], str] = {}
    sections = (("endpoints", config.endpoints), ("remote_endpoints", config.remote_endpoints))
    for section, entries in sections:
        for name, ep in entries.items():
            for i, addr in enumerate(ep.addresses):
                key = (ep.tenant, addr)
                if key in owners:
                    yield (
                        (section, name, "addresses", i),
                        str(addr),
                        f"is already used by {owners[key]} in tenant {ep.tenant}",
                    )
                owners.setdefault(key, f"{section}.{name}")


def _keying(config: Config) -> Iterator[Found]:
    keying = config.keying
    if keying.mode is not KeyingMode.IKE:
        return
    certs = {"ca_cert": keying.ca_cert, "cert": keying.cert, "key": keying.key}
    if any(certs.values()):
        for field, value in certs.items():
            if value is None:
                yield ("keying", field), None, "is required when any of ca_cert, cert, key is set"
    elif keying.psk_file is None:
        yield ("keying", "mode"), "ike", "needs keying.psk_file or keying.ca_cert/cert/key"
    if keying.dpd_delay_s:
        # a peer must be probed at least once between rekeys, or DPD never sees it dead first
        for field in ("ike_rekey_s", "child_rekey_s"):
            value = getattr(keying, field)
            if value <= keying.dpd_delay_s:
                yield (
                    ("keying", field),
                    value,
                    f"is not above keying.dpd_delay_s = {keying.dpd_delay_s}",
                )


def _mobility(config: Config) -> Iterator[Found]:
    directory = config.directory
    if directory.reassert_after_s >= directory.duplicate_window_s:
        # two hosts re-asserting in turn could then never move often enough within a window
        yield (
            ("directory", "reassert_after_s"),
            directory.reassert_after_s,
            f"is not below directory.duplicate_window_s = {directory.duplicate_window_s}",
        )
