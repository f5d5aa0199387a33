"""Parsers of the benchmark's tool output, and the in-workload frame builders."""

from __future__ import annotations

import ipaddress
import json
from ipaddress import IPv6Address

import pytest

from routed_nv.bench import parse, tools


def test_iperf3_reads_what_the_server_received() -> None:
    text = json.dumps(
        {
            "end": {
                "sum_received": {"bits_per_second": 4.5e8, "bytes": 112500000},
                "sum_sent": {"bits_per_second": 4.6e8, "bytes": 115000000, "retransmits": 3},
            }
        }
    )
    assert parse.iperf3(text) == parse.Iperf(4.5e8, 112500000, 3)


def test_iperf3_error_is_raised() -> None:
    with pytest.raises(ValueError, match="unable to connect"):
        parse.iperf3(json.dumps({"error": "unable to connect to server"}))


def test_proc_stat_busy_excludes_idle_and_iowait() -> None:
    text = "cpu  100 5 50 800 20 3 7 0 0 0\ncpu0 100 5 50 800 20 3 7 0 0 0\nintr 1\n"
    assert parse.proc_stat(text) == parse.CpuTimes(busy=165, total=985)


def test_percentile_is_nearest_rank() -> None:
    samples = list(range(1, 101))
    assert parse.percentile(samples, 50) == 50
    assert parse.percentile(samples, 99) == 99
    assert parse.percentile([7.0], 99) == 7.0


PING = """PING fd10::2(fd10::2) 56 data bytes
[1795464590.100000] 64 bytes from fd10::2: icmp_seq=1 ttl=64 time=0.500 ms
[1795464590.110000] 64 bytes from fd10::2: icmp_seq=2 ttl=64 time=0.400 ms
[1795464592.300000] 64 bytes from fd10::2: icmp_seq=200 ttl=64 time=1.00 ms
"""


def test_first_reply_to_a_probe_sent_after_the_break() -> None:
    replies = parse.ping_replies(PING)
    assert len(replies) == 3
    assert parse.first_reply_sent_after(replies, 1795464590.2) == 1795464592.3
    assert parse.first_reply_sent_after(replies, 1795464593.0) is None


def test_xfrm_counts() -> None:
    assert parse.xfrm_counts("\t SAD count 8\n", "\t SPD IN  8 OUT 8 FWD 0\n") == (8, 16)
    with pytest.raises(ValueError):
        parse.xfrm_counts("", "")


def test_vxlan_fdb_counts_entries_that_point_at_a_host() -> None:
    text = """33:33:00:00:00:01 dev uplink self permanent
de:31:ca:c9:e7:df dev wl-blue1 master br100
00:00:00:00:00:00 dev vx100 dst 2001:db8:0:2:ffff::1 self permanent
96:1a:29:ca:db:f3 dev vx100 dst 2001:db8:0:3:ffff::1 self
96:1a:29:ca:db:f3 dev vx100 master br100
"""
    assert parse.vxlan_fdb_entries(text) == 2


def test_crypto_drivers_by_algorithm_name() -> None:
    text = """name         : rfc4106(gcm(aes))
driver       : rfc4106(gcm_base(ctr(aes-generic),ghash-generic))
module       : kernel

name         : aes
driver       : aes-generic
module       : kernel
"""
    assert parse.crypto_drivers(text, ["rfc4106(gcm(aes))", "aes", "ghash"]) == {
        "rfc4106(gcm(aes))": ["rfc4106(gcm_base(ctr(aes-generic),ghash-generic))"],
        "aes": ["aes-generic"],
        "ghash": [],
    }


def test_openssl_speed_reads_bytes_per_second() -> None:
    text = "+DT:AES-128-GCM:1:1024\n+R:1922792:AES-128-GCM:1.000000\n+H:1024\n"
    assert parse.openssl_speed(text + "+F:25:AES-128-GCM:1968939008.00\n") == 1968939008.0
    with pytest.raises(ValueError, match=r"\+F:"):
        parse.openssl_speed(text)


def test_cpu_busy_is_per_cpu() -> None:
    before = "cpu  0 0 0 0 0 0 0 0\ncpu0 10 0 0 90 0 0 0 0\ncpu1 0 0 0 100 0 0 0 0\n"
    after = "cpu  0 0 0 0 0 0 0 0\ncpu0 60 0 0 140 0 0 0 0\ncpu1 25 0 0 175 0 0 0 0\n"
    assert parse.cpu_busy(before, after) == [0.5, 0.25]


def test_esp_algorithms_of_the_sas() -> None:
    text = """src 2001:db8:0:1::1 dst 2001:db8:0:2::1
\tproto esp spi 0x00640102 reqid 100 mode transport
\treplay-window 0
\taead rfc4543(gcm(aes)) 0x00 128
src 2001:db8:0:2::1 dst 2001:db8:0:1::1
\tproto esp spi 0x00640201 reqid 100 mode transport
\tenc ecb(cipher_null)\x20
\tanti-replay context: seq 0x0, oseq 0x0, bitmap 0x00000000
"""
    assert parse.esp_algorithms(text) == ["aead rfc4543(gcm(aes))", "enc ecb(cipher_null)"]


def test_cpu_model() -> None:
    assert parse.cpu_model("processor : 0\nmodel name\t: AMD EPYC\n") == "AMD EPYC"
    assert parse.cpu_model("") == "unknown"


MAC = bytes.fromhex("020000000001")


def test_gratuitous_arp_announces_its_own_address() -> None:
    frame = tools.garp(MAC, ipaddress.IPv4Address("10.0.0.2"))
    assert frame[:6] == b"\xff" * 6 and frame[12:14] == b"\x08\x06"
    arp = frame[14:]
    assert arp[14:18] == arp[24:28] == bytes([10, 0, 0, 2])  # sender == target address


def test_dad_probe_goes_from_unspecified_to_the_solicited_node_group() -> None:
    target = IPv6Address("fd10::2")
    frame = tools.dad_probe(MAC, target)
    ip6 = frame[14:54]
    assert frame[:6] == bytes.fromhex("3333ff000002")
    assert IPv6Address(ip6[8:24]) == IPv6Address("::")
    assert IPv6Address(ip6[24:40]) == IPv6Address("ff02::1:ff00:2")
    assert ip6[7] == 255  # hop limit: receivers drop ND with any other
    icmp = frame[54:]
    assert icmp[0] == 135 and IPv6Address(icmp[8:24]) == target
    pseudo = ip6[8:40] + len(icmp).to_bytes(4, "big") + b"\0\0\0\x3a"
    assert tools._checksum(pseudo + icmp) == 0  # a correct checksum sums to zero


def test_announce_command_line() -> None:
    argv = tools.announce_argv("eth0", ipv4="10.0.0.2", rounds=5)
    assert argv[1:] == [
        "-m",
        "routed_nv.bench.tools",
        "announce",
        "eth0",
        "--rounds",
        "5",
        "--ipv4",
        "10.0.0.2",
    ]
