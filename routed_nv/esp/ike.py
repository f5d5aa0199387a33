"""The IKE driver: keeps charon's `rnv-*` connections, routed_nv's credentials and the CHILD_SAs
they describe in line with the desired state, level-triggered.

Each reconcile reads charon back (list-conns, list-sas, get-shared, get-keys, list-certs), plans
the difference and applies it: credentials first, then stale connections unloaded, missing or
changed ones loaded (their start_action brings them up), then CHILD_SAs that are still not up
initiated. Anything that dropped our state — a `swanctl --load-all` (which unloads connections
it did not load), `swanctl --unload-conn`, a charon restart — is simply missing at the next
reconcile and is put back. Connections without our prefix are never touched.

list-conns does not show everything load-conn was given (proposals, timers), so a change there
is recognised by the digest of the message this driver last loaded; a restarted agent has no such
memory and reloads each connection once. That is harmless: charon keeps an identical connection
and its SAs as they are ("updated vici connection").
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import socket
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol

from routed_nv.esp.vici_adapter import ViciError
from routed_nv.esp.xfrm import XfrmError
from routed_nv.model.ike import (
    Certificate,
    Credential,
    DesiredIke,
    IkeConn,
    PrivateKey,
    SharedSecret,
    is_ours,
)
from routed_nv.model.result import Plan, Problem, Result, permanent, problem_of
from routed_nv.model.secret import Secret
from routed_nv.model.xfrm import XfrmPolicy

# CHILD_SA states in which its SAs are in the kernel and carry traffic.
UP_CHILD_STATES = frozenset({"INSTALLED", "REKEYING", "UPDATING"})
DEFAULT_INITIATE_TIMEOUT_S = 5.0


class ViciApi(Protocol):
    def list_conns(self) -> dict[str, dict[str, Any]]: ...
    def list_sas(self) -> list[tuple[str, dict[str, Any]]]: ...
    def get_shared(self) -> list[str]: ...
    def get_keys(self) -> list[str]: ...
    def list_certs(self) -> list[bytes]: ...
    def load_conn(self, name: str, message: Mapping[str, object]) -> None: ...
    def unload_conn(self, name: str) -> None: ...
    def load_shared(self, ident: str, secret: Secret, owners: list[str]) -> None: ...
    def load_cert(self, flag: str, pem: str) -> None: ...
    def load_key(self, key: Secret) -> str: ...
    def initiate(self, ike: str, child: str, timeout_s: float) -> None: ...
    def terminate_ike(self, uniqueid: str, timeout_s: float, force: bool = False) -> None: ...
    def terminate_child(self, uniqueid: str, timeout_s: float) -> None: ...
    def rekey_child(self, uniqueid: str) -> None: ...


Connect = Callable[[], AbstractContextManager[ViciApi]]
# charon's SPI-pinned outbound policies of our tenants, as the kernel has them
ReadPins = Callable[[], Iterable[XfrmPolicy]]
# a pinned policy as (src, dst, proto, spi): what "seen twice" remembers
PinKey = tuple[ipaddress.IPv6Address, ipaddress.IPv6Address, int, int]

# (local addrs, remote addrs, {child: (local ts, remote ts)}): what list-conns shows of a conn.
ConnSummary = tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, tuple[str, ...]], ...]]


class Verb(StrEnum):
    LOAD_SHARED = "load-shared"
    LOAD_CERT = "load-cert"
    LOAD_KEY = "load-key"
    UNLOAD_CONN = "unload-conn"
    LOAD_CONN = "load-conn"
    INITIATE = "initiate"
    TERMINATE = "terminate"
    TERMINATE_CHILD = "terminate-child"
    REKEY_CHILD = "rekey-child"


@dataclass(frozen=True)
class IkeOp:
    verb: Verb
    name: str  # connection, credential id or file
    reason: str
    conn: IkeConn | None = None  # load-conn, initiate
    child: str | None = None  # initiate
    credential: Credential | None = None
    ike_id: str | None = None  # terminate: charon's IKE_SA unique id
    child_id: str | None = None  # terminate-child, rekey-child: charon's CHILD_SA unique id
    force: bool = False  # terminate: destroy it without waiting for the peer's answer

    def describe(self) -> str:
        if self.child_id:
            target = f"{self.child}{{{self.child_id}}}"
        else:
            target = self.child or (f"{self.name}[{self.ike_id}]" if self.ike_id else self.name)
        return f"{self.verb} {target} ({self.reason})"

    def lines(self) -> list[str]:
        return [self.describe()]


@dataclass(frozen=True)
class ChildSa:
    """One CHILD_SA as list-sas shows it: what its outbound policies must name."""

    name: str
    uniqueid: str
    state: str
    spi_out: int | None
    local: ipaddress.IPv6Address | None  # the tenant outer addresses of its selectors
    remote: ipaddress.IPv6Address | None


@dataclass(frozen=True)
class IkeSa:
    conn: str
    uniqueid: str
    state: str  # ESTABLISHED, CONNECTING, ...
    initiator: bool  # this host started it
    busy: bool  # exchanges queued or in flight: a CHILD_SA may be on its way
    children: Mapping[str, str]  # child name -> best state
    initiator_spi: str = ""  # hex, as list-sas prints it: the same at both ends
    # INSTALLED CHILD_SAs of a name that has another with a higher id: (name, unique id)
    surplus_children: tuple[tuple[str, str], ...] = ()
    child_sas: tuple[ChildSa, ...] = ()


@dataclass(frozen=True)
class Charon:
    """What charon has of ours."""

    conns: Mapping[str, ConnSummary]
    sas: Mapping[str, tuple[IkeSa, ...]]
    shared_ids: frozenset[str]
    key_ids: frozenset[str]
    cert_ders: frozenset[bytes]
    pinned: tuple[XfrmPolicy, ...] = ()  # charon's outbound policies in the kernel


@dataclass
class Memory:
    """What this driver loaded (lost on restart, which costs one reload of each)."""

    conns: dict[str, str] = field(default_factory=dict)  # conn name -> digest loaded
    shared: dict[str, str] = field(default_factory=dict)  # secret id -> digest loaded
    keys: dict[str, str] = field(default_factory=dict)  # key digest -> charon's key id
    # pinned policies that named an SPI of no CHILD_SA at the last apply: repaired when seen again
    stale_pins: frozenset[PinKey] = frozenset()
    # stale pins a rekey was asked to repair: still stale later, they are an error, not a loop
    rekeyed_pins: frozenset[PinKey] = frozenset()
    # surplus IKE_SAs the peer initiated at the last apply, (conn, unique id): forced if seen again
    peer_surplus: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class IkePlan(Plan[IkeOp]):
    """`pending`: connections with exchanges in flight (left alone this time), stale pins to
    confirm. `problems`: also what the driver cannot repair."""

    read: bool = False  # charon was read: apply() may act on it and remember what it saw
    stale_pins: frozenset[PinKey] = frozenset()  # seen now (repaired or still to confirm)
    peer_surplus: frozenset[tuple[str, str]] = frozenset()  # likewise
    rekeyed_pins: frozenset[PinKey] = frozenset()  # stale pins rekeyed now or before


class IkeResult(Result[IkeOp]):
    pass


class IkeDriver:
    """Drives one charon. Keep one instance for the agent's life and call apply() every
    reconcile (and on a timer: nothing tells it that someone unloaded a connection).
    `read_pins` reads charon's pinned outbound policies from the kernel (the XFRM driver's
    `pinned_out_policies`); without it the policy check sees none."""

    def __init__(
        self,
        connect: Connect,
        initiate_timeout_s: float = DEFAULT_INITIATE_TIMEOUT_S,
        read_pins: ReadPins = tuple,
    ) -> None:
        self._connect = connect
        self._initiate_timeout_s = initiate_timeout_s
        self._read_pins = read_pins
        self._memory = Memory()

    def plan(self, desired: DesiredIke) -> IkePlan:
        """What apply() would do now; reads charon (and its pinned policies) once, changes
        nothing. A charon that cannot be read is the plan's problem."""
        problems = permanent(desired.errors)
        try:
            with self._connect() as vici:
                charon = self._read(vici, problems)
        except ViciError as exc:
            return IkePlan(problems=(*problems, problem_of(exc)))
        plan = plan_ike(desired, charon, self._memory)
        return replace(plan, problems=(*problems, *plan.problems), read=True)

    def apply(self, plan: IkePlan) -> IkeResult:
        """Runs the plan's ops in one VICI session without reading charon again."""
        result = IkeResult(problems=list(plan.problems), pending=list(plan.pending))
        if not plan.read:
            return result
        self._memory.stale_pins = plan.stale_pins
        self._memory.rekeyed_pins = plan.rekeyed_pins
        self._memory.peer_surplus = plan.peer_surplus
        if not plan.changes:
            return result
        try:
            with self._connect() as vici:
                self._execute(vici, plan, result)
        except ViciError as exc:
            result.problems.append(problem_of(exc))
        return result

    def reconcile(self, desired: DesiredIke) -> IkeResult:
        """Brings charon in line: plan() and apply()."""
        return self.apply(self.plan(desired))

    def _read(self, vici: ViciApi, problems: list[Problem]) -> Charon:
        # The kernel first: a CHILD_SA that charon adds meanwhile is listed but not pinned yet,
        # which is not a stale pin; one deleted meanwhile is caught by the second sighting.
        try:
            pinned = tuple(self._read_pins())
        except XfrmError as exc:
            # everything else can still be done; only the policy check is skipped this time
            problems.append(
                problem_of(exc, message=f"cannot check charon's outbound policies: {exc}")
            )
            pinned = ()
        return replace(read_charon(vici), pinned=pinned)

    def _execute(self, vici: ViciApi, plan: IkePlan, result: IkeResult) -> None:
        failed_conns: set[str] = set()
        for op in plan.changes:
            if op.name in failed_conns:
                continue  # its IKE_SA just failed: the other children would fail the same way
            try:
                self._run(vici, op)
            except ViciError as exc:
                result.problems.append(problem_of(exc, op, _explain(op, exc)))
                if op.verb is Verb.INITIATE:
                    failed_conns.add(op.name)
                continue
            result.done.append(op)

    def _run(self, vici: ViciApi, op: IkeOp) -> None:
        cred, conn = op.credential, op.conn
        if op.verb is Verb.LOAD_SHARED and isinstance(cred, SharedSecret):
            vici.load_shared(cred.id, cred.secret, list(cred.owners))
            self._memory.shared[cred.id] = credential_digest(cred)
        elif op.verb is Verb.LOAD_CERT and isinstance(cred, Certificate):
            vici.load_cert(cred.flag, cred.pem)
        elif op.verb is Verb.LOAD_KEY and isinstance(cred, PrivateKey):
            self._memory.keys[credential_digest(cred)] = vici.load_key(cred.secret)
        elif op.verb is Verb.UNLOAD_CONN:
            vici.unload_conn(op.name)
            self._memory.conns.pop(op.name, None)
        elif op.verb is Verb.LOAD_CONN and conn is not None:
            vici.load_conn(conn.name, conn.message)
            self._memory.conns[conn.name] = conn.digest
        elif op.verb is Verb.INITIATE and op.child is not None:
            vici.initiate(op.name, op.child, self._initiate_timeout_s)
        elif op.verb is Verb.TERMINATE and op.ike_id is not None:
            vici.terminate_ike(op.ike_id, self._initiate_timeout_s, op.force)
        elif op.verb is Verb.TERMINATE_CHILD and op.child_id is not None:
            vici.terminate_child(op.child_id, self._initiate_timeout_s)
        elif op.verb is Verb.REKEY_CHILD and op.child_id is not None:
            vici.rekey_child(op.child_id)


