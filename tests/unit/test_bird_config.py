"""The rendered BIRD configs: what they must contain, that BIRD parses them, and the secret."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path
from typing import Any

import pytest

from routed_nv.config.model import Config, Upstream
from routed_nv.directory import bird_config
from routed_nv.directory.bird_config import BirdConfigError
from routed_nv.model import markers

needs_bird = pytest.mark.skipif(shutil.which("bird") is None, reason="bird is not installed")
OLD = bird_config.BirdVersion(2, 0, 12)  # Debian 12
NEW = bird_config.BirdVersion(2, 17, 1)  # Debian 13


def config(**directory: Any) -> Config:
    return Config.model_validate(
        {
            "host": {
                "name": "host1",
                "id": 258,
                "underlay_prefix": "2001:db8:0:1::/64",
                "underlay_aggregate": "2001:db8::/48",
                "uplink": "uplink",
            },
            "directory": {"route_reflectors": ["2001:db8:0:11::1", "2001:db8:0:12::1"]} | directory,
            "tenants": {
                "blue": {"id": 100, "ipv4": ["10.0.0.0/24"], "ipv6": ["fd10::/64"]},
                "red": {"id": 200, "ipv4": ["10.0.0.0/24"]},
            },
        }
    )


def test_router_id_is_the_host_id() -> None:
    assert "router id 0.0.1.2;" in bird_config.render_host(config(), None, version=OLD)


def test_every_route_reflector_gets_a_multihop_session_from_the_host_address() -> None:
    text = bird_config.render_host(config(), None, version=OLD)
    for i, rr in ((1, "2001:db8:0:11::1"), (2, "2001:db8:0:12::1")):
        assert f"protocol bgp rr{i} {{" in text
        assert f"local 2001:db8:0:1::1 as 65000; neighbor {rr} as 65000; multihop;" in text
    assert text.count("long lived graceful restart on;") == 2
    assert text.count("add paths on;") == 4
    assert text.count("extended next hop on;") == 2  # ipv4 channels only


def test_tenant_tables_only_for_families_with_subnets() -> None:
    text = bird_config.render_host(config(), None, version=OLD)
    assert "ipv4 table t4_100;" in text and "ipv6 table t6_100;" in text
    assert "ipv4 table t4_200;" in text and "t6_200" not in text


def test_publish_learns_only_endpoint_routes_of_the_publish_table() -> None:
    text = bird_config.render_host(config(), None, version=OLD)
    assert f"kernel table {markers.publish_table(100)}; learn;" in text
    assert f"import where krt_source = {markers.RTPROT_ENDPOINT};" in text
    assert "bgp_large_community.add((65000, 1, 100));" in text
    # the sequence rides on the metric above the family's kernel default
    assert "if krt_metric > 1024 then" in text and "(65000, 2, krt_metric - 1024)" in text
    assert "(65000, 2, krt_metric))" in text


def test_mirror_exports_the_owner_as_onlink_gateway() -> None:
    text = bird_config.render_host(config(), None, version=OLD)
    assert f"kernel table {markers.mirror_table(200)}; persist;" in text
    assert "onlink = true; gw = bgp_next_hop; accept;" in text


def test_a_moved_endpoint_is_preferred_by_its_sequence() -> None:
    text = bird_config.render_host(config(), None, version=OLD)
    assert "bgp_local_pref = 100 + filter(bgp_large_community, [(65000, 2, *)]).max.data2;" in text


def test_the_mirror_route_carries_a_moved_endpoints_sequence_in_its_window() -> None:
    text = bird_config.render_host(config(), None, version=OLD)
    assert (
        "if bgp_large_community ~ [(65000, 2, *)] then "
        "krt_window = filter(bgp_large_community, [(65000, 2, *)]).max.data2;"
    ) in text


def test_a_route_for_several_tenants_ranks_last_and_is_marked_in_the_mirror_table() -> None:
    text = bird_config.render_host(config(), None, version=OLD)
    tags = "filter(bgp_large_community, [(65000, 1, *)]).len"
    assert f"if {tags} > 1 then bgp_local_pref = 0;" in text
    assert f"if {tags} > 1 then krt_advmss = {tags};" in text


def test_upstreams_get_the_host_prefix_and_give_underlay_routes() -> None:
    text = bird_config.render_host(
        config(upstreams=[{"address": "fe80::1", "asn": 65100}]), None, version=OLD
    )
    assert "route 2001:db8:0:1::/64 unreachable;" in text
    assert 'neighbor fe80::1 as 65100; interface "uplink";' in text
    assert "import where net ~ [2001:db8::/48+] && !(net ~ [2001:db8:0:1::/64+]);" in text
    assert "protocol bgp upstream" not in bird_config.render_host(config(), None, version=OLD)


def test_route_reflector_sessions_retry_soon_while_the_underlay_comes_up() -> None:
    text = bird_config.render_host(config(), None, version=OLD)
    assert text.count(f"connect retry time {bird_config.RR_CONNECT_RETRY_S};") == 2


def test_the_upstream_connects_first_and_the_route_reflectors_soon_after() -> None:
    """BIRD's default 5 s before a first connect: the underlay routes from the upstream are
    there before the route reflector sessions' first attempt, which then needs no retry."""
    upstream = [{"address": "fe80::1", "asn": 65100}]
    text = bird_config.render_host(config(upstreams=upstream), None, version=OLD)
    blocks = {b.split(" ", 1)[0]: b for b in text.split("protocol bgp ")[1:]}
    assert f"connect delay time {bird_config.UPSTREAM_CONNECT_DELAY_S};" in blocks["upstream1"]
    for rr in ("rr1", "rr2"):
        assert f"connect delay time {bird_config.RR_CONNECT_DELAY_S};" in blocks[rr]
    assert bird_config.UPSTREAM_CONNECT_DELAY_S < bird_config.RR_CONNECT_DELAY_S < 5


