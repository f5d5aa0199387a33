"""`routed-nv-libvirt-hook`, installed as /etc/libvirt/hooks/qemu (docs/libvirt.md). libvirt runs
it as `qemu <domain> <op> <sub-op> <extra>` with the domain XML on stdin and waits for it (it
blocks domain start), so it is the stdlib, the tun ioctls and one control-socket request per
interface; it never calls back into libvirt.

Ours is a domain whose <metadata> has <rnv:endpoint xmlns:rnv="NS" .../> elements, one per
`<interface type='ethernet'><target dev='rnv-...' managed='no'/>`:
- prepare: make the persistent tap (QEMU's owner/group, a MAC derived from the guest's, so it is
  the same on every host and a migrated guest's neighbour entry for its gateway stays right).
- started (QEMU runs and holds the tap; its vCPUs, or an incoming guest, not yet): register
  the endpoint with the local agent (tap in the tenant's VRF, /32 and /128, proxy ARP/NDP,
  anti-spoofing), wait until it is programmed, and pin the guest's MAC for its addresses on the
  tap (tap.pin_neighbours: a paused guest answers no ARP). Incoming migration is a prepare and
  a started on the destination: its agent announces with a higher mobility sequence
  (docs/directory.md), so the destination takes over while the source still runs
  (make-before-break), and frames wait in the tap's queue until the guest resumes there.
- release: remove the endpoint, then the tap (on a migration's source, after the destination).
- reconnect, attach (libvirtd restarted, domain running): register again (idempotent).
- migrate, restore: libvirt takes stdout as a replacement XML; empty means unchanged.
Any other domain or op: exit 0 without a word. A failure: one line on stderr, exit 1, and
nothing left of this run (libvirt then does not start the domain)."""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

from routed_nv.cni import agent_socket
from routed_nv.cni.agent_socket import AgentDown, AgentRefused
from routed_nv.errors import RoutedNvError
from routed_nv.libvirt import tap
from routed_nv.model import markers

NS = "https://routed-nv.org/xmlns/libvirt/1"
PREFIX = "rnv-"
NAME = re.compile(r"^rnv-[a-z0-9_-]{1,11}$")  # an endpoint id and an interface name (15)
DEFAULT_OWNER = ("libvirt-qemu", "kvm")  # QEMU's user and group on Debian
TIMEOUT_S = 20.0  # the agent's wait for the apply; the hook holds up libvirt meanwhile
SOCKET = "agent.sock"


class HookError(RoutedNvError):
    """One line for libvirt's error message."""


@dataclass(frozen=True)
class Attachment:
    tap: str  # also the endpoint id
    tenant: str
    addresses: list[str]
    guest_mac: str
    uid: int | None
    gid: int | None


def main() -> None:
    argv = sys.argv[1:]
    started = time.monotonic()
    raw = sys.stdin.buffer.read()
    try:
        domain, op = [*argv, "", ""][:2]
        handler = OPS.get(op)
        if handler is None or NS.encode() not in raw:  # not ours: not even parsed
            return
        attachments = parse(raw)
        handler(_socket(), attachments)
    except HookError as exc:
        print(f"routed-nv qemu hook: domain {domain} {op}: {exc}", file=sys.stderr)
        sys.exit(1)
    ms = (time.monotonic() - started) * 1000
    print(
        f"routed-nv qemu hook: {domain} {op} {len(attachments)} tap(s) {ms:.0f} ms", file=sys.stderr
    )


def _socket() -> str:
    return os.path.join(os.environ.get("ROUTED_NV_RUN_DIR") or "/run/routed-nv", SOCKET)


# --- the domain XML ----------------------------------------------------------------------


def parse(raw: bytes) -> list[Attachment]:
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise HookError(f"the domain XML does not parse: {exc}") from None
    taps: dict[str, ET.Element] = {}
    for iface in root.iterfind("./devices/interface[@type='ethernet']"):
        target = iface.find("target")
        if target is not None and target.get("dev", "").startswith(PREFIX):
            taps[target.get("dev", "")] = iface
    entries = root.findall(f"./metadata/{{{NS}}}endpoint")
    out = []
    for entry in entries:
        name = entry.get("interface")
        if name is None:
            if len(taps) != 1:
                raise HookError(
                    f"<rnv:endpoint> without interface=, and the domain has {len(taps)} "
                    f"interfaces with target dev='{PREFIX}...'"
                )
            name = next(iter(taps))
        out.append(_attachment(entry, name, taps.get(name)))
    if len({a.tap for a in out}) != len(out):
        raise HookError("two <rnv:endpoint> elements name the same interface")
    return out


def _attachment(entry: ET.Element, name: str, iface: ET.Element | None) -> Attachment:
    where = f"<rnv:endpoint interface='{name}'>"
    if not NAME.match(name):
        raise HookError(f"{where}: the tap name must be rnv- and 1-11 of a-z 0-9 - _")
    if name.startswith(markers.ENDPOINT_LINK_PREFIX) or markers.tenant_of_link(name):
        raise HookError(
            f"{where}: {name} is a name of the agent's own links (rnv-e..., rnv-vN, rnv-tN)"
        )
    if iface is None:
        raise HookError(f"{where}: no <interface type='ethernet'> with <target dev='{name}'/>")
    target = iface.find("target")
    if target is None or target.get("managed") != "no":
        raise HookError(f"interface {name}: needs <target dev='{name}' managed='no'/>")
    mac = iface.find("mac")
    guest_mac = "" if mac is None else mac.get("address", "")
    if not re.fullmatch(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}", guest_mac):
        raise HookError(f"interface {name}: needs <mac address='..'/> (got {guest_mac!r})")
    tenant = entry.get("tenant", "")
    if not tenant:
        raise HookError(f"{where}: attribute tenant is required")
    addresses = [a for key in ("ipv4", "ipv6") for a in entry.get(key, "").split()]
    if not addresses:
        raise HookError(f"{where}: give ipv4= and/or ipv6=")
    uid, gid = _owner(where, entry.get("owner"), entry.get("group"))
    return Attachment(name, tenant, addresses, guest_mac.lower(), uid, gid)


