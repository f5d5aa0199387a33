"""The kernel adapter: the only module that imports pyroute2 (IPRoute, never IPDB/NDB).

One NetlinkKernel talks to one network namespace: the process's own (netns None) or a named
one under /run/netns, entered with flags=0 so that a typo never creates a namespace, by a
short-lived thread that opens the namespace's sockets there (no child process per namespace).
Links and proxy-NDP entries go through pyroute2; routes, which come by the 100,000, and the
dumps of addresses and of link names (one veth per endpoint: pyroute2 decoded every attribute of
every link, three times per namespace and plan), go through rtnl.py's stdlib socket, opened in
the same namespace.
Objects read back carry no netns: the driver knows which logical namespace it asked.
Netlink errors become KernelError subclasses with the errno's words; "already gone" on delete
and "already there" on address/neigh add count as success.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from socket import AF_INET, AF_INET6
from typing import Any, TypeVar

from pyroute2 import IPRoute, NetlinkError
from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.rtnl import RTM_GETNEIGH
from pyroute2.netlink.rtnl.ndmsg import ndmsg

from routed_nv import netns as namespaces
from routed_nv.model.routing import (
    Address,
    IPInterface,
    Link,
    LinkKind,
    NeighProxy,
    PolicyRule,
    Route,
    Tunnel,
)
from routed_nv.routing import rtnl
from routed_nv.routing.kernel import (
    AlreadyExists,
    KernelError,
    LinkState,
    NetnsNotFound,
    NotFound,
    RouteOp,
    error_from_errno,
)

PROC_SYS = Path("/proc/sys")

IFF_UP = 0x1
IFA_F_NODAD = 0x02
NTF_PROXY = 0x08
IP6_TNL_F_IGN_ENCAP_LIMIT = 0x1
_TUNNEL_MODES = {"any": 0, "ipip": 4, "ip6ip6": 41}
FR_ACT_TO_TBL = 1
NO_SUPPRESS = 0xFFFFFFFF  # FRA_SUPPRESS_PREFIXLEN of a rule that suppresses nothing
# the attributes of a plain `from all lookup <table>` rule; any other one is a selector
_PLAIN_RULE_ATTRS = {"FRA_TABLE", "FRA_PRIORITY", "FRA_PROTOCOL", "FRA_SUPPRESS_PREFIXLEN"}
_RULE_FAMILY = {4: AF_INET, 6: AF_INET6}

T = TypeVar("T")


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except NetlinkError as exc:
        raise (error_from_errno(exc.code) if exc.code else KernelError(str(exc))) from None
    except OSError as exc:
        raise KernelError(exc.strerror or str(exc)) from None


class NetlinkKernel:
    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        if netns is not None and not namespaces.exists(netns):
            raise NetnsNotFound(f"netns {netns} does not exist")
        # A named namespace's socket is opened by a thread inside it (_in_netns), not by
        # pyroute2's netns=, which forks a child process per namespace and gives it 2 s to hand
        # the socket back: slow with a hundred workload namespaces, and a late child that had
        # exited was a RuntimeError ("child process is dead") that failed the whole apply.
        # Both sockets are opened when first needed: a no-op resync reads a workload namespace
        # (links, addresses, routes) through the stdlib socket alone, and an IPRoute (with its
        # event loop) per namespace cost more than those reads.
        self._pyroute2: IPRoute | None = None
        self._indexes: dict[str, int] = {}
        self._routes: rtnl.RouteSocket | None = None
        # fail now, as before, for a namespace that cannot be entered
        self._route_socket()

    @property
    def _ipr(self) -> IPRoute:
        if self._pyroute2 is None:
            sock = self._in_netns(_netlink_route_socket)
            with _errors():
                self._pyroute2 = IPRoute(fileno=sock.detach())
        return self._pyroute2

    def close(self) -> None:
        if self._pyroute2 is not None:
            self._pyroute2.close()
        if self._routes is not None:
            self._routes.close()

    def _route_socket(self) -> rtnl.RouteSocket:
        if self._routes is None:
            self._routes = rtnl.RouteSocket(self._in_netns(rtnl.new_socket))
        return self._routes

    # links

    def _index(self, name: str) -> int:
        # one lookup per name and run, not one per route: thousands of routes share a device
        if name not in self._indexes:
            with _errors():
                found = self._ipr.link_lookup(ifname=name)
            if not found:
                raise NotFound("No such device")
            self._indexes[name] = found[0]
        return self._indexes[name]

    def links(self) -> list[LinkState]:
        # decoded with struct: pyroute2 decoded every attribute of every link, and a host has
        # a veth per endpoint (each endpoint change reads the host's links again)
        try:
            found = [_link_attrs(body) for body in self._route_socket().link_messages()]
        except OSError as exc:
            raise KernelError(exc.strerror or str(exc)) from None
        names = {index: attrs.get(IFLA_IFNAME) for index, _, attrs in found}
        return [_link_state(index, flags, attrs, names) for index, flags, attrs in found]

    def add_link(self, link: Link) -> None:
        spec: dict[str, Any] = {"ifname": link.name, "kind": str(link.kind)}
        if link.kind is LinkKind.VRF:
            spec["vrf_table"] = link.vrf_table
        elif link.kind is LinkKind.IP6TNL and link.tunnel is not None:
            spec.update(_tunnel_spec(link.tunnel))
        elif link.kind is LinkKind.VETH and link.veth_peer is not None:
            spec["peer"] = {"ifname": link.veth_peer.name, "net_ns_fd": link.veth_peer.netns}
        self._indexes.pop(link.name, None)
        with _errors():
            self._ipr.link("add", **spec)
        self.set_link(link.name, link.mtu, link.master, link.up)

    def set_link(self, name: str, mtu: int | None, master: str | None, up: bool) -> None:
        spec: dict[str, Any] = {
            "index": self._index(name),
            "master": self._index(master) if master else 0,
            "state": "up" if up else "down",
        }
        if mtu is not None:
            spec["mtu"] = mtu
        with _errors():
            self._ipr.link("set", **spec)

    def delete_link(self, name: str) -> None:
        try:
            index = self._index(name)
            with _errors():
                self._ipr.link("del", index=index)
            del self._indexes[name]
        except NotFound:
            pass

    # addresses

    def _names(self) -> dict[int, str]:
        try:
            return self._route_socket().link_names()
        except OSError as exc:
            raise KernelError(exc.strerror or str(exc)) from None

    def addresses(self) -> list[tuple[str, IPInterface]]:
        names = self._names()
        try:
            return self._route_socket().addresses(names)
        except OSError as exc:
            raise KernelError(exc.strerror or str(exc)) from None

    def _addr(self, command: str, address: Address) -> None:
        iface = address.address
        with _errors():
            self._ipr.addr(
                command,
                index=self._index(address.ifname),
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
                **({"flags": IFA_F_NODAD} if iface.version == 6 and command == "add" else {}),
            )

    def add_address(self, address: Address) -> None:
        with suppress(AlreadyExists):
            self._addr("add", address)

    def delete_address(self, address: Address) -> None:
        with suppress(NotFound):
            self._addr("del", address)

    # routes

    def routes(self, protos: set[int]) -> list[Route]:
        names = self._names()
        try:
            return self._route_socket().dump(protos, names)
        except OSError as exc:
            raise KernelError(exc.strerror or str(exc)) from None

    def write_routes(self, ops: Sequence[RouteOp]) -> list[KernelError | None]:
        outcomes: list[KernelError | None] = [None] * len(ops)
        requests: list[bytes | None] = []
        for i, (delete, route) in enumerate(ops):
            try:
                oif = self._index(route.dev) if route.dev is not None else None
            except NotFound as exc:
                # a missing device: nothing to delete, nothing to route through
                outcomes[i] = None if delete else exc
                requests.append(None)
                continue
            requests.append(rtnl.encode_route(route, oif, delete))
        try:
            acks = self._route_socket().send(requests)
        except (OSError, KernelError) as exc:
            # the outcome of every request is unknown: report them all, the next apply retries
            error = exc if isinstance(exc, KernelError) else KernelError(exc.strerror or str(exc))
            return [error if r is not None else o for r, o in zip(requests, outcomes, strict=True)]
        for i, (code, detail) in enumerate(acks):
            if code:
                error = error_from_errno(code, detail)
                outcomes[i] = None if ops[i].delete and isinstance(error, NotFound) else error
        return outcomes

    # proxy-NDP entries

    def neigh_proxies(self) -> list[NeighProxy]:
        # the kernel dumps its proxy table only when the request carries NTF_PROXY
        request = ndmsg()
        request["family"] = AF_INET6
        request["flags"] = NTF_PROXY
        names = self._names()
        with _errors():
            request["header"]["type"] = RTM_GETNEIGH
            request["header"]["flags"] = NLM_F_REQUEST | NLM_F_DUMP
            # (the synchronous nlm_request of pyroute2 0.9.7 fails on a missing status key)
            msgs = self._ipr.nlm_request_batch([request])
            found = []
            for m in msgs:
                name = names.get(m["ifindex"])
                if name is not None and m["flags"] & NTF_PROXY:
                    addr = ipaddress.IPv6Address(m.get("NDA_DST"))
                    found.append(NeighProxy(name, addr))
        return found

    def _neigh(self, command: str, proxy: NeighProxy) -> None:
        with _errors():
            self._ipr.neigh(
                command,
                dst=str(proxy.address),
                ifindex=self._index(proxy.ifname),
                flags=NTF_PROXY,
                family=AF_INET6,
            )

    def add_neigh_proxy(self, proxy: NeighProxy) -> None:
        with suppress(AlreadyExists):
            self._neigh("add", proxy)

    def delete_neigh_proxy(self, proxy: NeighProxy) -> None:
        with suppress(NotFound):
            self._neigh("del", proxy)

    # policy rules

    def rules(self) -> list[PolicyRule]:
        found = []
        for version, family in _RULE_FAMILY.items():
            with _errors():
                msgs = self._ipr.get_rules(family=family)
            found += [_policy_rule(m, version) for m in msgs if _is_plain_rule(m)]
        return found

    def _rule(self, command: str, rule: PolicyRule) -> None:
        with _errors():
            self._ipr.rule(
                command,
                family=_RULE_FAMILY[rule.version],
                priority=rule.priority,
                table=rule.table,
                protocol=rule.proto,
            )

    def add_rule(self, rule: PolicyRule) -> None:
        with suppress(AlreadyExists):
            self._rule("add", rule)

    def delete_rule(self, rule: PolicyRule) -> None:
        # FRA_PRIORITY is always sent, so the kernel matches this priority exactly (even 0) and
        # never takes the first rule of the table instead
        with suppress(NotFound):
            self._rule("del", rule)

    # sysctls

    def read_sysctl(self, path: str) -> str | None:
        def read() -> str | None:
            try:
                return (PROC_SYS / path).read_text().strip()
            except FileNotFoundError:
                return None

        return self._in_netns(read)

    def write_sysctl(self, path: str, value: str) -> None:
        self._in_netns(lambda: (PROC_SYS / path).write_text(value))

    def _in_netns(self, action: Callable[[], T]) -> T:
        """Run `action` in this namespace: /proc/sys/net and new sockets belong to the namespace
        of the thread that opens them."""
        try:
            return namespaces.run_in_netns(self.netns, action)
        except namespaces.NetnsError as exc:
            raise KernelError(str(exc)) from None
        except OSError as exc:
            raise KernelError(exc.strerror or str(exc)) from None


def _netlink_route_socket() -> socket.socket:
    """A NETLINK_ROUTE socket for pyroute2, in the calling thread's network namespace."""
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, 0)


IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER, IFLA_LINKINFO = 3, 4, 5, 10, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VRF_TABLE = 1
# IFLA_IP6TNL_* (linux/if_tunnel.h), by the names _tunnel reads
_IP6TNL = {
    2: "IFLA_IP6TNL_LOCAL",
    3: "IFLA_IP6TNL_REMOTE",
    4: "IFLA_IP6TNL_TTL",
    6: "IFLA_IP6TNL_ENCAP_LIMIT",
    8: "IFLA_IP6TNL_FLAGS",
    9: "IFLA_IP6TNL_PROTO",
}
_NLA_TYPE = 0x3FFF  # without the nested and byte-order flags
_U32 = struct.Struct("=I")


def _nested(data: bytes, offset: int = 0) -> dict[int, bytes]:
    return {k & _NLA_TYPE: bytes(v) for k, v in rtnl.attributes(data, offset).items()}


def _link_attrs(body: bytes) -> tuple[int, int, dict[int, Any]]:
    """(index, flags, the attributes LinkState needs) of an RTM_NEWLINK body."""
    _family, _type, index, flags, _change = rtnl.IFINFOMSG.unpack_from(body)
    raw = _nested(body, rtnl.IFINFOMSG.size)
    attrs: dict[int, Any] = {}
    if IFLA_IFNAME in raw:
        attrs[IFLA_IFNAME] = raw[IFLA_IFNAME].split(b"\0", 1)[0].decode()
    for key in (IFLA_MTU, IFLA_LINK, IFLA_MASTER):
        if key in raw:
            attrs[key] = _U32.unpack_from(raw[key])[0]
    info = _nested(raw[IFLA_LINKINFO]) if IFLA_LINKINFO in raw else {}
    if IFLA_INFO_KIND in info:
        attrs[IFLA_INFO_KIND] = info[IFLA_INFO_KIND].split(b"\0", 1)[0].decode()
    if IFLA_INFO_DATA in info:
        attrs[IFLA_INFO_DATA] = _nested(info[IFLA_INFO_DATA])
    return index, flags, attrs


