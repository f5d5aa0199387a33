"""Desired isolation and anti-spoofing rules of this host, as data (docs/isolation.md: why).

Everything lives in the raw table's PREROUTING hook, before conntrack and routing, and in the one
place where both checks can see what they need (measured on 6.1, see the doc):
- the workload's own veth/tap as in-interface (later hooks only see the tenant's VRF device);
- the ESP secpath of the decrypted outer packet (the ip6tnl decapsulation drops it, so the inner
  packet on rnv-t<T> can no longer be matched with `-m policy --pol ipsec`).

Chains, all prefixed markers.CHAIN_PREFIX, reached by one jump from PREROUTING per family:
  RNV-PREROUTING      dispatch: a workload's interface -> its RNV-SRC chain; IP-in-IPv6 -> RNV-DECAP
  RNV-SRC-<ifname>    first RNV-HOST, then the sources that workload may use; all else is dropped
  RNV-HOST            what a workload may send to its host itself: ND, and ICMP echo requests to
                      its gateway; anything else addressed to the host is dropped in silence
  RNV-DECAP (IPv6)    IP-in-IPv6 to this host's /64 must have been decrypted by the SA of the tenant
                      that owns the destination (reqid binds SA -> tenant); plaintext is dropped
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from routed_nv.calc.routing import RoutingConflict, host_ifname
from routed_nv.config.model import Config, Endpoint
from routed_nv.model import markers
from routed_nv.model.netfilter import ChainKey, DesiredRules, Family, Rule, TableChange

TABLE = "raw"
HOOK = "PREROUTING"  # the built-in chain that carries our single jump
DISPATCH = f"{markers.CHAIN_PREFIX}PREROUTING"
DECAP = f"{markers.CHAIN_PREFIX}DECAP"
SRC_PREFIX = f"{markers.CHAIN_PREFIX}SRC-"
TO_HOST = f"{markers.CHAIN_PREFIX}HOST"

PROTO_IPIP = 4  # IPv4 in IPv6
PROTO_IPV6 = 41  # IPv6 in IPv6
PROTO_ICMP = 1
PROTO_ICMPV6 = 58
ECHO_REQUEST = {4: 8, 6: 128}  # ICMP, ICMPv6 type
# What a workload may send from a link-local or unspecified source: router and neighbour
# solicitations and neighbour advertisements (RFC 4861 sends them from fe80::/10; DAD's
# neighbour solicitation from ::). Nothing else needs them: the host is the only neighbour.
ND_TYPES = (133, 135, 136)
DAD_TYPE = 135
LINK_LOCAL = "fe80::/10"
UNSPECIFIED = "::/128"
GATEWAY = {
    4: str(ipaddress.ip_network(markers.GATEWAY_V4)),
    6: str(ipaddress.ip_network(markers.GATEWAY_V6)),
}


def desired_rules(config: Config) -> DesiredRules:
    chains: dict[ChainKey, tuple[Rule, ...]] = {}
    errors: list[str] = []
    dispatch: dict[Family, list[Rule]] = {Family.IPV4: [], Family.IPV6: []}
    for name, endpoint in sorted(config.endpoints.items()):
        try:
            ifname = host_ifname(name, endpoint)  # the same name the routing driver gives it
        except RoutingConflict as exc:
            errors.append(f"{exc}; no anti-spoofing rules for it")
            continue
        chain = SRC_PREFIX + ifname
        for family, rules in source_rules(endpoint).items():
            chains[ChainKey(family, TABLE, chain)] = rules
            dispatch[family].append(Rule(target=chain, goto=True, in_interface=ifname))
    for family, rules in to_host_rules().items():
        chains[ChainKey(family, TABLE, TO_HOST)] = rules
    local = str(config.host.underlay_prefix)
    dispatch[Family.IPV6] += [
        Rule(target=DECAP, goto=True, dst=local, protocol=p) for p in (PROTO_IPIP, PROTO_IPV6)
    ]
    chains[ChainKey(Family.IPV6, TABLE, DECAP)] = decap_rules(config)
    for family, rules in dispatch.items():
        chains[ChainKey(family, TABLE, DISPATCH)] = tuple(rules)
    jumps = {ChainKey(f, TABLE, HOOK): DISPATCH for f in Family}
    unordered = frozenset(ChainKey(f, TABLE, DISPATCH) for f in Family)
    return DesiredRules(chains=chains, jumps=jumps, errors=tuple(errors), unordered=unordered)


def endpoint_rule_changes(old: Config, new: Config, names: Iterable[str]) -> list[TableChange]:
    """What `desired_rules` would change between `old` and `new` if only these endpoints
    differ: their own chains set or deleted, and their dispatch rules edited in place (the
    other endpoints' rules and counters stay). One change per family that has any; raises
    RoutingConflict when an endpoint's interface name cannot be made (the full path reports
    it)."""
    sets: dict[Family, dict[str, tuple[Rule, ...]]] = {f: {} for f in Family}
    gone: dict[Family, set[str]] = {f: set() for f in Family}
    append: dict[Family, set[Rule]] = {f: set() for f in Family}
    remove: dict[Family, set[Rule]] = {f: set() for f in Family}
    for name in sorted(names):
        before, after = _endpoint_chains(old, name), _endpoint_chains(new, name)
        for family in Family:
            b, a = before.get(family), after.get(family)
            if a is not None and a != b:
                sets[family][a[0]] = a[1]
                append[family].add(a[2])
            if b is not None and a != b:
                gone[family].add(b[0])
                remove[family].add(b[2])
    changes = []
    for family in Family:
        added = sorted(append[family] - remove[family], key=Rule.render)
        removed = sorted(remove[family] - append[family], key=Rule.render)
        change = TableChange(
            family=family,
            table=TABLE,
            set_chains=sets[family],
            delete_chains=tuple(sorted(gone[family] - sets[family].keys())),
            edit_chains={DISPATCH: (tuple(added), tuple(removed))} if added or removed else {},
        )
        if change:
            changes.append(change)
    return changes


def _endpoint_chains(config: Config, name: str) -> dict[Family, tuple[str, tuple[Rule, ...], Rule]]:
    """Per family: the endpoint's chain, its rules and its dispatch rule (none if absent)."""
    endpoint = config.endpoints.get(name)
    if endpoint is None:
        return {}
    ifname = host_ifname(name, endpoint)
    chain = SRC_PREFIX + ifname
    return {
        family: (chain, rules, Rule(target=chain, goto=True, in_interface=ifname))
        for family, rules in source_rules(endpoint).items()
    }


