"""Programs the routing datapath: reads the kernel back, diffs it against the desired state and
makes the minimal changes, one object kind after the other in dependency order.

Ownership (how a restarted agent recognises what it may change or remove):
- links: rnv0, rnv-v<T> (vrf), rnv-t<T> (ip6tnl), rnv-e<name> (veth) — created and deleted.
- ports: interfaces we do not own (a VM's tap, the workload end of our veth) — only enslaved,
  sized and set up. A port enslaved to one of our VRFs that is no longer configured is released
  (nomaster) and loses the addresses we gave it, but is never deleted or set down.
- addresses and proxy-NDP entries: on our links and ports; kernel-made IPv6 link-local
  addresses are left alone.
- routes: every route carrying one of our protocol numbers, in any table.
- sysctls: only set, never reverted (the previous value is unknown after a restart).
Changing a link's MTU or master happens in place; only a change the kernel cannot make in place
(VRF table, tunnel endpoints, veth peer) recreates the link.
A failure is reported against its object and the driver carries on with the others; a second
apply then retries exactly what is still different.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from routed_nv import markers
from routed_nv.reconcile import delta
from routed_nv.routing.kernel import Kernel, KernelError, LinkState
from routed_nv.routing.objects import (
    LINK_ORDER,
    Address,
    DesiredRouting,
    Link,
    LinkKind,
    NeighProxy,
    Port,
    Route,
    Sysctl,
)

OpenKernel = Callable[[str | None], Kernel]
OUR_PROTOS = {markers.RTPROT_ENDPOINT, markers.RTPROT_REMOTE, markers.RTPROT_INFRA}
_GATEWAY_V6 = ipaddress.IPv6Address(markers.GATEWAY_V6)


@dataclass(frozen=True)
class Change:
    op: str  # "+" add, "~" change in place or recreate, "-" remove
    obj: Any
    old: Any = None

    def __str__(self) -> str:
        return f"{self.op} {self.obj}" + (f"  (was: {self.old})" if self.old is not None else "")


@dataclass(frozen=True)
class Failure:
    what: str  # the object, e.g. "route 10.0.0.2/32 table 268435556"
    error: str

    def __str__(self) -> str:
        return f"{self.what}: {self.error}"


@dataclass
class Result:
    changes: list[Change] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def lines(self) -> list[str]:
        return [str(c) for c in self.changes] + [f"! {f}" for f in self.failures]


class _Session:
    """The kernels of one plan/apply run, one per namespace, and what we own in each."""

    def __init__(self, open_kernel: OpenKernel, host_netns: str | None, result: Result):
        self._open = open_kernel
        self._host_netns = host_netns
        self._kernels: dict[str | None, Kernel] = {}
        self._missing: set[str | None] = set()
        self._result = result
        self.owned_ifnames: dict[str | None, set[str]] = {}

    def kernel(self, netns: str | None) -> Kernel | None:
        """The kernel of a logical namespace (None: the host's), or None if it cannot be opened
        (reported once)."""
        if netns in self._missing:
            return None
        if netns not in self._kernels:
            try:
                self._kernels[netns] = self._open(netns if netns else self._host_netns)
            except KernelError as exc:
                self._missing.add(netns)
                self._result.failures.append(
                    Failure(f"netns {netns or self._host_netns}", str(exc))
                )
                return None
        return self._kernels[netns]

    def available(self, namespaces: Iterable[str | None]) -> set[str | None]:
        return {ns for ns in namespaces if self.kernel(ns) is not None}

    def close(self) -> None:
        for kernel in self._kernels.values():
            kernel.close()


class _Manager(Protocol):
    """One object kind: what exists (ours only) and how to change it."""

    kind: str

    def wanted(self, desired: DesiredRouting) -> Iterable[Any]: ...

    def actual(self, session: _Session, namespaces: set[str | None], desired: Mapping) -> dict: ...

    def upsert(self, kernel: Kernel, new: Any, old: Any) -> None: ...

    def remove(self, kernel: Kernel, old: Any) -> None: ...


def _is_owned_link(state: LinkState) -> bool:
    if state.name == markers.HOST_DEVICE:
        return state.kind == LinkKind.DUMMY
    if markers.tenant_of_link(state.name) is not None:
        return state.kind in (LinkKind.VRF, LinkKind.IP6TNL)
    return state.name.startswith(markers.ENDPOINT_LINK_PREFIX) and state.kind == LinkKind.VETH


def _is_our_vrf(name: str | None) -> bool:
    return (
        name is not None
        and name.startswith(markers.VRF_PREFIX)
        and bool(markers.tenant_of_link(name))
    )


def _unmanaged_as_none(actual: Any, wanted: Any | None) -> Any:
    """Fields the desired object leaves to the kernel (None) are not compared."""
    if wanted is None:
        return actual
    unset = {f.name: None for f in dataclasses.fields(wanted) if getattr(wanted, f.name) is None}
    return dataclasses.replace(actual, **unset)


class _Links:
    kind = "links"

    def wanted(self, desired: DesiredRouting) -> Iterable[Link]:
        return desired.links

    def actual(self, session: _Session, namespaces: set[str | None], desired: Mapping) -> dict:
        found = {}
        for ns in namespaces:
            states = session.kernel(ns).links()  # type: ignore[union-attr]
            for s in filter(_is_owned_link, states):
                wanted = desired.get((ns, s.name))
                link = Link(
                    s.name,
                    LinkKind(s.kind),
                    netns=ns,
                    mtu=s.mtu,
                    master=s.master,
                    up=s.up,
                    vrf_table=s.vrf_table,
                    tunnel=s.tunnel,
                    veth_peer=self._verified_peer(session, s, wanted),
                )
                found[link.key] = _unmanaged_as_none(link, wanted)
        return found

    @staticmethod
    def _verified_peer(session: _Session, state: LinkState, wanted: Link | None) -> Any:
        """The desired veth peer if the kernel's peer really is that interface, else None
        (which makes the link differ and be recreated)."""
        if wanted is None or wanted.veth_peer is None:
            return None
        kernel = session.kernel(wanted.veth_peer.netns)
        peers = kernel.links() if kernel else []
        for p in peers:
            if (
                p.name == wanted.veth_peer.name
                and p.kind == LinkKind.VETH
                and p.peer_index == state.index
                and state.peer_index == p.index
            ):
                return wanted.veth_peer
        return None

    def upsert(self, kernel: Kernel, new: Link, old: Link | None) -> None:
        if old is not None and new.same_identity(old):
            kernel.set_link(new.name, new.mtu, new.master, new.up)
            return
        if old is not None:
            kernel.delete_link(old.name)
        kernel.add_link(new)

    def remove(self, kernel: Kernel, old: Link) -> None:
        kernel.delete_link(old.name)


class _Ports:
    kind = "ports"

    def wanted(self, desired: DesiredRouting) -> Iterable[Port]:
        return desired.ports

    def actual(self, session: _Session, namespaces: set[str | None], desired: Mapping) -> dict:
        found = {}
        for ns in namespaces:
            for s in session.kernel(ns).links():  # type: ignore[union-attr]
                wanted = (ns, s.name) in desired
                stale = not wanted and _is_our_vrf(s.master) and not _is_owned_link(s)
                if wanted or stale:
                    port = Port(s.name, s.mtu, netns=ns, master=s.master, up=s.up)
                    found[(ns, s.name)] = _unmanaged_as_none(port, desired.get((ns, s.name)))
        return found

    def upsert(self, kernel: Kernel, new: Port, old: Port | None) -> None:
        kernel.set_link(new.name, new.mtu, new.master, new.up)

    def remove(self, kernel: Kernel, old: Port) -> None:
        kernel.set_link(old.name, None, None, old.up)


class _Sysctls:
    kind = "sysctls"

    def wanted(self, desired: DesiredRouting) -> Iterable[Sysctl]:
        return desired.sysctls

    def actual(self, session: _Session, namespaces: set[str | None], desired: Mapping) -> dict:
        found = {}
        for (ns, path), want in desired.items():
            if ns in namespaces:
                value = session.kernel(ns).read_sysctl(path)  # type: ignore[union-attr]
                if value is not None:
                    found[(ns, path)] = dataclasses.replace(want, value=value)
        return found

    def upsert(self, kernel: Kernel, new: Sysctl, old: Sysctl | None) -> None:
        kernel.write_sysctl(new.path, new.value)

    def remove(self, kernel: Kernel, old: Sysctl) -> None:
        raise AssertionError("sysctls are never removed")  # actual() only reads desired ones


class _Addresses:
    kind = "addresses"

    def wanted(self, desired: DesiredRouting) -> Iterable[Address]:
        return desired.addresses

    def actual(self, session: _Session, namespaces: set[str | None], desired: Mapping) -> dict:
        found = {}
        for ns in namespaces:
            kernel = session.kernel(ns)
            for ifname, iface in kernel.addresses(session.owned_ifnames[ns]):  # type: ignore[union-attr]
                if iface.version == 6 and iface.is_link_local and iface.ip != _GATEWAY_V6:
                    continue  # the kernel's own link-local address
                addr = Address(ifname, iface, netns=ns)
                found[addr] = addr
        return found

    def upsert(self, kernel: Kernel, new: Address, old: Address | None) -> None:
        kernel.add_address(new)

    def remove(self, kernel: Kernel, old: Address) -> None:
        kernel.delete_address(old)


class _Routes:
    kind = "routes"

    def wanted(self, desired: DesiredRouting) -> Iterable[Route]:
        return desired.routes

    def actual(self, session: _Session, namespaces: set[str | None], desired: Mapping) -> dict:
        found = {}
        for ns in namespaces:
            for r in session.kernel(ns).routes(OUR_PROTOS):  # type: ignore[union-attr]
                route = dataclasses.replace(r, netns=ns)
                found[route.key] = route
        return found

    def upsert(self, kernel: Kernel, new: Route, old: Route | None) -> None:
        kernel.replace_route(new)

    def remove(self, kernel: Kernel, old: Route) -> None:
        kernel.delete_route(old)


class _NeighProxies:
    kind = "neighbour proxies"

    def wanted(self, desired: DesiredRouting) -> Iterable[NeighProxy]:
        return desired.neigh_proxies

    def actual(self, session: _Session, namespaces: set[str | None], desired: Mapping) -> dict:
        found = {}
        for ns in namespaces:
            kernel = session.kernel(ns)
            for p in kernel.neigh_proxies(session.owned_ifnames[ns]):  # type: ignore[union-attr]
                proxy = dataclasses.replace(p, netns=ns)
                found[proxy] = proxy
        return found

    def upsert(self, kernel: Kernel, new: NeighProxy, old: NeighProxy | None) -> None:
        kernel.add_neigh_proxy(new)

    def remove(self, kernel: Kernel, old: NeighProxy) -> None:
        kernel.delete_neigh_proxy(old)


# Dependency order: links before the ports enslaved to them, per-device sysctls before the
# addresses (accept_dad), addresses before routes, routes before proxies.
_MANAGERS: tuple[_Manager, ...] = (
    _Links(),
    _Ports(),
    _Sysctls(),
    _Addresses(),
    _Routes(),
    _NeighProxies(),
)


def _sort_key(obj: Any) -> tuple:
    """Dependencies first: VRFs before their slaves, a gateway's on-link route before routes
    via that gateway."""
    if isinstance(obj, Link):
        return (LINK_ORDER[obj.kind], str(obj))
    if isinstance(obj, Route):
        return (obj.via is not None, str(obj))
    return (0, str(obj))


class RoutingDriver:
    """Brings the kernel to a DesiredRouting. `host_netns` None programs the namespace this
    process runs in; a name programs that namespace (labs, tests). Workload namespaces named by
    the objects are opened as they are."""

    def __init__(self, open_kernel: OpenKernel, host_netns: str | None = None) -> None:
        self._open = open_kernel
        self._host_netns = host_netns

    def plan(self, desired: DesiredRouting) -> Result:
        """What apply would change, without changing anything."""
        return self._run(desired, execute=False)

    def apply(self, desired: DesiredRouting) -> Result:
        return self._run(desired, execute=True)

    def _run(self, desired: DesiredRouting, execute: bool) -> Result:
        result = Result()
        session = _Session(self._open, self._host_netns, result)
        try:
            namespaces = session.available(desired.namespaces())
            session.owned_ifnames = self._owned_ifnames(session, desired, namespaces)
            for manager in _MANAGERS:
                self._reconcile(manager, session, desired, namespaces, execute, result)
        finally:
            session.close()
        return result

    @staticmethod
    def _owned_ifnames(
        session: _Session, desired: DesiredRouting, namespaces: set[str | None]
    ) -> dict[str | None, set[str]]:
        """Interfaces whose addresses and proxies are ours, fixed before anything changes so that
        a released port still loses what we put on it."""
        owned: dict[str | None, set[str]] = {ns: set() for ns in namespaces}
        for obj in (*desired.links, *desired.ports):
            if obj.netns in owned:
                owned[obj.netns].add(obj.name)
        for ns in namespaces:
            for s in session.kernel(ns).links():  # type: ignore[union-attr]
                if _is_owned_link(s) or _is_our_vrf(s.master):
                    owned[ns].add(s.name)
        return owned

    @staticmethod
    def _reconcile(
        manager: _Manager,
        session: _Session,
        desired: DesiredRouting,
        namespaces: set[str | None],
        execute: bool,
        result: Result,
    ) -> None:
        wanted: dict[Hashable, Any] = {
            obj.key: obj for obj in manager.wanted(desired) if obj.netns in namespaces
        }
        try:
            actual = manager.actual(session, namespaces, wanted)
        except KernelError as exc:
            result.failures.append(Failure(f"reading {manager.kind}", str(exc)))
            return
        changes = delta(wanted, actual)
        for new in sorted(changes.upserts.values(), key=_sort_key):
            old = actual.get(new.key)
            change = Change("~" if old is not None else "+", new, old)
            kernel = session.kernel(new.netns)
            _attempt(result, change, execute, manager.upsert, kernel, new, old)
        for old in sorted(changes.deletes.values(), key=_sort_key, reverse=True):
            kernel = session.kernel(old.netns)
            _attempt(result, Change("-", old), execute, manager.remove, kernel, old)


def _attempt(
    result: Result, change: Change, execute: bool, action: Callable[..., None], *args: Any
) -> None:
    if execute:
        try:
            action(*args)
        except KernelError as exc:
            result.failures.append(Failure(change.obj.describe(), str(exc)))
            return
    result.changes.append(change)
