"""The BIRD control-socket client against a fake BIRD speaking the reply-code protocol."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from routed_nv.directory.birdc import BirdClient, BirdError, CommandError
from tests.fakes import FakeBirdSocket

Script = Callable[[str], str]

PROTOCOLS = (
    "2002-Name       Proto      Table      State  Since         Info\n"
    "1002-device1    Device     ---        up     19:58:21.609  \n"
    " p4_100     Pipe       ---        up     19:58:21.609  t4_100 <=> bgp4\n"
    " rr1        BGP        ---        up     2026-11-23 19:58:25  Established   \n"
    " rr2        BGP        ---        start  19:58:21.609  Active        Socket: Refused\n"
    "0000 \n"
)
ROUTES = (
    "1007-Table master4:\n"
    "1007-10.0.0.1/32          unicast [host1 19:58:44.419 from 2001:db8:0:1::1] * (100/?) [i]\n"
    "1007-\tvia fe80::1 on uplink\n"
    "1008-\tType: BGP univ\n"
    "1012-\tBGP.origin: IGP\n"
    " \tBGP.next_hop: 2001:db8:0:1::1\n"
    " \tBGP.large_community: (65000, 1, 100)\n"
    "1007-                     unicast [host2 19:58:44.420 from 2001:db8:0:2::1] (100/?) [i]\n"
    "1012-\tBGP.next_hop: 2001:db8:0:2::1\n"
    " \tBGP.large_community: (65000, 1, 200) (65000, 2, 5)\n"
    "0000 \n"
)
# `show route table mt4_100 noexport m4_100 all` from BIRD 2.0.12: a path whose foreign next hop
# failed the mirror export (no gateway, so "unreachable"), with what the filter had set
NOEXPORT = (
    "1007-Table mt4_100:\n"
    " 10.0.0.78/32         unreachable [rr1 21:06:38.992 from 2001:db8:0:11::1] * (100) [i]\n"
    "1008-\tType: BGP univ\n"
    "1012-\tBGP.origin: IGP\n"
    " \tBGP.as_path: \n"
    " \tBGP.next_hop: 2001:db9:0:7::1\n"
    " \tBGP.local_pref: 103\n"
    " \tBGP.large_community: (65000, 1, 100) (65000, 2, 3)\n"
    " \tKernel.window: 3\n"
    "0000 \n"
)
MEMORY = (
    "1018-BIRD memory usage\n"
    "                  Effective    Overhead\n"
    " Routing tables:     32.0 kB     17.0 kB\n"
    " Total:             114.4 kB     84.5 kB\n"
    "0000 \n"
)


def default_script(command: str) -> str:
    answers = {
        "show protocols": PROTOCOLS,
        "show route all": ROUTES,
        "show route for 10.9.9.9 all": "8001 Network not found\n",
        "show memory": MEMORY,
        "show route table mt4_100 noexport m4_100 all": NOEXPORT,
        'configure check "/x.conf"': "0002-Reading configuration from /x.conf\n"
        "0020 Configuration OK\n",
        'configure "/x.conf"': "0002-Reading configuration from /x.conf\n0003 Reconfigured\n",
        'configure "/bad.conf"': "0002-Reading configuration from /bad.conf\n"
        "8002 /bad.conf:3:1 syntax error, unexpected CF_SYM_UNDEFINED\n",
        "echo": "+2026-11-23 <INFO> something happened\n0000 \n",
    }
    return answers.get(command, "9001 syntax error, unexpected CF_SYM_UNDEFINED\n")


@pytest.fixture
def bird(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    fakes: list[FakeBirdSocket] = []

    def start(
        script: Script = default_script, greeting: str = "0001 BIRD 2.0.12 ready.\n", chunk: int = 7
    ) -> Path:
        path = tmp_path / f"bird{len(fakes)}.ctl"
        fakes.append(FakeBirdSocket(path, script, greeting, chunk))
        return path

    yield start
    for fake in fakes:
        fake.close()


def test_greeting_gives_the_version(bird: Callable[..., Path]) -> None:
    with BirdClient(bird()) as client:
        assert client.version == "BIRD 2.0.12"


def test_show_protocols_parses_rows_with_continuations_and_both_time_formats(
    bird: Callable[..., Path],
) -> None:
    with BirdClient(bird()) as client:
        rows = {p.name: p for p in client.protocols()}
    assert list(rows) == ["device1", "p4_100", "rr1", "rr2"]
    assert rows["rr1"].session == "Established"
    assert rows["rr1"].since == "2026-11-23 19:58:25"
    assert (rows["rr2"].state, rows["rr2"].session) == ("start", "Active")
    assert rows["rr2"].info == "Active        Socket: Refused"
    assert rows["p4_100"].info == "t4_100 <=> bgp4"


def test_show_route_keeps_every_path_with_its_communities(bird: Callable[..., Path]) -> None:
    with BirdClient(bird()) as client:
        first, second = client.routes()
    assert (first.table, first.prefix, first.protocol, first.primary) == (
        "master4",
        "10.0.0.1/32",
        "host1",
        True,
    )
    assert first.next_hop == ipaddress.IPv6Address("2001:db8:0:1::1")
    assert first.large_communities == [(65000, 1, 100)]
    assert (second.prefix, second.protocol, second.primary) == ("10.0.0.1/32", "host2", False)
    assert second.large_communities == [(65000, 1, 200), (65000, 2, 5)]


def test_a_path_the_mirror_export_refused_keeps_its_next_hop_and_communities(
    bird: Callable[..., Path],
) -> None:
    with BirdClient(bird()) as client:
        (path,) = client.routes("table mt4_100 noexport m4_100")
    assert (path.table, path.prefix, path.protocol) == ("mt4_100", "10.0.0.78/32", "rr1")
    assert path.next_hop == ipaddress.IPv6Address("2001:db9:0:7::1")
    assert path.large_communities == [(65000, 1, 100), (65000, 2, 3)]


def test_route_not_found_is_an_empty_lookup(bird: Callable[..., Path]) -> None:
    with BirdClient(bird()) as client:
        assert client.routes("for 10.9.9.9") == []


def test_memory_total_in_bytes(bird: Callable[..., Path]) -> None:
    with BirdClient(bird()) as client:
        assert client.memory() == int(114.4 * 1024)


def test_configure_check_then_configure(bird: Callable[..., Path]) -> None:
    with BirdClient(bird()) as client:
        client.configure_check(Path("/x.conf"))
        assert client.configure(Path("/x.conf")) == "Reconfigured"


def test_configure_error_names_file_line_and_code(bird: Callable[..., Path]) -> None:
    with BirdClient(bird()) as client, pytest.raises(CommandError) as caught:
        client.configure(Path("/bad.conf"))
    assert caught.value.code == 8002
    assert "/bad.conf:3:1 syntax error" in str(caught.value)


def test_parse_error_then_the_connection_is_still_usable(bird: Callable[..., Path]) -> None:
    with BirdClient(bird()) as client:
        with pytest.raises(CommandError, match=r"refused `show foo`.*code 9001"):
            client.command("show foo")
        assert client.command("show memory").code == 0


def test_asynchronous_lines_are_set_aside(bird: Callable[..., Path]) -> None:
    with BirdClient(bird()) as client:
        reply = client.command("echo")
        assert reply.code == 0
        assert client.messages == ["2026-11-23 <INFO> something happened"]


def test_missing_socket_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BirdError, match=r"cannot connect to BIRD at .*nope.ctl: No such file"):
        BirdClient(tmp_path / "nope.ctl").connect()


def test_not_bird_is_a_clear_error(bird: Callable[..., Path]) -> None:
    with pytest.raises(BirdError, match="is not a BIRD control socket"):
        BirdClient(bird(greeting="0000 hello\n")).connect()


def test_silence_times_out_with_the_command_named(bird: Callable[..., Path]) -> None:
    expected = r"did not answer `configure` within 0\.2 s"
    with (
        BirdClient(bird(script=lambda _: "HANG"), timeout=0.2) as client,
        pytest.raises(BirdError, match=expected),
    ):
        client.command("configure")


def test_garbage_line_is_a_clear_error(bird: Callable[..., Path]) -> None:
    with (
        BirdClient(bird(script=lambda _: "hello\n")) as client,
        pytest.raises(BirdError, match="unexpected line from BIRD"),
    ):
        client.command("show status")


def test_one_line_commands_only(bird: Callable[..., Path]) -> None:
    with BirdClient(bird()) as client, pytest.raises(BirdError, match="one line"):
        client.command("show status\nconfigure")