def _owner(where: str, owner: str | None, group: str | None) -> tuple[int | None, int | None]:
    """QEMU's uid/gid: as given, else Debian's libvirt-qemu / kvm where they exist."""
    ids: list[int | None] = []
    for value, default, lookup, kind in (
        (owner, DEFAULT_OWNER[0], lambda n: pwd.getpwnam(n).pw_uid, "owner"),
        (group, DEFAULT_OWNER[1], lambda n: grp.getgrnam(n).gr_gid, "group"),
    ):
        if value is not None and value.isdigit():
            ids.append(int(value))
            continue
        try:
            ids.append(lookup(value or default))
        except KeyError:
            if value is not None:
                raise HookError(f"{where}: {kind} {value!r}: no such {kind} here") from None
            ids.append(None)
    return ids[0], ids[1]


def tap_mac(guest_mac: str) -> str:
    """The guest's with the first octet fe (as libvirt's own taps): the same on every host."""
    return "fe" + guest_mac[2:]


# --- ops ---------------------------------------------------------------------------------


def prepare(sock: str, attachments: list[Attachment]) -> None:
    """The taps, before QEMU opens them; the agent is asked first, so that a start it cannot
    serve fails here, before QEMU runs."""
    _ask(sock, None, {"request": "endpoint.list"})
    _undoing(attachments, lambda a, undo: _make_tap(a, undo))


def started(sock: str, attachments: list[Attachment]) -> None:
    """QEMU runs and holds the taps (an incoming one paused, until the switchover): only now are
    the addresses routed here, so what arrives waits in the tap's queue instead of being
    dropped at a tap nobody has opened yet (lab: ~1 s of a 10 ms ping at the destination)."""
    _undoing(attachments, lambda a, undo: _register(sock, a, undo))


def _make_tap(a: Attachment, undo: list[Callable[[], None]]) -> None:
    if tap.create(a.tap, tap_mac(a.guest_mac), a.uid, a.gid):
        undo.append(lambda: tap.delete(a.tap))


def _register(sock: str, a: Attachment, undo: list[Callable[[], None]]) -> None:
    if not tap.exists(a.tap):
        raise HookError(f"tap {a.tap} is missing (the domain runs without its network)")
    undo.append(lambda: _ask(sock, a.tap, _delete(a.tap)))
    _ask(sock, a.tap, _add(a))
    tap.pin_neighbours(a.tap, a.guest_mac, a.addresses)


def _undoing(
    attachments: list[Attachment], step: Callable[[Attachment, list[Callable[[], None]]], None]
) -> None:
    """step() for each attachment; on an error, undo what the steps did and report it."""
    undo: list[Callable[[], None]] = []
    try:
        for a in attachments:
            step(a, undo)
    except (HookError, tap.TapError) as exc:
        for done in reversed(undo):
            with contextlib.suppress(HookError, tap.TapError):  # the first error is reported
                done()
        raise HookError(str(exc)) from None


def release(sock: str, attachments: list[Attachment]) -> None:
    """Every endpoint, then every tap, past errors (libvirt goes on anyway; QEMU is gone, so a
    tap left would only be in the way of the next start): the errors are reported."""
    errors = []
    for a in attachments:
        try:
            _ask(sock, a.tap, _delete(a.tap))
        except HookError as exc:
            errors.append(str(exc))
        try:
            tap.delete(a.tap)
        except tap.TapError as exc:
            errors.append(str(exc))
    if errors:
        raise HookError("; ".join(errors))


def reconnect(sock: str, attachments: list[Attachment]) -> None:
    for a in attachments:
        _register(sock, a, [])


def unchanged(sock: str, attachments: list[Attachment]) -> None:
    """migrate / restore: libvirt replaces the XML with stdout unless it is empty."""


OPS: dict[str, Callable[[str, list[Attachment]], None]] = {
    "prepare": prepare,
    "started": started,
    "release": release,
    "reconnect": reconnect,
    "attach": reconnect,
    "migrate": unchanged,
    "restore": unchanged,
}


def _add(a: Attachment) -> dict[str, object]:
    return {
        "request": "endpoint.add",
        "id": a.tap,
        "tenant": a.tenant,
        "addresses": a.addresses,
        "interface": a.tap,
        "timeout": TIMEOUT_S,
    }


def _delete(name: str) -> dict[str, object]:
    return {"request": "endpoint.delete", "id": name, "timeout": TIMEOUT_S}


def _ask(sock: str, name: str | None, request: dict[str, object]) -> None:
    where = f"interface {name}: " if name else ""
    try:
        agent_socket.ask(sock, request, TIMEOUT_S)
    except AgentDown as exc:
        raise HookError(f"{where}the routed-nv agent is not answering ({exc})") from None
    except AgentRefused as exc:
        raise HookError(f"{where}routed-nv agent: {exc}") from None