def _link_state(index: int, flags: int, attrs: dict[int, Any], names: dict[int, str]) -> LinkState:
    kind = attrs.get(IFLA_INFO_KIND)
    data = attrs.get(IFLA_INFO_DATA) or {}
    master = attrs.get(IFLA_MASTER)
    vrf_table = data.get(IFLA_VRF_TABLE)
    return LinkState(
        name=attrs.get(IFLA_IFNAME),
        index=index,
        kind=kind,
        mtu=attrs.get(IFLA_MTU),
        up=bool(flags & IFF_UP),
        master=names.get(master) if master else None,
        vrf_table=_U32.unpack_from(vrf_table)[0] if kind == "vrf" and vrf_table else None,
        tunnel=_tunnel(_ip6tnl(data)) if kind == "ip6tnl" and data else None,
        peer_index=attrs.get(IFLA_LINK) if kind == "veth" else None,
    )


def _ip6tnl(data: dict[int, bytes]) -> dict[str, Any]:
    """An ip6tnl's IFLA_INFO_DATA by attribute name: addresses packed, numbers as ints."""
    found: dict[str, Any] = {}
    for key, value in data.items():
        name = _IP6TNL.get(key)
        if name is not None:
            found[name] = value if len(value) == 16 else int.from_bytes(value, sys.byteorder)
    return found