def to_host_rules() -> dict[Family, tuple[Rule, ...]]:
    """What a workload may send to its host, whatever the kernel's policy rules and the
    l3mdev_accept sysctls say (docs/isolation.md): neighbour discovery and echo requests to its
    gateway. Dropped in silence: anything else for an address of the host (the local table,
    which also holds loopback and every tenant's outer address), for the gateway (it lives in
    the VRF's table, not the local one) or any link-local address (only the host is on the
    link), and multicast or broadcast (the host answers an echo request to ff02::1)."""
    rules: dict[Family, list[Rule]] = {Family.IPV4: [], Family.IPV6: []}
    rules[Family.IPV4].append(
        Rule(target="RETURN", dst=GATEWAY[4], protocol=PROTO_ICMP, icmp_type=ECHO_REQUEST[4])
    )
    rules[Family.IPV6] += [
        Rule(target="RETURN", protocol=PROTO_ICMPV6, icmpv6_type=t) for t in ND_TYPES
    ]
    rules[Family.IPV6].append(
        Rule(target="RETURN", dst=GATEWAY[6], protocol=PROTO_ICMPV6, icmpv6_type=ECHO_REQUEST[6])
    )
    for family, link in ((Family.IPV4, GATEWAY[4]), (Family.IPV6, LINK_LOCAL)):
        rules[family] += [Rule(target="DROP", dst_type="LOCAL"), Rule(target="DROP", dst=link)]
        rules[family].append(Rule(target="DROP", dst_type="MULTICAST"))
    rules[Family.IPV4].append(Rule(target="DROP", dst_type="BROADCAST"))
    return {family: tuple(r) for family, r in rules.items()}


def source_rules(endpoint: Endpoint) -> dict[Family, tuple[Rule, ...]]:
    """Anti-spoofing: the workload may source its own addresses (and ND from link-local),
    after RNV-HOST had its say on what goes to the host itself."""
    own: dict[Family, list[Rule]] = {
        Family.IPV4: [Rule(target=TO_HOST)],
        Family.IPV6: [Rule(target=TO_HOST)],
    }
    for addr in sorted(endpoint.addresses, key=lambda a: (a.version, a)):
        family = Family.IPV4 if addr.version == 4 else Family.IPV6
        own[family].append(Rule(target="RETURN", src=str(ipaddress.ip_network(addr))))
    own[Family.IPV6] += [
        Rule(target="RETURN", src=LINK_LOCAL, protocol=PROTO_ICMPV6, icmpv6_type=t)
        for t in ND_TYPES
    ]
    own[Family.IPV6].append(
        Rule(target="RETURN", src=UNSPECIFIED, protocol=PROTO_ICMPV6, icmpv6_type=DAD_TYPE)
    )
    return {family: (*rules, Rule(target="DROP")) for family, rules in own.items()}


def decap_rules(config: Config) -> tuple[Rule, ...]:
    """IP-in-IPv6 to this host: only what the destination tenant's own SAs decrypted."""
    return (
        *(
            Rule(
                target="RETURN",
                dst=str(ipaddress.ip_network(config.host.tenant_address(t.id))),
                ipsec_reqid=markers.reqid(t.id),
            )
            for t in sorted(config.tenants.values(), key=lambda t: t.id)
        ),
        Rule(target="DROP", ipsec_reqid=0),  # plaintext: never decrypted (own counter)
        Rule(target="DROP"),  # decrypted by an SA of another tenant, or for no tenant of ours
    )
