"""`routed-nv sa ...`: the ESP SAs of this host, with the tenant and peer each SPI belongs to."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import click

from routed_nv.cli.agent_client import table
from routed_nv.config.model import Config, KeyingMode
from routed_nv.errors import RoutedNvError
from routed_nv.esp.spimap import SaRow, rows_from_sas, rows_from_states
from routed_nv.esp.xfrm import IprouteXfrm, XfrmError
from routed_nv.options import config_option, config_or_exit, netns_option, output_option

EXIT_OK = 0
EXIT_FAILED = 2

_COLUMNS = (
    ("PEER", lambda r: r.peer),
    ("TENANT", lambda r: f"{r.tenant_name} ({r.tenant})" if r.tenant_name else str(r.tenant)),
    ("SPI-IN", lambda r: _spi(r.spi_in)),
    ("SPI-OUT", lambda r: _spi(r.spi_out)),
    ("STATE", lambda r: r.state),
    ("GEN", lambda r: _opt(r.generation)),
    ("BYTES-IN", lambda r: _opt(r.bytes_in)),
    ("BYTES-OUT", lambda r: _opt(r.bytes_out)),
    ("PKTS-IN", lambda r: _opt(r.packets_in)),
    ("PKTS-OUT", lambda r: _opt(r.packets_out)),
    ("ERR-IN", lambda r: _opt(r.errors_in)),
    ("ERR-OUT", lambda r: _opt(r.errors_out)),
    ("REKEY-IN", lambda r: _secs(r.rekey_in_s)),
    ("UP-FOR", lambda r: _secs(r.established_s)),
)


@click.group("sa")
def sa_group() -> None:
    """The ESP security associations of this host."""


@sa_group.command("list")
@config_option
@netns_option
@click.option(
    "--vici-socket",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="charon's VICI socket (IKE keying) [default: keying.vici_socket].",
)
@output_option
def list_command(
    config_path: Path | None, netns: str | None, vici_socket: Path | None, output: str
) -> None:
    """List every ESP SA pair: peer, tenant (name and id), inbound and outbound SPI, state and
    counters.

    With IKE keying the SPIs are charon's (random); the tenant comes from the CHILD_SA's reqid
    and the peer from its connection name (rnv-<peer>), read over VICI (list-sas). With static
    keying the kernel's SAs are read (`ip -s xfrm state`): the SPI itself names tenant, sender
    and key generation (GEN), and the kernel counts bytes, packets and errors (packets dropped
    for replay or a failed integrity check). A tenant whose SAs are missing is simply absent:
    compare with the configuration's tenants and peers.

    \b
    Exit status:
      0  listed (possibly nothing)
      2  the configuration is invalid, or charon / the kernel could not be read

    \b
    Examples:
      routed-nv sa list
      routed-nv sa list -o json | jq '.[] | select(.tenant_name == "blue")'
      routed-nv sa list --vici-socket /run/charon.vici
      routed-nv sa list --netns host1 -c lab/host1.toml
    """
    config = config_or_exit(config_path, EXIT_FAILED)
    try:
        names = {t.id: name for name, t in config.tenants.items()}
        rows = [
            replace(r, tenant_name=names.get(r.tenant, ""))
            for r in _rows(config, netns, vici_socket)
        ]
    except _ReadError as exc:
        click.echo(f"sa list: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    if output == "json":
        click.echo(json.dumps([r.as_json() for r in rows], indent=2))
    else:
        click.echo(render_table(rows))
    sys.exit(EXIT_OK)


class _ReadError(RoutedNvError):
    pass


def _rows(config: Config, netns: str | None, vici_socket: Path | None) -> list[SaRow]:
    # vici is only imported in IKE mode: the CLI must work where it is not installed.
    if config.keying.mode is KeyingMode.IKE:
        from routed_nv.esp.vici_adapter import ViciError, ViciSession

        try:
            with ViciSession(vici_socket or config.keying.vici_socket) as vici:
                return rows_from_sas(vici.list_sas())
        except ViciError as exc:
            raise _ReadError(str(exc)) from None
    peers = {p.underlay_prefix: name for name, p in config.peers.items()}
    xfrm = IprouteXfrm(netns)
    try:
        states, counters = xfrm.read_states(), xfrm.read_counters()
    except XfrmError as exc:
        raise _ReadError(str(exc)) from None
    return rows_from_states(states, config.host.underlay_prefix, peers, counters)


def render_table(rows: list[SaRow]) -> str:
    if not rows:
        return "no routed_nv SAs"
    return table([name for name, _ in _COLUMNS], [[get(r) for _, get in _COLUMNS] for r in rows])


def _spi(value: int | None) -> str:
    return "-" if value is None else f"0x{value:08x}"


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


def _secs(value: int | None) -> str:
    return "-" if value is None else f"{value}s"