def read_charon(vici: ViciApi) -> Charon:
    conns = {name: summarize_listed(c) for name, c in vici.list_conns().items() if is_ours(name)}
    sas: dict[str, list[IkeSa]] = {}
    for name, sa in vici.list_sas():
        if is_ours(name):
            sas.setdefault(name, []).append(_ike_sa(name, sa))
    return Charon(
        conns=conns,
        sas={name: tuple(v) for name, v in sas.items()},
        shared_ids=frozenset(vici.get_shared()),
        key_ids=frozenset(vici.get_keys()),
        cert_ders=frozenset(vici.list_certs()),
    )


def _ike_sa(name: str, sa: Mapping[str, Any]) -> IkeSa:
    children: dict[str, str] = {}
    installed: dict[str, list[int]] = {}
    child_sas = []
    for child in (sa.get("child-sas") or {}).values():
        child_sas.append(_child_sa(child))
        state, child_name = child.get("state", ""), child.get("name", "")
        # one name can have several CHILD_SAs (old and new during a rekey): keep the best
        if child_name not in children or state in UP_CHILD_STATES:
            children[child_name] = state
        if state == "INSTALLED" and str(child.get("uniqueid", "")).isdigit():
            installed.setdefault(child_name, []).append(int(child["uniqueid"]))
    busy = bool(sa.get("tasks-queued") or sa.get("tasks-active") or sa.get("tasks-passive"))
    return IkeSa(
        name,
        sa.get("uniqueid", ""),
        sa.get("state", ""),
        sa.get("initiator") == "yes",
        busy,
        children,
        sa.get("initiator-spi", ""),
        tuple((c, str(i)) for c, ids in sorted(installed.items()) for i in sorted(ids)[:-1]),
        tuple(child_sas),
    )


