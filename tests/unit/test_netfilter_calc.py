from routed_nv.calc.netfilter import DECAP, DISPATCH, TO_HOST, desired_rules
from routed_nv.calc.routing import host_ifname
from routed_nv.config.model import Config, Endpoint
from routed_nv.model import markers
from routed_nv.model.netfilter import ChainKey, Family, Rule
from tests.factories import HOST1

V4, V6 = Family.IPV4, Family.IPV6


def config(**extra) -> Config:
    return Config.model_validate(
        {
            "host": HOST1,
            "tenants": {"blue": {"id": 100}, "red": {"id": 200}},
            "endpoints": {
                "web": {
                    "tenant": "blue",
                    "addresses": ["10.0.0.1", "fd10::1"],
                    "interface": "wl-web",
                },
                "db": {"tenant": "red", "addresses": ["10.0.0.1"], "interface": "wl-db"},
            },
            **extra,
        }
    )


def chain(desired, family, name):
    return desired.chains[ChainKey(family, "raw", name)]


def test_workload_may_source_only_its_own_addresses():
    rules = desired_rules(config())
    assert chain(rules, V4, "RNV-SRC-wl-web") == (
        Rule(target=TO_HOST),
        Rule(target="RETURN", src="10.0.0.1/32"),
        Rule(target="DROP"),
    )
    v6 = chain(rules, V6, "RNV-SRC-wl-web")
    assert v6[:2] == (Rule(target=TO_HOST), Rule(target="RETURN", src="fd10::1/128"))
    assert v6[-1] == Rule(target="DROP")


def test_link_local_sources_only_for_neighbour_discovery():
    v6 = chain(desired_rules(config()), V6, "RNV-SRC-wl-web")
    link_local = [r for r in v6 if r.src == "fe80::/10"]
    assert {r.icmpv6_type for r in link_local} == {133, 135, 136}  # RS, NS, NA
    assert all(r.protocol == 58 and r.target == "RETURN" for r in link_local)
    unspecified = [r for r in v6 if r.src == "::/128"]
    assert [(r.protocol, r.icmpv6_type) for r in unspecified] == [(58, 135)]  # DAD only


def test_ipv4_only_workload_sends_no_ipv6_but_neighbour_discovery():
    v6 = chain(desired_rules(config()), V6, "RNV-SRC-wl-db")
    assert v6[0] == Rule(target=TO_HOST)
    assert all(r.src in ("fe80::/10", "::/128") for r in v6[1:-1])
    assert v6[-1] == Rule(target="DROP")


def test_every_workload_chain_first_asks_what_may_go_to_the_host():
    rules = desired_rules(config())
    sources = [k for k in rules.chains if k.chain.startswith("RNV-SRC-")]
    assert len(sources) == 4
    assert all(rules.chains[k][0] == Rule(target=TO_HOST) for k in sources)  # -j: it returns


def test_to_the_host_only_nd_and_echo_requests_to_the_gateway():
    rules = desired_rules(config())
    assert chain(rules, V4, TO_HOST) == (
        Rule(target="RETURN", dst="169.254.0.1/32", protocol=1, icmp_type=8),
        Rule(target="DROP", dst_type="LOCAL"),  # the host's own addresses, loopback too
        Rule(target="DROP", dst="169.254.0.1/32"),  # the gateway: in the VRF, not the local table
        Rule(target="DROP", dst_type="MULTICAST"),
        Rule(target="DROP", dst_type="BROADCAST"),
    )
    assert chain(rules, V6, TO_HOST) == (
        *(Rule(target="RETURN", protocol=58, icmpv6_type=t) for t in (133, 135, 136)),
        Rule(target="RETURN", dst="fe80::1/128", protocol=58, icmpv6_type=128),
        Rule(target="DROP", dst_type="LOCAL"),
        Rule(target="DROP", dst="fe80::/10"),  # the gateway and the kernel's link-local
        Rule(target="DROP", dst_type="MULTICAST"),  # ND to multicast returned above
    )


