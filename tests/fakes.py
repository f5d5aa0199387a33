"""The test fakes: stand-ins for the kernel, the daemons and the drivers that the unit tests
share, one of each."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import os
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from routed_nv.agent.changes import Changed
from routed_nv.agent.datapath import Outcome, Stage
from routed_nv.agent.source import SourceUpdate
from routed_nv.config.model import Config
from routed_nv.directory.birdc import (
    GR_RECOVERY,
    BirdError,
    CommandError,
    Line,
    Protocol,
    Reply,
    Route,
)
from routed_nv.directory.learn import MirrorRoute, PublishedRoute
from routed_nv.directory.netlink_watch import RouteEvent
from routed_nv.esp.vici_adapter import ViciError
from routed_nv.esp.xfrm import Op, OpFailure, Verb, XfrmError
from routed_nv.model.directory import DirectoryView
from routed_nv.model.directory_delta import DirectoryDelta
from routed_nv.model.netfilter import ActualTable, Family, NetfilterError, TableChange
from routed_nv.model.result import Problem as ApplyProblem
from routed_nv.model.routing import NeighProxy, PolicyRule
from routed_nv.model.secret import Secret
from routed_nv.model.xfrm import XfrmPolicy, XfrmState
from routed_nv.routing import rtnl
from routed_nv.routing.kernel import AlreadyExists, KernelError, LinkState, NetnsNotFound, NotFound


class FakeDatapath:
    def __init__(self) -> None:
        self.applied: list[tuple[Config, DirectoryView]] = []
        self.resyncs: list[bool] = []
        self.errors: list[str] = []
        self.raises: Exception | None = None
        self.changes = ["+ route 10.0.0.2/32"]
        self.done: list[Changed] = []  # the changes for the log
        self.drift: list[str] = []  # what a plan finds changed behind the agent's back
        self.plans: list[bool] = []
        self.deltas: list[DirectoryDelta | None] = []
        self.since: list[tuple[Config, DirectoryView] | None] = []

    def plan(self, config: Config, view: DirectoryView, resync: bool = False) -> Outcome:
        self.plans.append(resync)
        return Outcome([Stage("routing", lines=list(self.drift))])

    def apply(
        self,
        config: Config,
        view: DirectoryView,
        resync: bool = False,
        delta: DirectoryDelta | None = None,
        since: tuple[Config, DirectoryView] | None = None,
    ) -> Outcome:
        self.since.append(since)
        self.applied.append((config, view))
        self.resyncs.append(resync)
        self.deltas.append(delta)
        if self.raises is not None:
            raise self.raises
        errors = [ApplyProblem(e, transient=True) for e in self.errors]
        stage = Stage("routing", list(self.changes), list(self.done), errors)
        return Outcome([stage])


class FakeSource:
    name = "fake"

    def __init__(self) -> None:
        self.publish: Callable[[SourceUpdate], None] | None = None
        self.reloaded: list[Config] = []
        self.stopped = False

    def start(self, config: Config, publish: Callable[[SourceUpdate], None]) -> None:
        self.publish = publish

    def reload(self, config: Config) -> None:
        self.reloaded.append(config)

    def stop(self) -> None:
        self.stopped = True


class FakeWatch:
    """Mirror and publish routes set by the test; a pipe makes the source's select() wake as
    netlink would."""

    def __init__(self) -> None:
        self.routes: frozenset[MirrorRoute] = frozenset()
        self.published: frozenset[PublishedRoute] = frozenset()
        self._seen: frozenset[MirrorRoute | PublishedRoute] = frozenset()
        self._r, self._w = os.pipe()

    def set(self, *routes: MirrorRoute, published: tuple[PublishedRoute, ...] = ()) -> None:
        self.routes = frozenset(routes)
        self.published = frozenset(published)
        os.write(self._w, b"x")

    def open(self) -> FakeWatch:
        return self

    def close(self) -> None:
        pass

    def fileno(self) -> int:
        return self._r

    def wait(self, timeout: float | None = None) -> list[RouteEvent]:
        """What set() changed since the last wait, as events, as the real watch returns them."""
        os.set_blocking(self._r, False)
        with contextlib.suppress(BlockingIOError):
            os.read(self._r, 4096)
        now = self.routes | self.published
        events = [RouteEvent(False, r) for r in self._seen - now]
        events += [RouteEvent(True, r) for r in now - self._seen]
        self._seen = now
        return events


class FakeBirdClient:
    """BIRD's answers, changed by the test between polls."""

    def __init__(self) -> None:
        self.sessions = {"rr1": "Established", "rr2": "Active"}
        self.recovering = False
        self.running = True
        self.unwritten: dict[str, list[Route]] = {}  # `show route` arguments -> paths
        self.asked: list[str] = []

    def __call__(self, path: Path) -> FakeBirdClient:
        if not self.running:
            raise BirdError(f"cannot connect to BIRD at {path}: No such file or directory")
        return self

    def __enter__(self) -> FakeBirdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def protocols(self) -> list[Protocol]:
        state = {"Established": "up"}
        return [
            Protocol(name, "BGP", "---", state.get(s, "start"), "2026-01-01", s)
            for name, s in self.sessions.items()
        ]

    def routes(self, arguments: str) -> list[Route]:
        self.asked.append(arguments)
        if arguments not in self.unwritten:
            raise CommandError(f"show route {arguments} all", 9001, "syntax error")
        return self.unwritten[arguments]

    def command(self, command: str) -> Reply:
        assert command == "show status"
        lines = [Line(1000, "BIRD 2.0.12")]
        if self.recovering:
            lines.append(Line(24, GR_RECOVERY))
        return Reply((*lines, Line(13, "Daemon is up and running")))


