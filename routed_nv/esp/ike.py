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
import socket
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from routed_nv.calc.ike import (
    Certificate,
    Credential,
    DesiredIke,
    IkeConn,
    PrivateKey,
    SharedSecret,
    is_ours,
)
from routed_nv.esp.secret import Secret
from routed_nv.esp.vici_adapter import ViciError

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
    def terminate_ike(self, uniqueid: str, timeout_s: float) -> None: ...
    def terminate_child(self, uniqueid: str, timeout_s: float) -> None: ...


Connect = Callable[[], AbstractContextManager[ViciApi]]

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


@dataclass(frozen=True)
class IkeOp:
    verb: Verb
    name: str  # connection, credential id or file
    reason: str
    conn: IkeConn | None = None  # load-conn, initiate
    child: str | None = None  # initiate
    credential: Credential | None = None
    ike_id: str | None = None  # terminate: charon's IKE_SA unique id
    child_id: str | None = None  # terminate-child: charon's CHILD_SA unique id

    def describe(self) -> str:
        if self.child_id:
            target = f"{self.child}{{{self.child_id}}}"
        else:
            target = self.child or (f"{self.name}[{self.ike_id}]" if self.ike_id else self.name)
        return f"{self.verb} {target} ({self.reason})"


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


@dataclass(frozen=True)
class Charon:
    """What charon has of ours."""

    conns: Mapping[str, ConnSummary]
    sas: Mapping[str, tuple[IkeSa, ...]]
    shared_ids: frozenset[str]
    key_ids: frozenset[str]
    cert_ders: frozenset[bytes]


@dataclass
class Memory:
    """What this driver loaded (lost on restart, which costs one reload of each)."""

    conns: dict[str, str] = field(default_factory=dict)  # conn name -> digest loaded
    shared: dict[str, str] = field(default_factory=dict)  # secret id -> digest loaded
    keys: dict[str, str] = field(default_factory=dict)  # key digest -> charon's key id


@dataclass(frozen=True)
class IkePlan:
    ops: tuple[IkeOp, ...]
    waiting: tuple[str, ...]  # connections with exchanges in flight: left alone this time

    def __bool__(self) -> bool:
        return bool(self.ops)


@dataclass
class IkeResult:
    done: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class IkeDriver:
    """Drives one charon. Keep one instance for the agent's life and call apply() every
    reconcile (and on a timer: nothing tells it that someone unloaded a connection)."""

    def __init__(
        self, connect: Connect, initiate_timeout_s: float = DEFAULT_INITIATE_TIMEOUT_S
    ) -> None:
        self._connect = connect
        self._initiate_timeout_s = initiate_timeout_s
        self._memory = Memory()

    def plan(self, desired: DesiredIke) -> IkePlan:
        """What apply() would do now; reads charon, changes nothing."""
        with self._connect() as vici:
            return plan_ike(desired, read_charon(vici), self._memory)

    def apply(self, desired: DesiredIke) -> IkeResult:
        result = IkeResult(errors=list(desired.errors))
        try:
            with self._connect() as vici:
                plan = plan_ike(desired, read_charon(vici), self._memory)
                result.waiting = list(plan.waiting)
                self._execute(vici, plan, result)
        except ViciError as exc:
            result.errors.append(str(exc))
        return result

    def _execute(self, vici: ViciApi, plan: IkePlan, result: IkeResult) -> None:
        failed_conns: set[str] = set()
        for op in plan.ops:
            if op.name in failed_conns:
                continue  # its IKE_SA just failed: the other children would fail the same way
            try:
                self._run(vici, op)
            except ViciError as exc:
                result.errors.append(_explain(op, exc))
                if op.verb is Verb.INITIATE:
                    failed_conns.add(op.name)
                continue
            result.done.append(op.describe())

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
            vici.terminate_ike(op.ike_id, self._initiate_timeout_s)
        elif op.verb is Verb.TERMINATE_CHILD and op.child_id is not None:
            vici.terminate_child(op.child_id, self._initiate_timeout_s)


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
    for child in (sa.get("child-sas") or {}).values():
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
    )


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
        ops += _duplicates(conn, sas) or _surplus_children(conn, sas)
        up = {
            child for sa in sas for child, state in sa.children.items() if state in UP_CHILD_STATES
        }
        ops += [
            IkeOp(Verb.INITIATE, name, "not up", conn=conn, child=c.name)
            for c in conn.children
            if c.name not in up
        ]
    return IkePlan(tuple(ops), tuple(waiting))


def _duplicates(conn: IkeConn, sas: tuple[IkeSa, ...]) -> list[IkeOp]:
    """A pair of hosts keeps one IKE_SA. Several appear when both ends initiate at once (both
    agents starting, each seeing none), and the rule must hold however they arose, two from one
    end included (the old rule, "the higher end terminates its own", left those for ever and
    with them a CHILD_SA per tenant that charon's policy did not name). Both ends rank the
    IKE_SAs the same way, from what both see alike: those the lower host address initiated
    first, then by initiator SPI. Each end terminates the others it initiated itself, so every
    surplus IKE_SA has exactly one end deleting it."""
    if len(sas) < 2:
        return []
    keep = min(
        sas, key=lambda sa: (sa.initiator != conn.local_is_lower, int(sa.initiator_spi or "0", 16))
    )
    return [
        IkeOp(Verb.TERMINATE, conn.name, "duplicate IKE_SA", ike_id=sa.uniqueid)
        for sa in sas
        if sa is not keep and sa.initiator
    ]


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