def test_dispatch_by_workload_interface_with_goto():
    rules = desired_rules(config())
    assert chain(rules, V4, DISPATCH) == (
        Rule(target="RNV-SRC-wl-db", goto=True, in_interface="wl-db"),
        Rule(target="RNV-SRC-wl-web", goto=True, in_interface="wl-web"),
    )
    v6 = chain(rules, V6, DISPATCH)
    assert v6[-2:] == (
        Rule(target=DECAP, goto=True, dst="2001:db8:0:1::/64", protocol=4),
        Rule(target=DECAP, goto=True, dst="2001:db8:0:1::/64", protocol=41),
    )


def test_decap_accepts_only_what_the_destination_tenants_sas_decrypted():
    cfg = config()
    decap = chain(desired_rules(cfg), V6, DECAP)
    assert decap == (
        Rule(
            target="RETURN",
            dst=f"{cfg.host.tenant_address(100)}/128",
            ipsec_reqid=markers.reqid(100),
        ),
        Rule(
            target="RETURN",
            dst=f"{cfg.host.tenant_address(200)}/128",
            ipsec_reqid=markers.reqid(200),
        ),
        Rule(target="DROP", ipsec_reqid=0),
        Rule(target="DROP"),
    )


def test_only_ip_in_ipv6_is_steered_to_decap_so_esp_ike_bgp_icmpv6_pass():
    v6 = chain(desired_rules(config()), V6, DISPATCH)
    assert {r.protocol for r in v6 if r.target == DECAP} == {4, 41}
    assert all(r.in_interface for r in v6 if r.target != DECAP)


def test_single_jump_per_family_and_all_chains_prefixed():
    rules = desired_rules(config())
    assert rules.jumps == {ChainKey(f, "raw", "PREROUTING"): DISPATCH for f in Family}
    assert all(k.chain.startswith(markers.CHAIN_PREFIX) for k in rules.chains)
    assert all(len(k.chain) <= 28 for k in rules.chains)  # iptables' chain name limit


def test_removing_a_tenant_removes_exactly_its_rules():
    before = desired_rules(config())
    after = desired_rules(
        config(
            tenants={"blue": {"id": 100}},
            endpoints={
                "web": {
                    "tenant": "blue",
                    "addresses": ["10.0.0.1", "fd10::1"],
                    "interface": "wl-web",
                }
            },
        )
    )
    gone = set(before.chains) - set(after.chains)
    assert {k.chain for k in gone} == {"RNV-SRC-wl-db"}
    assert len(chain(after, V6, DECAP)) == len(chain(before, V6, DECAP)) - 1
    assert all(r.ipsec_reqid != markers.reqid(200) for r in chain(after, V6, DECAP))


def test_netns_endpoint_is_guarded_on_the_veth_the_routing_driver_makes():
    rules = desired_rules(
        config(endpoints={"db": {"tenant": "red", "addresses": ["10.0.0.1"], "netns": "red-db"}})
    )
    veth = host_ifname("db", Endpoint(tenant="red", addresses=["10.0.0.1"], netns="red-db"))
    assert ChainKey(V4, "raw", f"RNV-SRC-{veth}") in rules.chains


def test_endpoint_without_interface_or_netns_is_reported():
    rules = desired_rules(config(endpoints={"db": {"tenant": "red", "addresses": ["10.0.0.1"]}}))
    assert rules.errors == (
        "endpoint db: needs an interface or a netns; no anti-spoofing rules for it",
    )


def test_render_reads_like_iptables():
    rule = Rule(target="RETURN", dst="2001:db8::1:64/128", ipsec_reqid=65636)
    assert rule.render() == (
        "-d 2001:db8::1:64/128 -m policy --dir in --pol ipsec --proto esp --reqid 65636 -j RETURN"
    )
    assert Rule(target="RNV-X", goto=True, in_interface="wl-a").render() == "-i wl-a -g RNV-X"