class FakeBirdSocket:
    """A UNIX socket server that greets like BIRD and answers each command line from a script,
    in chunks of `chunk` bytes (BIRD's replies arrive split anywhere)."""

    def __init__(self, path: Path, script: Callable[[str], str], greeting: str, chunk: int) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen()
        self.script, self.greeting, self.chunk = script, greeting, chunk
        self.commands: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            self._send(conn, self.greeting)
            buffer = b""
            while data := conn.recv(4096):
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self.commands.append(line.decode())
                    answer = self.script(line.decode())
                    if answer == "HANG":
                        continue
                    self._send(conn, answer)

    def _send(self, conn: socket.socket, text: str) -> None:
        data = text.encode()
        for i in range(0, len(data), self.chunk):
            conn.sendall(data[i : i + self.chunk])

    def close(self) -> None:
        self.server.close()


class FakeStage:
    """One driver: records its calls in the shared list, answers with what it is given; an
    exception given as an answer is raised."""

    def __init__(self, name: str, calls: list[str], plan: Any, result: Any) -> None:
        self.name, self.calls = name, calls
        self.planned, self.result = plan, result
        self.applied_plans: list[Any] = []

    def _answer(self, call: str, answer: Any) -> Any:
        self.calls.append(f"{self.name}.{call}")
        if isinstance(answer, Exception):
            raise answer
        return answer

    def plan(self, desired: object, resync: bool = False) -> Any:
        return self._answer("plan", self.planned)

    def apply(self, plan: Any) -> Any:
        self.applied_plans.append(plan)
        result = self._answer("apply", self.result)
        # as the drivers do: the plan's problems first, then the apply's
        return dataclasses.replace(result, problems=[*plan.problems, *result.problems])


class FakeNetfilterStage(FakeStage):
    """The netfilter driver, which also commits changes made without a read (one endpoint's
    rules): recorded as "netfilter.apply_changes"."""

    def apply_changes(self, changes: list[Any]) -> Any:
        self.applied_plans.append(changes)
        return self._answer("apply_changes", self.result)


class FakeReconfigureClient:
    calls: ClassVar[list[str]] = []

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> FakeReconfigureClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def configure_check(self, path: Path) -> None:
        self.calls.append(f"check {path.name}")

    def configure(self, path: Path) -> str:
        self.calls.append(f"configure {path.name}")
        return "Reconfigured"


class FakeWatchSocket:
    PORT = 4242

    def send(self, data: bytes) -> int:
        return len(data)

    def getsockname(self) -> tuple[int, int]:
        return (self.PORT, 0)