def _child_sa(child: Mapping[str, Any]) -> ChildSa:
    spi = str(child.get("spi-out", ""))
    return ChildSa(
        child.get("name", ""),
        str(child.get("uniqueid", "")),
        child.get("state", ""),
        int(spi, 16) if spi else None,
        _ts_addr(child.get("local-ts")),
        _ts_addr(child.get("remote-ts")),
    )


def _ts_addr(selectors: object) -> ipaddress.IPv6Address | None:
    """The one address of a CHILD_SA's selectors (`2001:db8:0:1::1:64/128[ipencap]`, one per
    inner protocol); None when they name more than one or are not IPv6 /128s."""
    if not isinstance(selectors, list):
        return None
    nets = set()
    for ts in selectors:
        try:
            nets.add(ipaddress.ip_network(str(ts).partition("[")[0]))
        except ValueError:
            return None
    (net,) = nets if len(nets) == 1 else (None,)
    if not isinstance(net, ipaddress.IPv6Network) or net.prefixlen != 128:
        return None
    return net.network_address


def summarize_desired(conn: IkeConn) -> ConnSummary:
    return (
        (conn.local_addr,),
        (conn.remote_addr,),
        tuple(sorted((c.name, _norm_ts(c.local_ts + c.remote_ts)) for c in conn.children)),
    )