def _is_plain_rule(m: Any) -> bool:
    names = {name for name, _ in m["attrs"]}
    return (
        m["action"] == FR_ACT_TO_TBL
        and (m["src_len"], m["dst_len"], m["tos"], m["flags"]) == (0, 0, 0, 0)
        and names <= _PLAIN_RULE_ATTRS
        and m.get("FRA_SUPPRESS_PREFIXLEN", NO_SUPPRESS) == NO_SUPPRESS
    )


def _policy_rule(m: Any, version: int) -> PolicyRule:
    return PolicyRule(
        version,
        priority=m.get("FRA_PRIORITY") or 0,  # the kernel leaves out a priority of 0
        table=m.get("FRA_TABLE") or m["table"],
        proto=m.get("FRA_PROTOCOL") or 0,
    )


def _tunnel(data: Any) -> Tunnel:
    modes = {v: k for k, v in _TUNNEL_MODES.items()}
    remote = ipaddress.IPv6Address(data.get("IFLA_IP6TNL_REMOTE"))
    flags = data.get("IFLA_IP6TNL_FLAGS") or 0
    return Tunnel(
        local=ipaddress.IPv6Address(data.get("IFLA_IP6TNL_LOCAL")),
        remote=None if remote.is_unspecified else remote,
        mode=modes.get(data.get("IFLA_IP6TNL_PROTO"), str(data.get("IFLA_IP6TNL_PROTO"))),
        hoplimit=data.get("IFLA_IP6TNL_TTL"),
        encap_limit=(
            None if flags & IP6_TNL_F_IGN_ENCAP_LIMIT else data.get("IFLA_IP6TNL_ENCAP_LIMIT")
        ),
    )


def _tunnel_spec(tunnel: Tunnel) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "ip6tnl_proto": _TUNNEL_MODES[tunnel.mode],
        "ip6tnl_local": str(tunnel.local),
        "ip6tnl_ttl": tunnel.hoplimit,
    }
    if tunnel.remote is not None:
        spec["ip6tnl_remote"] = str(tunnel.remote)
    if tunnel.encap_limit is None:
        spec["ip6tnl_flags"] = IP6_TNL_F_IGN_ENCAP_LIMIT
    else:
        spec["ip6tnl_encap_limit"] = tunnel.encap_limit
    return spec