class FakeXfrmKernel:
    """An XFRM table that applies ops like iproute2 would, and can be told to fail some."""

    def __init__(self) -> None:
        self.states: dict[object, XfrmState] = {}
        self.policies: dict[object, XfrmPolicy] = {}
        self.log: list[Op] = []
        self.fail_spi: int | None = None
        self.broken = False

    def read_states(self) -> list[XfrmState]:
        if self.broken:
            raise XfrmError("ip xfrm state in netns x failed: boom")
        return list(self.states.values())

    def read_policies(self) -> list[XfrmPolicy]:
        return list(self.policies.values())

    def apply(self, ops: list[Op]) -> list[OpFailure]:
        failures = []
        for op in ops:
            obj = op.obj
            if isinstance(obj, XfrmState) and obj.spi == self.fail_spi:
                failures.append(OpFailure(op, "RTNETLINK answers: File exists"))
                continue
            self.log.append(op)
            table: dict = self.states if isinstance(obj, XfrmState) else self.policies
            if op.verb is Verb.DELETE:
                table.pop(obj.key(), None)
            else:
                table[obj.key()] = obj
        return failures


PROTO_NAMES = {"4": "ipencap", "41": "ipv6"}


class FakeCharon:
    def __init__(self) -> None:
        self.conns: dict[str, Mapping[str, Any]] = {}
        self.sas: list[tuple[str, dict[str, Any]]] = []
        self.shared: dict[str, bytes] = {}
        self.keys: list[str] = []
        self.calls: list[str] = []
        self.initiate_error: ViciError | None = None

    # reading, as charon prints it
    def list_conns(self) -> dict[str, dict[str, Any]]:
        def ts(sel: list[str]) -> list[str]:
            return [
                s.replace(f"[{n}]", f"[{name}]")
                for s in sel
                for n, name in PROTO_NAMES.items()
                if s.endswith(f"[{n}]")
            ]

        return {
            name: {
                "local_addrs": msg["local_addrs"],
                "remote_addrs": msg["remote_addrs"],
                "version": "IKEv2",
                "children": {
                    c: {
                        "mode": "TRANSPORT",
                        "local-ts": ts(v["local_ts"]),
                        "remote-ts": ts(v["remote_ts"]),
                    }
                    for c, v in msg["children"].items()
                },
            }
            for name, msg in self.conns.items()
        }

    def list_sas(self) -> list[tuple[str, dict[str, Any]]]:
        return self.sas

    def get_shared(self) -> list[str]:
        return list(self.shared)

    def get_keys(self) -> list[str]:
        return self.keys

    def list_certs(self) -> list[bytes]:
        return []

    # writing
    def load_conn(self, name: str, message: Mapping[str, object]) -> None:
        self.calls.append(f"load-conn {name}")
        self.conns[name] = message

    def unload_conn(self, name: str) -> None:
        self.calls.append(f"unload-conn {name}")
        del self.conns[name]

    def load_shared(self, ident: str, secret: Secret, owners: list[str]) -> None:
        self.calls.append(f"load-shared {ident}")
        self.shared[ident] = secret.value

    def load_cert(self, flag: str, pem: str) -> None:
        self.calls.append(f"load-cert {flag}")

    def load_key(self, key: Secret) -> str:
        self.calls.append("load-key")
        self.keys.append("ab12")
        return "ab12"

    def initiate(self, ike: str, child: str, timeout_s: float) -> None:
        self.calls.append(f"initiate {child}")
        if self.initiate_error:
            raise self.initiate_error

    def terminate_ike(self, uniqueid: str, timeout_s: float, force: bool = False) -> None:
        self.calls.append(f"terminate {uniqueid}" + (" (force)" if force else ""))

    def terminate_child(self, uniqueid: str, timeout_s: float) -> None:
        self.calls.append(f"terminate-child {uniqueid}")

    def rekey_child(self, uniqueid: str) -> None:
        self.calls.append(f"rekey-child {uniqueid}")

    def establish(
        self,
        conn: str,
        children: list[str],
        uniqueid: str = "1",
        initiator: bool = True,
        spi: str = "0123456789abcdef",
    ) -> None:
        sa = {
            "uniqueid": uniqueid,
            "state": "ESTABLISHED",
            "initiator": "yes" if initiator else "no",
            "initiator-spi": spi,
            "child-sas": {
                f"{c}-{i}": {"name": c, "state": "INSTALLED", "uniqueid": f"{uniqueid}{i}"}
                for i, c in enumerate(children)
            },
        }
        self.sas.append((conn, sa))