def summarize_listed(conn: Mapping[str, Any]) -> ConnSummary:
    children = conn.get("children") or {}
    return (
        tuple(conn.get("local_addrs", [])),
        tuple(conn.get("remote_addrs", [])),
        tuple(
            sorted(
                (name, _norm_ts([*c.get("local-ts", []), *c.get("remote-ts", [])]))
                for name, c in children.items()
            )
        ),
    )


def _norm_ts(selectors: Iterable[str]) -> tuple[str, ...]:
    """Traffic selectors as charon prints them (`addr/128[ipencap]`, protocol by its
    /etc/protocols name) and as we write them (`addr/128[4]`), in one form."""
    out = []
    for ts in selectors:
        net, _, rest = ts.partition("[")
        proto = rest.rstrip("]").split("/")[0]
        if proto and not proto.isdigit():
            # an unknown name stays as it is: at worst the conn is reloaded once more
            with contextlib.suppress(OSError):
                proto = str(socket.getprotobyname(proto))
        out.append(f"{net}[{proto}]" if proto else net)
    return tuple(sorted(out))


def credential_digest(cred: Credential) -> str:
    h = hashlib.sha256()
    if isinstance(cred, SharedSecret):
        h.update(cred.secret.value + b"\0" + "\0".join(cred.owners).encode())
    elif isinstance(cred, PrivateKey):
        h.update(cred.secret.value)
    else:
        h.update(cred.der)
    return h.hexdigest()[:16]


