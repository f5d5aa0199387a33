"""`routed-nv trace`'s decision (calc/trace.py): one test per verdict and per first reason, on
facts made by hand (the kernel's route choice, XFRM policies and SAs, the directory view)."""

import ipaddress
import json
import subprocess

import pytest
import tomli_w
from click.testing import CliRunner

from routed_nv import trace_facts
from routed_nv.calc.routing import endpoint_link_name
from routed_nv.calc.trace import Facts, KernelRoute, TraceError, Verdict, trace
from routed_nv.calc.xfrm import tenant_policies
from routed_nv.cli.trace import trace_command
from routed_nv.config.model import Config
from routed_nv.config.views import static_view
from routed_nv.model import markers, spi
from routed_nv.model.secret import Secret
from routed_nv.model.xfrm import XfrmState
from routed_nv.trace_facts import GatherError, parse_route_get
from tests.fakes import FakeIprouteXfrm

ip = ipaddress.ip_address
HOST2_BLUE = ip("2001:db8:0:2::1:64")
HOST1_BLUE = ip("2001:db8:0:1::1:64")
SPI_OUT = spi.encode(100, 1, 0)


HOST1 = {"name": "host1", "id": 1, "uplink": "eth0", "underlay_aggregate": "2001:db8::/48"}


def config() -> Config:
    return Config.model_validate(
        {
            "host": HOST1 | {"underlay_prefix": "2001:db8:0:1::/64"},
            "keying": {"mode": "static"},
            "tenants": {
                "blue": {"id": 100, "ipv4": ["10.0.0.0/24"], "ipv6": ["fd10::/64"]},
                "red": {"id": 200, "ipv4": ["10.0.0.0/24"], "ipv6": ["fd10::/64"]},
            },
            "endpoints": {
                "blue1": {"tenant": "blue", "addresses": ["10.0.0.1", "fd10::1"], "netns": "b1"},
                "blue3": {"tenant": "blue", "addresses": ["10.0.0.3"], "netns": "b3"},
                "red1": {"tenant": "red", "addresses": ["10.0.0.1", "10.0.0.5"], "netns": "r1"},
            },
            "peers": {"host2": {"id": 2, "underlay_prefix": "2001:db8:0:2::/64"}},
            "remote_endpoints": {
                "blue2": {"tenant": "blue", "addresses": ["10.0.0.2", "fd10::2"], "host": "host2"},
                "red7": {"tenant": "red", "addresses": ["10.0.0.7"], "host": "host2"},
            },
        }
    )


BLUE_REQID = markers.reqid(100)


def sa(src=HOST1_BLUE, dst=HOST2_BLUE, value=SPI_OUT, reqid=BLUE_REQID) -> XfrmState:
    return XfrmState(src, dst, value, reqid, Secret(b"\x00" * 20))


TO_HOST2 = KernelRoute(dev="rnv-t100", via=HOST2_BLUE)
NO_ROUTE = KernelRoute(error="No route to host")


ONE_SA = (sa(),)


def facts(route=TO_HOST2, states=ONE_SA, policies=None) -> Facts:
    cfg = config()
    if policies is None:
        policies = tuple(p for t in cfg.tenants.values() for p in tenant_policies(cfg, t))
    return Facts(
        cfg, static_view(cfg), "from the configuration", route, tuple(policies), tuple(states)
    )


def run(f: Facts, tenant="blue", src="10.0.0.1", dst="10.0.0.2", proto="icmp", port=None):
    return trace(f, tenant, src, dst, proto, port)


def test_a_packet_to_a_remote_endpoint_is_sent_to_its_host_over_the_tenants_sa():
    t = run(facts(), proto="tcp", port=443)
    assert (t.verdict, t.host, t.spi) == (Verdict.SENT, "host2", SPI_OUT)
    assert t.reason == f"sent to host host2 over SPI 0x{SPI_OUT:08x}"
    assert [s.what for s in t.steps] == [
        "source",
        "anti-spoofing",
        "directory",
        "route",
        "tunnel",
        "xfrm-policy",
        "sa",
        "receiver",
    ]
    assert all(s.ok for s in t.steps)
    details = {s.what: s.detail for s in t.steps}
    assert "endpoint blue1 of tenant blue on rnv-eblue1" in details["source"]
    assert "RNV-SRC-rnv-eblue1 accepts source 10.0.0.1" in details["anti-spoofing"]
    assert "announced by host host2 (2001:db8:0:2::1)" in details["directory"]
    assert "tenant 100, sender host id 1, generation 0" in details["sa"]
    assert "-d 2001:db8:0:2::1:64/128" in details["receiver"]
    assert "--reqid 65636" in details["receiver"]
    assert t.as_json()["spi"] == "0x00640004"
    assert t.as_json()["port"] == 443


def test_a_packet_to_a_local_endpoint_of_the_tenant_is_delivered_here():
    t = run(facts(route=KernelRoute(dev=endpoint_link_name("blue3"))), dst="10.0.0.3")
    assert t.verdict is Verdict.DELIVERED
    assert t.reason == "delivered locally to endpoint blue3 (rnv-eblue3)"