class FakeTables:
    """Legacy tables as the adapter reports them; apply() mimics one atomic commit."""

    def __init__(self) -> None:
        self.chains: dict[tuple[Family, str], dict[str, tuple]] = {}
        self.hooks: dict[tuple[Family, str], dict[str, list[str]]] = {}
        self.applied: list[TableChange] = []
        self.fail: set[Family] = set()

    def read(self, family, table):
        hooks = self.hooks.get((family, table), {})
        return ActualTable(
            family,
            table,
            dict(self.chains.get((family, table), {})),
            {},
            {h: tuple(enumerate(targets)) for h, targets in hooks.items() if targets},
        )

    def apply(self, change):
        if change.family in self.fail:
            raise NetfilterError(f"{change.family} table {change.table}: apply failed: boom")
        self.applied.append(change)
        chains = self.chains.setdefault((change.family, change.table), {})
        hooks = self.hooks.setdefault((change.family, change.table), {})
        chains.update(change.set_chains)
        for name, (append, delete) in change.edit_chains.items():
            kept = tuple(r for r in chains[name] if r not in delete)
            chains[name] = kept + append
        for hook, target in change.hooks.items():
            hooks[hook] = [target] if target else []
        for name in change.delete_chains:
            del chains[name]


# what a fresh namespace has: `ip rule` of both families (proto kernel)
KERNEL_RULES = {
    PolicyRule(4, 0, 255, 2),
    PolicyRule(4, 32766, 254, 2),
    PolicyRule(4, 32767, 253, 2),
    PolicyRule(6, 0, 255, 2),
    PolicyRule(6, 32766, 254, 2),
}


class FakeRoutingKernel:
    """One namespace; veths reach into the other namespaces of the same world."""

    def __init__(self, world, name):
        self.world, self.name = world, name
        self.links_ = {}  # name -> LinkState
        self.addrs = set()  # (ifname, interface)
        self.routes_ = {}  # (table, dst, metric) -> Route
        self.proxies = set()
        self.sysctls = {"net/ipv4/ip_forward": "0", "net/ipv6/conf/all/forwarding": "0"}
        self.log = []
        self.reads = Counter()  # what the driver read, by kind
        self.failing = {}  # str(dst) -> error words
        self.rules_ = set(KERNEL_RULES)

    def _new_index(self):
        self.world.next_index += 1
        return self.world.next_index

    def plain_link(self, name, kind=None, master=None, mtu=1500):
        self.links_[name] = LinkState(name, self._new_index(), kind, mtu, True, master)

    def links(self):
        self.reads["links"] += 1
        return list(self.links_.values())

    def add_link(self, link):
        self.log.append(("add_link", link.name))
        if link.name in self.links_:
            raise AlreadyExists("File exists")
        state = LinkState(
            link.name,
            self._new_index(),
            str(link.kind),
            1500,
            False,
            None,
            link.vrf_table,
            link.tunnel,
        )
        if link.veth_peer:
            peer_ns = self.world.ns(link.veth_peer.netns)
            peer = LinkState(
                link.veth_peer.name,
                peer_ns._new_index(),
                "veth",
                1500,
                False,
                None,
                peer_index=state.index,
            )
            peer_ns.links_[peer.name] = peer
            state = dataclasses.replace(state, peer_index=peer.index)
        self.links_[link.name] = state
        self.set_link(link.name, link.mtu, link.master, link.up)

    def set_link(self, name, mtu, master, up):
        self.log.append(("set_link", name))
        if name not in self.links_:
            raise NotFound("No such device")
        s = self.links_[name]
        self.links_[name] = dataclasses.replace(s, mtu=mtu or s.mtu, master=master, up=up)

    def delete_link(self, name):
        self.log.append(("delete_link", name))
        self.links_.pop(name, None)
        self.addrs = {a for a in self.addrs if a[0] != name}
        self.routes_ = {k: r for k, r in self.routes_.items() if r.dev != name}

    def addresses(self):
        self.reads["addresses"] += 1
        return list(self.addrs)

    def _need(self, ifname):
        if ifname not in self.links_:
            raise NotFound("No such device")

    def add_address(self, address):
        self._need(address.ifname)
        self.addrs.add((address.ifname, address.address))

    def delete_address(self, address):
        self.addrs.discard((address.ifname, address.address))

    def routes(self, protos):
        self.reads["routes"] += 1
        return [r for r in self.routes_.values() if r.proto in protos]

    def write_routes(self, ops):
        # like the kernel: one request after the other, each with its own answer
        self.log.append(("write_routes", len(ops)))
        outcomes = []
        for delete, route in ops:
            try:
                (self._delete_route if delete else self._replace_route)(route)
                outcomes.append(None)
            except KernelError as exc:
                outcomes.append(exc)
        return outcomes

    def _replace_route(self, route):
        if str(route.dst) in self.failing:
            raise KernelError(self.failing[str(route.dst)])
        if route.dev:
            self._need(route.dev)
        self.log.append(("replace_route", str(route.dst)))
        self.routes_[(route.table, route.dst, route.metric)] = dataclasses.replace(
            route, netns=None
        )

    def _delete_route(self, route):
        self.log.append(("delete_route", str(route.dst)))
        self.routes_.pop((route.table, route.dst, route.metric), None)

    def neigh_proxies(self):
        return [NeighProxy(i, a) for i, a in self.proxies]

    def add_neigh_proxy(self, proxy):
        self.proxies.add((proxy.ifname, proxy.address))

    def delete_neigh_proxy(self, proxy):
        self.proxies.discard((proxy.ifname, proxy.address))

    def rules(self):
        self.reads["rules"] += 1
        return list(self.rules_)

    def add_rule(self, rule):
        self.log.append(("add_rule", rule.version, rule.priority))
        self.rules_.add(dataclasses.replace(rule, netns=None))

    def delete_rule(self, rule):
        # like the kernel: priority, table and protocol must all match
        self.log.append(("delete_rule", rule.version, rule.priority))
        self.rules_.discard(dataclasses.replace(rule, netns=None))

    def read_sysctl(self, path):
        self.reads["sysctls"] += 1
        return self.sysctls.get(path)

    def write_sysctl(self, path, value):
        self.sysctls[path] = value

    def close(self):
        pass