def plan_ike(desired: DesiredIke, charon: Charon, memory: Memory) -> IkePlan:
    """The ops from what charon has to what is desired. Pure."""
    ops = [op for cred in desired.credentials if (op := _credential_op(cred, charon, memory))]
    for name in sorted(charon.conns):
        if name not in desired.conns and name not in desired.keep:
            ops.append(IkeOp(Verb.UNLOAD_CONN, name, "no longer wanted"))
    waiting = []
    stale_pins: set[PinKey] = set()
    rekeyed_pins: set[PinKey] = set()
    problems: list[Problem] = []
    peer_surplus: set[tuple[str, str]] = set()
    for name, conn in sorted(desired.conns.items()):
        reason = _load_reason(conn, charon, memory)
        if reason:
            # start_action=start brings its CHILD_SAs up: initiating them as well would race it.
            ops.append(IkeOp(Verb.LOAD_CONN, name, reason, conn=conn))
            continue
        sas = charon.sas.get(name, ())
        if any(sa.busy or sa.state != "ESTABLISHED" for sa in sas):
            waiting.append(f"{name} (exchanges in flight)")
            continue
        fixes, surplus = _duplicates(conn, sas, memory.peer_surplus)
        peer_surplus |= surplus
        waiting += [
            f"{name}: duplicate IKE_SA #{ike_id} is the peer's to delete, checking again"
            for _, ike_id in sorted(surplus - memory.peer_surplus)
        ]
        fixes = fixes or _surplus_children(conn, sas)
        if not fixes and len(sas) < 2:
            # only once one CHILD_SA per tenant is left: a resolution rewrites the policies
            fixes, stale, rekeyed = _stale_pins(
                conn, sas, charon.pinned, memory.stale_pins, memory.rekeyed_pins
            )
            stale_pins |= stale
            rekeyed_pins |= rekeyed
            problems += [
                Problem(
                    f"{name}: outbound policy {_describe_pin(pin)}, also after a rekey: traffic "
                    "of that protocol to the peer is lost until charon installs it anew (restart "
                    "charon)",
                    transient=False,  # another rekey would only churn SAs
                    obj=conn,
                )
                for pin in sorted(stale & memory.rekeyed_pins)
            ]
            waiting += [
                f"{name}: outbound policy {_describe_pin(pin)}, checking again"
                for pin in sorted(stale - memory.stale_pins)
            ]
        ops += fixes
        if len(sas) > 1:
            # charon would pick any of them for a new CHILD_SA, one the peer dropped included,
            # where the request would hang for minutes: first one IKE_SA
            continue
        up = {
            child for sa in sas for child, state in sa.children.items() if state in UP_CHILD_STATES
        }
        ops += [
            IkeOp(Verb.INITIATE, name, "not up", conn=conn, child=c.name)
            for c in conn.children
            if c.name not in up
        ]
    # a rekeyed pin is remembered while the kernel still has it, through applies that skip its
    # connection (a rekey in flight) too
    rekeyed_pins |= memory.rekeyed_pins & {_pin_key(p) for p in charon.pinned}
    return IkePlan(
        tuple(ops),
        tuple(problems),
        tuple(waiting),
        stale_pins=frozenset(stale_pins),
        peer_surplus=frozenset(peer_surplus),
        rekeyed_pins=frozenset(rekeyed_pins),
    )


def _duplicates(
    conn: IkeConn, sas: tuple[IkeSa, ...], seen: frozenset[tuple[str, str]]
) -> tuple[list[IkeOp], set[tuple[str, str]]]:
    """A pair of hosts keeps one IKE_SA. Several appear when both ends initiate at once (both
    agents starting, each seeing none), and the rule must hold however they arose, two from one
    end included (the old rule, "the higher end terminates its own", left those for ever and
    with them a CHILD_SA per tenant that charon's policy did not name). Both ends rank the
    IKE_SAs the same way, from what both see alike: those the lower host address initiated
    first, then by initiator SPI. Each end terminates the others it initiated itself, so every
    surplus IKE_SA has exactly one end deleting it.
    Except when that end no longer has it: charon destroys its own IKE_SA without a word to the
    peer when it answers the peer's IKE_AUTH with INITIAL_CONTACT after its own came up (both
    ends had none when they initiated), and the peer keeps its copy. So a surplus IKE_SA the
    peer initiated that is still here at the next apply is terminated with force (a DELETE,
    then destroyed without waiting for an answer). Returns the terminations and the surplus
    IKE_SAs the peer initiated, as (conn, unique id)."""
    if len(sas) < 2:
        return [], set()
    keep = min(
        sas, key=lambda sa: (sa.initiator != conn.local_is_lower, int(sa.initiator_spi or "0", 16))
    )
    ops = [
        IkeOp(Verb.TERMINATE, conn.name, "duplicate IKE_SA", ike_id=sa.uniqueid)
        for sa in sas
        if sa is not keep and sa.initiator
    ]
    peers = {(conn.name, sa.uniqueid) for sa in sas if sa is not keep and not sa.initiator}
    ops += [
        IkeOp(
            Verb.TERMINATE,
            conn.name,
            "duplicate IKE_SA the peer initiated and did not delete",
            ike_id=ike_id,
            force=True,
        )
        for _, ike_id in sorted(peers & seen)
    ]
    return ops, peers


