"""`routed-nv lab demo|shell --keying ike`: the option, each host's IKE config, when the lab
counts as keyed, and the comparison of the wire's SPIs with those `sa list` reports. The lab
itself runs in tests/lab/test_lab_demo.py (kernel) and tests/lab/test_lab_charon.py."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from routed_nv.cli import lab as commands
from routed_nv.cli import main
from routed_nv.config.model import KeyingMode
from routed_nv.esp.spimap import SaRow
from routed_nv.lab import uml
from routed_nv.lab.charon import (
    LAB_RESYNC_S,
    CharonListing,
    expected_children,
    ike_config,
    ike_keying,
    keying_problems,
)
from routed_nv.lab.checks import reported_spi_problems
from routed_nv.lab.datapath import host_config
from routed_nv.lab.topology import default_topology

BLUE, RED = 100, 200
PROPOSALS = (["aes128gcm16-prfsha256-x25519"], ["aes128gcm16-x25519"])


def lab(*args: str) -> tuple[int, str]:
    done = CliRunner().invoke(main, ["lab", *args], catch_exceptions=False)
    return done.exit_code, done.output


@pytest.mark.parametrize("command", ["demo", "shell"])
def test_keying_is_an_option_of_demo_and_shell_and_static_stays_the_default(command: str) -> None:
    code, out = lab(command, "--help")
    assert code == 0
    assert "--keying [static|ike]" in out
    assert "[default: static]" in " ".join(out.split())


@pytest.mark.parametrize("command", ["demo", "shell"])
def test_an_unknown_keying_is_one_clear_error(command: str) -> None:
    code, out = lab(command, "--keying", "psk")
    assert code == 2
    assert "Invalid value for '--keying': 'psk' is not one of 'static', 'ike'." in out


@pytest.mark.parametrize(
    ("args", "keying"),
    [([], "static"), (["--keying", "ike"], "ike"), (["--keying=static"], "static")],
)
@pytest.mark.parametrize("command", ["demo", "shell"])
def test_the_keying_reaches_the_command_in_the_uml_guest(
    command: str, args: list[str], keying: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    guest: list[list[str]] = []
    monkeypatch.setattr(uml, "needs_uml", lambda: True)
    monkeypatch.setattr(uml, "run_in_uml", lambda argv, **_: guest.append(list(argv)) or 0)
    code, _ = lab(command, *args, "--directory", "static")
    assert code == 0
    (argv,) = guest
    assert argv[argv.index("--keying") + 1] == keying
    assert argv[argv.index("--directory") + 1] == "static"


def test_a_hosts_ike_config_keys_through_its_charon_with_the_lab_psk(tmp_path: Path) -> None:
    topology = default_topology()
    static = host_config(topology, topology.host("host2"), tmp_path / "keys")
    socket, psk = tmp_path / "host2" / "charon" / "charon.vici", tmp_path / "host2" / "psk"

    config = ike_config(static, ike_keying(socket, {"psk_file": str(psk)}, PROPOSALS))

    k = config.keying
    assert (k.mode, k.psk_file, k.vici_socket) == (KeyingMode.IKE, psk, socket)
    assert (k.ike_proposals, k.esp_proposals) == PROPOSALS
    # the agent reconciles often, so a restarted charon gets its connections back quickly
    assert config.agent.resync_interval_s == LAB_RESYNC_S
    assert config.model_dump(exclude={"keying", "agent"}) == static.model_dump(
        exclude={"keying", "agent"}
    )


def test_every_host_needs_a_child_sa_per_peer_and_shared_tenant() -> None:
    expected = expected_children(default_topology())
    assert expected["host1"] == {("host2", BLUE), ("host2", RED), ("host3", BLUE), ("host3", RED)}
    assert sum(len(pairs) for pairs in expected.values()) == 12


def keyed() -> dict[str, CharonListing]:
    """Three charons as routed_nv wants them: SPIs 0x<from><to><tenant> for readability."""
    hosts = ("host1", "host2", "host3")
    listings = {}
    for i, host in enumerate(hosts, 1):
        children = [
            SaRow(
                peer,
                tenant,
                spi_in=0xC0000000 + j * 0x100 + i * 0x10 + tenant // 100,
                spi_out=0xC0000000 + i * 0x100 + j * 0x10 + tenant // 100,
                state="INSTALLED",
                child=f"rnv-{peer}-t{tenant}",
            )
            for j, peer in enumerate(hosts, 1)
            if peer != host
            for tenant in (BLUE, RED)
        ]
        ike = [(f"rnv-{peer}", "ESTABLISHED") for peer in hosts if peer != host]
        listings[host] = CharonListing(ike, children)
    return listings


def test_a_lab_keyed_as_routed_nv_wants_it_has_no_problems() -> None:
    assert keying_problems(expected_children(default_topology()), keyed()) == []


def test_duplicates_missing_and_unfinished_sas_are_problems() -> None:
    listings = keyed()
    h1, h2 = listings["host1"], listings["host2"]
    h1.ike_sas.append(("rnv-host2", "CONNECTING"))  # both ends initiated at once
    h1.children.append(h1.children[0])  # a CHILD_SA twice
    h2.children[:] = [r for r in h2.children if (r.peer, r.tenant) != ("host3", RED)]
    h2.ike_sas.append(("other-conn", "ESTABLISHED"))  # not ours: ignored
    listings["host3"].children[0] = SaRow("host1", BLUE, None, None, "CREATED", "rnv-host1-t100")

    problems = keying_problems(expected_children(default_topology()), listings)

    assert "host1: 2 IKE_SAs rnv-host2 (CONNECTING, ESTABLISHED)" in problems
    assert "host1: 2 CHILD_SAs to host2 for tenant 100" in problems
    assert "host2: 0 CHILD_SAs to host3 for tenant 200" in problems
    assert "host3: rnv-host1-t100 CREATED" in problems
    assert not any("other-conn" in p for p in problems)


def test_ends_that_disagree_on_the_spis_are_a_problem() -> None:
    listings = keyed()
    row = listings["host1"].children[0]
    listings["host1"].children[0] = SaRow(row.peer, row.tenant, row.spi_in, 0x1234, "INSTALLED")
    problems = keying_problems(expected_children(default_topology()), listings)
    assert len(problems) == 2  # seen from both ends
    assert problems[0].startswith("host1:  SPIs differ from host2's")


def sa_list_rows(listings: dict[str, CharonListing]) -> list[dict[str, object]]:
    return [r.as_json() for listing in listings.values() for r in listing.children]


def wire_spis(listings: dict[str, CharonListing]) -> set[int]:
    return {r.spi_out for listing in listings.values() for r in listing.children}  # type: ignore[misc]


def test_the_wire_carrying_exactly_the_reported_spis_is_no_problem() -> None:
    listings = keyed()
    assert len(wire_spis(listings)) == 12  # 3 host pairs x 2 tenants x 2 directions
    assert reported_spi_problems(wire_spis(listings), sa_list_rows(listings)) == []


def test_an_unreported_or_an_unused_spi_on_the_wire_is_a_problem() -> None:
    listings = keyed()
    rows = sa_list_rows(listings)
    spis = wire_spis(listings)
    unused = min(spis)
    problems = reported_spi_problems((spis - {unused}) | {0x00640004}, rows)
    assert problems == [
        "on the wire, not reported: 0x00640004",
        f"reported, not on the wire: 0x{unused:08x}",
    ]


def test_a_row_without_spis_or_an_spi_no_end_receives_on_is_a_problem() -> None:
    listings = keyed()
    rows = sa_list_rows(listings)
    rows[0] = {**rows[0], "spi_in": None}
    rows[1] = {**rows[1], "spi_out": "0x00000400"}
    problems = reported_spi_problems(wire_spis(listings), rows)
    assert problems[0] == f"rows without both SPIs: {rows[0]['child']}"
    # the row's real outbound SPI is now one its peer receives on that nobody sends with
    assert problems[1].startswith("sent with, received on by no host: 0x00000400")
    assert problems[2].startswith("received on, sent with by no host: ")


def test_the_lab_shell_names_the_run_directory_and_finds_rnv_host_and_routed_nv() -> None:
    env = commands._shell_env("/tmp/rnv-lab-x", Path("/tmp/rnv-lab-x/bin"))
    assert env["RNV_LAB"] == "/tmp/rnv-lab-x"
    assert env["PATH"].split(":")[:2] == ["/tmp/rnv-lab-x/bin", str(Path(sys.executable).parent)]
    assert env["PATH"].endswith(os.environ.get("PATH", os.defpath))