AGGREGATE = ipaddress.IPv6Network("2001:db8::/48")


def route_reflector(upstreams: bird_config.UpstreamSessions | None = None) -> str:
    address = ipaddress.IPv6Address("2001:db8:0:11::1")
    return bird_config.render_route_reflector(
        11, address, AGGREGATE, 65000, None, upstreams=upstreams, version=OLD
    )


def test_route_reflector_keeps_bgp_apart_from_the_underlay_and_may_announce_its_prefix() -> None:
    assert "protocol bgp upstream" not in route_reflector()
    ups = (Upstream(address=ipaddress.IPv6Address("fe80::1"), asn=65100),)
    own = ipaddress.IPv6Network("2001:db8:0:11::/64")
    text = route_reflector(bird_config.UpstreamSessions(own, AGGREGATE, "uplink", ups))
    # reflected routes live in bgp4/bgp6: neither the underlay's routes reach the hosts through
    # the reflector nor tenant routes reach the reflector's kernel
    assert text.count("table bgp6;") == 2 and "ipv4 { table bgp4;" in text
    assert "route 2001:db8:0:11::/64 unreachable;" in text
    assert 'neighbor fe80::1 as 65100; interface "uplink";' in text
    assert "export where source = RTS_BGP;" in text  # eBGP-learned underlay into the kernel


def test_route_reflector_recovery_is_bounded() -> None:
    # its dynamic template never sends End-of-RIB: recovery would last BIRD's 240 s default
    assert f"\ngraceful restart wait {bird_config.RR_RECOVERY_WAIT_S};\n" in route_reflector()
    assert "graceful restart wait" not in bird_config.render_host(config(), None, version=OLD)


def test_top_of_rack_peers_per_port_and_announces_only_the_aggregate() -> None:
    text = bird_config.render_top_of_rack(0xFFFF, 65100, AGGREGATE, ["to-host1", "to-rr1"])
    assert "router id 0.0.255.255;" in text
    assert "local as 65100; neighbor range fe80::/64 external;" in text
    for port, name in (("to-host1", "port_to_host1"), ("to-rr1", "port_to_rr1")):
        assert (
            f'protocol bgp {name} from host_port {{ interface "{port}"; dynamic name "{name}_"; }}'
            in text
        )
    assert "route 2001:db8::/48 unreachable;" in text
    assert "import where net ~ [2001:db8::/48{64,64}];" in text
    assert 'export where proto = "aggregate";' in text
    assert "graceful restart on;" in text  # a host's BIRD restart keeps its /64


def test_password_is_read_from_its_file_and_rendered(tmp_path: Path) -> None:
    secret = tmp_path / "bgp.key"
    secret.write_text("s3cr3t\n")
    password = bird_config.read_password(secret)
    assert password == "s3cr3t"
    assert bird_config.render_host(config(), password, version=OLD).count('password "s3cr3t";') == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "is empty"), ('a"b\n', "cannot quote"), (None, "cannot read")],
)
def test_bad_password_files_are_clear_errors(
    tmp_path: Path, content: str | None, message: str
) -> None:
    secret = tmp_path / "bgp.key"
    if content is not None:
        secret.write_text(content)
    with pytest.raises(BirdConfigError, match=message) as caught:
        bird_config.read_password(secret)
    assert 'a"b' not in str(caught.value)


def test_write_private_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "bird.conf"
    bird_config.write_private(path, "x")
    assert path.read_text() == "x" and path.stat().st_mode & 0o777 == 0o600