def _surplus_children(conn: IkeConn, sas: tuple[IkeSa, ...]) -> list[IkeOp]:
    """Two CHILD_SAs of one name in one IKE_SA: both ends found it missing and initiated it at
    once (after a duplicate IKE_SA took the only copy with it, say); charon checks for a
    duplicate only before it sends. A CHILD_SA carries no initiator flag and the ends number
    them differently, so one end decides, the lower host address: it keeps the one it numbered
    last and deletes the others; at both ends charon moves its policy to the one left."""
    if not conn.local_is_lower:
        return []
    return [
        IkeOp(Verb.TERMINATE_CHILD, conn.name, "duplicate CHILD_SA", child=child, child_id=cid)
        for sa in sas
        for child, cid in sa.surplus_children
    ]


def _stale_pins(
    conn: IkeConn,
    sas: tuple[IkeSa, ...],
    pinned: Iterable[XfrmPolicy],
    seen: frozenset[PinKey],
    rekeyed: frozenset[PinKey],
) -> tuple[list[IkeOp], set[PinKey], set[PinKey]]:
    """charon pins each of its outbound policies (one per inner protocol) to the SPI of the
    CHILD_SA in use. strongSwan 6.0.1 once left the IPv4 one of a pair on a CHILD_SA that a
    duplicate resolution had deleted while the IPv6 one named the kept CHILD_SA (issue 13): IPv4
    then left with an SPI the peer no longer had, for ever. A policy between the addresses of
    one of this connection's CHILD_SAs whose SPI is the outbound SPI of none of them (in any
    state: a rekey's old one stays named until it is deleted) is stale. Seen at two applies in
    a row (not a deletion that fell between our two reads), the INSTALLED CHILD_SA of that pair
    is rekeyed: charon installs the new CHILD_SA's policies over every protocol's, with its SPI,
    make-before-break (a terminate would leave the pair without a CHILD_SA meanwhile). A pin
    still stale after its rekey (`rekeyed`) is not rekeyed again: that would only churn SAs
    every apply; the caller reports it. Returns the rekeys, every stale pin seen now, and the
    stale pins rekeyed now or before."""
    children = [c for sa in sas for c in sa.child_sas if c.local and c.remote]
    ops: list[IkeOp] = []
    stale: set[PinKey] = set()
    for pin in pinned:
        pair = [
            c
            for c in children
            if (c.local, c.remote) == (pin.src.network_address, pin.dst.network_address)
        ]
        if not pair or pin.spi in {c.spi_out for c in pair}:
            continue
        key = _pin_key(pin)
        stale.add(key)
        installed = sorted((c for c in pair if c.state == "INSTALLED"), key=_child_id)
        if key not in seen or key in rekeyed or not installed:
            continue  # not confirmed yet, already tried, or nothing to rekey (initiate fixes it)
        op = IkeOp(
            Verb.REKEY_CHILD,
            conn.name,
            f"outbound policy {_describe_pin(key)}",
            child=installed[-1].name,
            child_id=installed[-1].uniqueid,
        )
        if op not in ops:
            ops.append(op)
        rekeyed |= {key}
    return ops, stale, set(rekeyed & stale)


def _pin_key(pin: XfrmPolicy) -> PinKey:
    return (pin.src.network_address, pin.dst.network_address, pin.proto, pin.spi or 0)


def _child_id(child: ChildSa) -> int:
    return int(child.uniqueid) if child.uniqueid.isdigit() else -1