def test_a_workload_reaches_its_host_only_with_an_echo_request_to_the_gateway():
    host = KernelRoute(dev="rnv-v100", local=True)
    t = run(facts(route=host), dst="169.254.0.1")
    assert t.verdict is Verdict.DELIVERED and "gateway 169.254.0.1 answers" in t.reason
    t = run(facts(route=host), dst="169.254.0.1", proto="tcp", port=22)
    assert t.verdict is Verdict.DROPPED and t.steps[-1].what == "to-host"
    assert t.reason.startswith("169.254.0.1 is an address of this host: RNV-HOST drops")
    assert run(facts(route=host), src="fd10::1", dst="fe80::1").verdict is Verdict.DELIVERED


def test_a_source_no_endpoint_holds_is_dropped_first():
    t = run(facts(), src="10.0.0.9")
    assert t.verdict is Verdict.DROPPED
    assert t.reason.startswith("no endpoint for SRC 10.0.0.9 on host host1")
    assert [s.what for s in t.steps] == ["source"]


def test_a_source_of_another_tenant_is_not_this_tenants():
    t = run(facts(), src="10.0.0.5")
    assert t.verdict is Verdict.DROPPED
    assert "SRC 10.0.0.5 is not tenant blue's" in t.reason
    assert "endpoint red1 of tenant red" in t.reason


def test_an_address_only_another_tenant_holds_is_dropped_at_the_tenant_boundary():
    t = run(facts(route=NO_ROUTE), dst="10.0.0.7")
    assert t.verdict is Verdict.DROPPED
    assert t.reason.startswith("10.0.0.7 is tenant red's, not blue's")
    assert "tenant boundary" in t.reason and "No route to host" in t.reason
    assert t.steps[-1].what == "route" and not t.steps[-1].ok


def test_a_route_the_directory_has_but_the_kernel_lacks_is_drift():
    t = run(facts(route=NO_ROUTE))
    assert t.verdict is Verdict.DROPPED
    assert t.reason.startswith("no route to 10.0.0.2 in VRF rnv-v100 although the directory")
    assert "(host host2)" in t.reason


def test_an_address_nobody_holds_has_no_route():
    t = run(facts(route=NO_ROUTE), dst="10.0.0.99")
    assert t.reason.startswith("no route to 10.0.0.99 in tenant blue: no endpoint holds it")


def test_a_route_into_another_tenants_device_is_refused_as_impossible():
    t = run(facts(route=KernelRoute(dev="rnv-t200", via=ip("2001:db8:0:2::1:c8"))))
    assert t.verdict is Verdict.DROPPED
    assert "a device of tenant 200" in t.reason and "impossible" in t.reason


def test_a_policy_without_its_sa_drops_the_packet():
    t = run(facts(states=()))
    assert t.verdict is Verdict.DROPPED
    assert t.reason.startswith(
        f"no SA for the policy: src {HOST1_BLUE} dst {HOST2_BLUE} reqid {markers.reqid(100)}"
    )
    assert "0x00640004..0x00640007 towards host host2" in t.reason
    assert [s.what for s in t.steps][-2:] == ["xfrm-policy", "sa"]


def test_an_sa_of_another_tenant_or_peer_does_not_count():
    other = sa(reqid=markers.reqid(200))
    assert run(facts(states=(other,))).verdict is Verdict.DROPPED


def test_only_a_block_policy_drops_the_packet():
    blocks = [p for p in facts().policies if p.is_block]
    t = run(facts(policies=blocks))
    assert t.verdict is Verdict.DROPPED and "action block" in t.reason


def test_no_policy_at_all_would_leave_in_plaintext():
    t = run(facts(policies=()))
    assert "no XFRM out policy" in t.reason and "plaintext" in t.reason


def test_the_newest_generation_is_the_one_used():
    newer = spi.encode(100, 1, 1)
    t = run(facts(states=(sa(), sa(value=newer))))
    assert t.spi == newer
    assert "also 0x00640004" in t.steps[-2].detail


def test_ipv6_goes_in_next_header_41():
    t = run(facts(), src="fd10::1", dst="fd10::2")
    assert t.verdict is Verdict.SENT
    assert "next header 41" in next(s.detail for s in t.steps if s.what == "tunnel")


@pytest.mark.parametrize(
    ("tenant", "src", "dst", "proto", "port", "message"),
    [
        ("green", "10.0.0.1", "10.0.0.2", "icmp", None, "no tenant 'green'"),
        ("blue", "10.0.0.1", "nope", "icmp", None, "'nope' does not appear to be"),
        ("blue", "10.0.0.1", "fd10::2", "icmp", None, "not of the same IP version"),
        ("blue", "10.0.0.1", "10.0.0.2", "sctp", None, "--proto 'sctp'"),
        ("blue", "10.0.0.1", "10.0.0.2", "icmp", 80, "--port needs --proto tcp or udp"),
    ],
)
def test_questions_that_cannot_be_asked_are_one_clear_error(tenant, src, dst, proto, port, message):
    with pytest.raises(TraceError, match=message):
        trace(facts(), tenant, src, dst, proto, port)