@needs_bird
def test_bird_parses_the_host_config(tmp_path: Path) -> None:
    path = tmp_path / "bird.conf"
    upstream = [{"address": "2001:db8:ff::1", "asn": 65100}]
    bird_config.write_private(
        path,
        bird_config.render_host(
            config(upstreams=upstream),
            "pw",
            tmp_path / "log",
            version=bird_config.installed_version(),
        ),
    )
    bird_config.check(path)


@needs_bird
def test_bird_parses_the_route_reflector_config(tmp_path: Path) -> None:
    path = tmp_path / "rr.conf"
    text = bird_config.render_route_reflector(
        11,
        ipaddress.IPv6Address("2001:db8:0:11::1"),
        ipaddress.IPv6Network("2001:db8::/48"),
        65000,
        "pw",
        version=bird_config.installed_version(),
    )
    assert "neighbor range 2001:db8::/48 as 65000; multihop;" in text
    assert "rr client;" in text
    path.write_text(text)
    bird_config.check(path)


@needs_bird
def test_bird_parses_the_top_of_rack_and_upstream_route_reflector_configs(tmp_path: Path) -> None:
    tor = tmp_path / "tor.conf"
    tor.write_text(bird_config.render_top_of_rack(0xFFFF, 65100, AGGREGATE, ["to-host1"]))
    bird_config.check(tor)
    ups = (Upstream(address=ipaddress.IPv6Address("fe80::1"), asn=65100),)
    own = ipaddress.IPv6Network("2001:db8:0:11::/64")
    rr = tmp_path / "rr.conf"
    sessions = bird_config.UpstreamSessions(own, AGGREGATE, "uplink", ups)
    rr.write_text(
        bird_config.render_route_reflector(
            11,
            ipaddress.IPv6Address("2001:db8:0:11::1"),
            AGGREGATE,
            65000,
            None,
            upstreams=sessions,
            version=bird_config.installed_version(),
        )
    )
    bird_config.check(rr)


@needs_bird
def test_check_reports_birds_own_words(tmp_path: Path) -> None:
    path = tmp_path / "bad.conf"
    path.write_text("router id 1.2.3.4;\nprotocol nonsense {}\n")
    with pytest.raises(BirdConfigError, match=r"BIRD rejects .*bad.conf: .*bad.conf:2"):
        bird_config.check(path)


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("BIRD version 2.0.12\n", OLD),
        ("BIRD version 2.17.1\n", NEW),
        ("BIRD version 3.1\n", bird_config.BirdVersion(3, 1, 0)),
    ],
)
def test_birds_version_is_read_from_its_own_words(
    text: str, version: bird_config.BirdVersion
) -> None:
    assert bird_config.BirdVersion.parse(text) == version


def test_an_unreadable_version_is_a_clear_error() -> None:
    with pytest.raises(BirdConfigError, match="cannot read BIRD's version from 'bird: nope'"):
        bird_config.BirdVersion.parse("bird: nope")


def test_the_md5_password_is_named_for_bird_2_16_and_later_only() -> None:
    # BIRD >= 2.16 warns once per session and per reload without `authentication md5;`
    # (1,076 lines in one demo console on Debian 13); BIRD 2.0.12 rejects the option
    assert "authentication" not in bird_config.render_host(config(), "pw", version=OLD)
    new = bird_config.render_host(config(), "pw", version=NEW)
    assert new.count('password "pw";\n  authentication md5;') == 2
    assert "authentication" not in bird_config.render_host(config(), None, version=NEW)


@needs_bird
def test_the_installed_bird_takes_its_own_syntax_silently_and_not_the_other(
    tmp_path: Path,
) -> None:
    """Run on Debian 12 (BIRD 2.0.12) and 13 (2.17) alike: the detection is what makes it pass."""
    import subprocess

    mine = bird_config.installed_version()
    other = NEW if mine < bird_config.BirdVersion(2, 16) else OLD
    for version, path in ((mine, tmp_path / "mine.conf"), (other, tmp_path / "other.conf")):
        path.write_text(bird_config.render_host(config(), "pw", version=version))
    done = subprocess.run(
        ["bird", "-p", "-c", str(tmp_path / "mine.conf")], capture_output=True, text=True
    )
    assert done.returncode == 0 and "authentication" not in done.stderr + done.stdout
    done = subprocess.run(
        ["bird", "-p", "-c", str(tmp_path / "other.conf")], capture_output=True, text=True
    )
    if other == NEW:  # 2.0.12 does not know the option
        assert done.returncode != 0
    else:  # 2.16+ accepts a bare password but warns
        assert "Missing authentication option" in done.stderr + done.stdout