def _describe_pin(pin: PinKey) -> str:
    src, dst, proto, spi = pin
    return f"{src} -> {dst} proto {proto} names SPI 0x{spi:08x} of no CHILD_SA"


def _load_reason(conn: IkeConn, charon: Charon, memory: Memory) -> str:
    listed = charon.conns.get(conn.name)
    if listed is None:
        return "missing"
    if listed != summarize_desired(conn):
        return "differs"
    if memory.conns.get(conn.name) != conn.digest:
        return "not loaded by this agent" if conn.name not in memory.conns else "changed"
    return ""


def _credential_op(cred: Credential, charon: Charon, memory: Memory) -> IkeOp | None:
    digest = credential_digest(cred)
    if isinstance(cred, SharedSecret):
        if cred.id not in charon.shared_ids:
            return IkeOp(Verb.LOAD_SHARED, cred.id, "missing", credential=cred)
        if memory.shared.get(cred.id) != digest:
            return IkeOp(
                Verb.LOAD_SHARED, cred.id, "changed or not loaded by this agent", credential=cred
            )
    elif isinstance(cred, Certificate):
        if cred.der not in charon.cert_ders:
            return IkeOp(Verb.LOAD_CERT, str(cred.path), "missing", credential=cred)
    elif memory.keys.get(digest) not in charon.key_ids:
        return IkeOp(Verb.LOAD_KEY, str(cred.path), "missing", credential=cred)
    return None


# charon's words for the common failures, and what an operator should check. The first that
# matches wins; AUTH_FAILED is worded by the connection's auth method (_auth_hint).
AUTH_FAILED = "authentication failed"
_HINTS = (
    (
        # this end checked the peer's certificate: charon's log line says why it is refused
        ("no trusted", "certificate invalid", "constraint check failed", "no issuer certificate"),
        "the peer's certificate is not trusted: it must be issued by keying.ca_cert, be valid "
        "now, and name the peer's host address as an IP subjectAltName",
    ),
    (("AUTHENTICATION_FAILED", "MAC mismatched", "no shared key found"), AUTH_FAILED),
    (
        ("NO_PROPOSAL_CHOSEN", "no acceptable proposal", "no matching proposal"),
        "no common proposal: compare keying.ike_proposals and keying.esp_proposals on both "
        "hosts, and the algorithms charon's plugins provide",
    ),
    (
        ("TS_UNACCEPTABLE", "traffic selectors", "no acceptable traffic selectors"),
        "the peer has no matching CHILD_SA: it does not (yet) share this tenant with us",
    ),
    (
        ("peer not responding", "giving up after"),
        "the peer does not answer: is charon running there, and are UDP 500 and 4500 open?",
    ),
)


def _auth_hint(op: IkeOp) -> str:
    """The peer refused us (or, with a PSK, the MACs differ): which credential to check."""
    local = op.conn.message.get("local") if op.conn else None
    auth = local.get("auth") if isinstance(local, Mapping) else None
    if auth == "psk":
        return (
            f"{AUTH_FAILED}: the two hosts do not share the same pre-shared key (keying.psk_file)"
        )
    if auth == "pubkey":
        return (
            f"{AUTH_FAILED}: the peer does not accept this host's certificate (keying.cert must "
            "be issued by the peer's keying.ca_cert, be valid now, and name this host's address "
            "as an IP subjectAltName; the peer's status says why)"
        )
    return (
        f"{AUTH_FAILED}: the two hosts do not share the same pre-shared key (keying.psk_file) "
        "or trust each other's certificates (keying.ca_cert)"
    )


def _explain(op: IkeOp, exc: ViciError) -> str:
    for needles, hint in _HINTS:
        found = [
            line for line in (str(exc), *exc.log) if any(n.lower() in line.lower() for n in needles)
        ]
        if found:
            why = "" if found[0] == str(exc) else f"; {found[0].strip()}"
            return (
                f"{op.describe()}: {_auth_hint(op) if hint is AUTH_FAILED else hint} [{exc}{why}]"
            )
    tail = "; ".join(line for line in exc.log[-3:] if line)
    return f"{op.describe()}: {exc}" + (f" [{tail}]" if tail else "")