def test_the_tenant_may_be_given_by_id():
    assert run(facts(), tenant="100").tenant == "blue"


# the gatherer's parsing and the command, with the kernel reads replaced by fakes

IPV4_VIA_INET6 = (
    '[{"dst":"10.0.0.2","via":{"family":"inet6","host":"2001:db8:0:2::1:64"},'
    '"iif":"rnv-eblue1","dev":"rnv-t100","prefsrc":"169.254.0.1","flags":["onlink"]}]'
)
IPV6_GATEWAY = (
    '[{"dst":"fd10::2","from":"fd10::1","gateway":"2001:db8:0:2::1:64","dev":"rnv-t100"}]'
)


def test_route_get_output_gives_device_and_next_hop():
    assert parse_route_get(IPV4_VIA_INET6) == TO_HOST2
    assert parse_route_get(IPV6_GATEWAY) == TO_HOST2
    assert parse_route_get('[{"dst":"10.0.0.3","dev":"rnv-eblue3"}]') == KernelRoute("rnv-eblue3")
    assert parse_route_get('[{"type":"blackhole","dst":"10.0.0.9"}]').error == "blackhole route"
    local = parse_route_get('[{"type":"local","dst":"169.254.0.1","dev":"rnv-v100"}]')
    assert local == KernelRoute(dev="rnv-v100", local=True)
    with pytest.raises(GatherError, match="cannot read"):
        parse_route_get("[]")


@pytest.fixture
def host1(tmp_path, monkeypatch):
    """host1's config file and a kernel that routes 10.0.0.2 to host2 (no agent runs)."""
    path = tmp_path / "host1.toml"
    cfg = config().model_dump(mode="json", exclude_defaults=True)
    cfg["keying"] = {"mode": "static"}
    cfg["agent"] = {"run_dir": str(tmp_path / "run")}
    path.write_text(tomli_w.dumps(cfg))
    asked = []

    def route_get(netns, src, dst, iif):
        asked.append((netns, src, dst, iif))
        return TO_HOST2 if dst == "10.0.0.2" else NO_ROUTE

    monkeypatch.setattr(trace_facts, "route_get", route_get)
    monkeypatch.setattr(trace_facts, "IprouteXfrm", FakeIprouteXfrm)
    monkeypatch.setattr(FakeIprouteXfrm, "policies", tuple(facts().policies))
    monkeypatch.setattr(FakeIprouteXfrm, "states", ONE_SA)
    return path, asked


def invoke(*args):
    return CliRunner().invoke(trace_command, list(args), env={}, catch_exceptions=False)


def test_the_command_prints_each_step_and_the_verdict(host1):
    path, asked = host1
    done = invoke("blue", "10.0.0.1", "10.0.0.2", "-c", str(path), "--netns", "h1")
    assert done.exit_code == 0, done.output
    assert asked == [("h1", "10.0.0.1", "10.0.0.2", "rnv-eblue1")]
    assert "verdict: sent: sent to host host2 over SPI 0x00640004" in done.stdout
    assert "  7. sa            ok   SPI 0x00640004" in done.stdout
    assert "(directory from the configuration: no agent answers)" in done.stdout


def test_a_dropped_packet_exits_1_with_its_reason_in_json(host1, monkeypatch):
    path, _ = host1
    monkeypatch.setattr(FakeIprouteXfrm, "states", ())
    done = invoke("blue", "10.0.0.1", "10.0.0.2", "-c", str(path), "-o", "json")
    assert done.exit_code == 1
    answer = json.loads(done.stdout)
    assert answer["verdict"] == "dropped"
    assert answer["reason"].startswith("no SA for the policy")
    assert answer["steps"][-1] == {"step": "sa", "ok": False, "detail": answer["reason"]}


def test_a_bad_question_is_one_error_line_and_exit_2(host1):
    path, asked = host1
    done = invoke("green", "10.0.0.1", "10.0.0.2", "-c", str(path))
    assert done.exit_code == 2
    assert done.stderr == "error: no tenant 'green' in this host's configuration\n"
    assert asked == []


def test_a_missing_endpoint_interface_is_one_error_naming_it(monkeypatch):
    def ip(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", 'Cannot find device "rnv-eblue1"\n')

    monkeypatch.setattr(trace_facts.subprocess, "run", ip)
    with pytest.raises(GatherError, match="interface rnv-eblue1 does not exist in netns h1: "):
        trace_facts.route_get("h1", "10.0.0.1", "10.0.0.2", "rnv-eblue1")
    monkeypatch.setattr(
        trace_facts.subprocess,
        "run",
        lambda cmd, **kw: subprocess.CompletedProcess(
            cmd, 2, "", "RTNETLINK answers: No route to host\n"
        ),
    )
    assert trace_facts.route_get(None, "10.0.0.1", "10.0.0.9", "rnv-eblue1") == NO_ROUTE