class FakeWorld:
    def __init__(self, *namespaces):
        self.next_index = 0
        self.kernels = {ns: FakeRoutingKernel(self, ns) for ns in (None, *namespaces)}

    def ns(self, name):
        if name not in self.kernels:
            raise NetnsNotFound(f"netns {name} does not exist")
        return self.kernels[name]


def ack(seq, code, text=None):
    """An NLMSG_ERROR as a kernel with NETLINK_CAP_ACK and NETLINK_EXT_ACK sends it."""
    body = struct.pack("=i", -code) + struct.pack("=IHHII", 16, 24, 0, seq, 0)
    flags = 0
    if text is not None:
        payload = text.encode() + b"\0"
        attr = struct.pack("=HH", 4 + len(payload), rtnl.NLMSGERR_ATTR_MSG) + payload
        body += attr + bytes(-len(attr) % 4)
        flags = rtnl.NLM_F_ACK_TLVS
    return struct.pack("=IHHII", 16 + len(body), rtnl.NLMSG_ERROR, flags, seq, 0) + body


class FakeRouteSocket:
    """Answers every request of a send() in one datagram; routes to 10.0.0.13 are refused.
    `names`: interface index -> name, to decode the requests."""

    def __init__(self, names):
        self.names = names
        self.sends = 0
        self.answers = []

    def send(self, data):
        self.sends += 1
        reply = b""
        for kind, _flags, seq, body in rtnl.messages(bytes(data)):
            route = rtnl.decode_route(body, self.names, {231})
            assert kind == rtnl.RTM_NEWROUTE
            bad = route.dst == ipaddress.ip_network("10.0.0.13/32")
            reply += ack(seq, errno.EINVAL if bad else 0, "Invalid gateway" if bad else None)
        self.answers.append(reply)
        return len(data)

    def recv(self, size):
        return self.answers.pop(0)


class FakeIprouteXfrm:
    """Reads what the test set on the class (esp.xfrm.IprouteXfrm's reading half)."""

    policies: tuple = ()
    states: tuple = ()

    def __init__(self, netns=None):
        self.netns = netns

    def read_policies(self):
        return list(self.policies)

    def read_states(self):
        return list(self.states)
