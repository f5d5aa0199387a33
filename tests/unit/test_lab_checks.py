"""What the underlay capture counts as ESP, control plane, link-local or a leak (tcpdump -nn -r
lines as the lab's capture on `-i any` prints them)."""

from __future__ import annotations

from routed_nv.lab.checks import read_capture
from routed_nv.lab.topology import directory_topology

ESP = (
    "16:02:11.123456 to-host1 In  IP6 2001:db8:0:1::1:64 > 2001:db8:0:2::1:64: "
    "ESP(spi=0x00640004,seq=0x1), length 120"
)
IKE = (
    "16:02:11.2 to-host1 In  IP6 2001:db8:0:1::1.500 > 2001:db8:0:2::1.500: "
    "isakmp 2.0 msgid 00000000: parent_sa ikev2_init[I]:"
)
BGP_TO_RR = (
    "16:02:11.3 to-host2 In  IP6 2001:db8:0:2::1.40123 > 2001:db8:0:11::1.179: "
    "Flags [P.], seq 1:20, ack 1, win 502, length 19: BGP"
)
BGP_BETWEEN_HOSTS = (
    "16:02:11.4 to-host2 In  IP6 2001:db8:0:2::1.40123 > 2001:db8:0:3::1.179: "
    "Flags [S], seq 1, win 64800, length 0"
)
ND = "16:02:11.5 to-host3 Out IP6 fe80::1 > ff02::1:ff00:2: ICMP6, neighbor solicitation"
PLAINTEXT = (
    "16:02:11.6 to-host1 In  IP6 2001:db8:0:1::1:64 > 2001:db8:0:2::1:64: "
    "IP 10.0.0.1 > 10.0.0.2: ICMP echo request, id 1, seq 1, length 64"
)
ARP = "16:02:11.7 to-host1 In  ARP, Request who-has 10.0.0.2 tell 10.0.0.1, length 28"


def test_esp_control_plane_and_link_local_are_not_leaks() -> None:
    report = read_capture("\n".join([ESP, IKE, BGP_TO_RR, ND]), directory_topology())
    assert (report.esp_packets, report.esp_spis) == (1, {0x00640004})
    assert dict(report.control) == {"ike": 1, "bgp": 1}
    assert report.link_local == 1
    assert report.leaks == []


def test_plaintext_arp_and_bgp_between_hosts_are_leaks() -> None:
    report = read_capture("\n".join([PLAINTEXT, ARP, BGP_BETWEEN_HOSTS]), directory_topology())
    assert report.leaks == [PLAINTEXT, ARP, BGP_BETWEEN_HOSTS]
    assert (report.esp_packets, sum(report.control.values())) == (0, 0)


def test_esp_to_a_route_reflector_is_a_leak() -> None:
    # only hosts carry tenant traffic: ESP to anything else is not routed_nv's datapath
    to_rr = ESP.replace("2001:db8:0:2::1:64", "2001:db8:0:11::1")
    assert read_capture(to_rr, directory_topology()).leaks == [to_rr]
