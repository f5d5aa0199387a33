"""Programs the routing datapath: diffs the desired state against what the kernel has and makes
the minimal changes, one object kind after the other in dependency order.

plan() reads, apply() writes exactly that plan and reads nothing (model/result.py). What the
kernel has comes from a cache (Felix's dataplane cache): the first plan reads each namespace's
kernel in full, every plan asked to `resync` the host namespace and a bounded rotating share of
the workload namespaces (plus those whose veth or wanted objects changed); after that our own
successful writes keep the cache current and a plan only holds the delta, so a directory event
costs in proportion to what changed, not to the 100,000 routes a host may carry. Drift made by
others is found by the periodic resync. Changing a device has side effects in the kernel
(deleting or re-enslaving it drops its routes and addresses), so a plan that changes a device
also asserts again what is wanted on it (addresses, proxies, per-device sysctls, ports enslaved
to it, routes through it), and nothing of what a deleted or recreated device carried is left to
remove; the apply that changes a device forgets what the cache knew of that namespace's links,
addresses, proxies and sysctls (cheap to read again at the next plan; routes are too many and
are kept).

Ownership (how a restarted agent recognises what it may change or remove):
- links: rnv0, rnv-v<T> (vrf), rnv-t<T> (ip6tnl), rnv-e<name> (veth) — created and deleted.
- ports: interfaces we do not own (a VM's tap, the workload end of our veth) — only enslaved,
  sized and set up. A port enslaved to one of our VRFs that is no longer configured is released
  (nomaster) and loses the addresses we gave it, but is never deleted or set down.
- addresses and proxy-NDP entries: on our links and ports; kernel-made IPv6 link-local
  addresses are left alone.
- routes: every route carrying one of our protocol numbers, in any table.
- sysctls: only set, never reverted (the previous value is unknown after a restart).
- policy rules (host namespace only): every `from all lookup` rule carrying RTPROT_INFRA, and the
  kernel's own `0: from all lookup local`, which the wanted local-table rule replaces
  (docs/isolation.md: a tenant must not reach the host's own addresses through it).
Changing a link's MTU or master happens in place; only a change the kernel cannot make in place
(VRF table, tunnel endpoints, veth peer) recreates the link.
A failure is reported against its object and the driver carries on with the others (routes go
to the kernel in batches, and every route gets its own answer); the cache keeps what the kernel
really has, so a second apply retries exactly what is still different.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from routed_nv.model import markers
from routed_nv.model.delta import delta
from routed_nv.model.result import Plan, Problem, Result, problem_of
from routed_nv.model.routing import (
    LINK_ORDER,
    LOCAL_TABLE,
    Address,
    DesiredRouting,
    IPInterface,
    Link,
    LinkKind,
    NeighProxy,
    PolicyRule,
    Port,
    Route,
    Sysctl,
)
from routed_nv.routing.kernel import Kernel, KernelError, LinkState, RouteOp

OpenKernel = Callable[[str | None], Kernel]
MAX_OPEN_KERNELS = 128  # workload namespaces open at once in one plan or apply (descriptors)
# Workload namespaces a resync reads in full besides those that changed, the least recently
# read first: each is verified at least every ceil(namespaces / 8) resyncs (docs/agent.md).
# Sized by time: entering one took ~16 ms in UML, so 32 were ~0.5 s of a no-op resync at
# 1,000 endpoints, its whole goal; 8 are ~0.13 s. Isolation (the host namespace's VRFs,
# routes and rules) is read in full at every resync regardless.
ROTATE_NAMESPACES = 8
OUR_PROTOS = {
    markers.RTPROT_ENDPOINT,
    markers.RTPROT_REMOTE,
    markers.RTPROT_INFRA,
    markers.RTPROT_STALE,
}
_GATEWAY_V6 = ipaddress.IPv6Address(markers.GATEWAY_V6)
_NOTHING: Mapping = {}
_UNRECORDED = (0, None)  # a host veth this driver's plan changes: recorded at the next resync


@dataclass(frozen=True)
class Change:
    op: str  # "+" add, "~" change in place or recreate, "-" remove
    obj: Any
    old: Any = None

    def __str__(self) -> str:
        return f"{self.op} {self.obj}" + (f"  (was: {self.old})" if self.old is not None else "")

    def lines(self) -> list[str]:
        return [str(self)]


class RoutingPlan(Plan[Change]):
    """The changes in dependency order (kind after kind, see _MANAGERS)."""


class RoutingResult(Result[Change]):
    pass


RouteKey = tuple[str | None, int, Any, int]


@dataclass
class _Known:
    """What the driver knows of one namespace's kernel; None (or a missing sysctl): not known,
    read it when it is needed."""

    links: list[LinkState] | None = None
    addresses: set[tuple[str, IPInterface]] | None = None  # of every interface
    proxies: set[NeighProxy] | None = None  # of every interface, without netns
    routes: dict[RouteKey, Route] | None = None  # ours only, with netns
    sysctls: dict[str, str | None] = field(default_factory=dict)
    rules: set[PolicyRule] | None = None  # ours only (see _is_owned_rule), without netns
    # workload namespaces, for the resync's rotation: when it was last read in full (the
    # driver's resync count), what was wanted in it and its host veth's (ifindex, peer
    # ifindex) at the last plan (_UNRECORDED: that plan changed the veth, its new indexes are
    # not known); a resync reads it again when either differs
    read_at: int = 0
    wanted: frozenset | None = None
    host_veth: tuple[int, int | None] | None = None


class _Session:
    """One plan or apply run: the cache, the kernels opened for it (only where something must
    be read or written) and, in a plan, the devices its changes will touch."""

    def __init__(
        self,
        open_kernel: OpenKernel,
        host_netns: str | None,
        problems: list[Problem],
        known: dict[str | None, _Known],
    ):
        self._open = open_kernel
        self._host_netns = host_netns
        self._kernels: dict[str | None, Kernel] = {}
        self._missing: set[str | None] = set()
        self._problems = problems
        self.known = known
        self.owned_ifnames: dict[str | None, set[str]] = {}
        # What hangs on these devices (or is in these tables) may go with the planned device
        # changes: the plan asserts what is wanted there again. On gone devices (deleted or
        # recreated) nothing of the old is left to remove.
        self.touched_devices: dict[str | None, set[str]] = {}
        self.touched_tables: dict[str | None, set[int]] = {}
        self.gone_devices: dict[str | None, set[str]] = {}

    def kernel(self, netns: str | None) -> Kernel | None:
        """The kernel of a logical namespace (None: the host's), or None if it cannot be opened
        (reported once, and all that was known of it is forgotten)."""
        if netns in self._missing:
            return None
        if netns in self._kernels:
            self._kernels[netns] = self._kernels.pop(netns)  # the most recently used last
        else:
            if netns is not None:
                self._close_least_used()
            try:
                self._kernels[netns] = self._open(netns if netns else self._host_netns)
            except KernelError as exc:
                self._missing.add(netns)
                self.known.pop(netns, None)
                self._problems.append(
                    problem_of(exc, message=f"netns {netns or self._host_netns}: {exc}")
                )
                return None
        return self._kernels[netns]

    def _close_least_used(self) -> None:
        """Keep at most MAX_OPEN_KERNELS workload namespaces open: a resync reads every one,
        and with a socket each, 1,000 endpoints ran out of the default 1,024 descriptors (the
        resync failed). A closed one is opened again when needed; what was read stays known."""
        open_workloads = [ns for ns in self._kernels if ns is not None]
        if len(open_workloads) >= MAX_OPEN_KERNELS:
            self._kernels.pop(open_workloads[0]).close()

    def available(self, namespaces: Iterable[str | None]) -> set[str | None]:
        """The namespaces known from earlier runs, and those that open now."""
        for ns in namespaces:
            if ns not in self.known and self.kernel(ns) is not None:
                self.known[ns] = _Known()
        return {ns for ns in namespaces if ns in self.known}

    def _kernel_for_read(self, netns: str | None) -> Kernel:
        kernel = self.kernel(netns)
        if kernel is None:
            raise KernelError(f"netns {netns or self._host_netns} is unavailable")
        return kernel

    def _entry(self, netns: str | None) -> _Known:
        known = self.known.get(netns)
        if known is None:
            raise KernelError(f"netns {netns or self._host_netns} is unavailable")
        return known

    def links(self, netns: str | None) -> list[LinkState]:
        known = self.known.get(netns)
        if known is None:
            return []  # a namespace that could not be opened has no links we can see
        if known.links is None:
            known.links = self._kernel_for_read(netns).links()
        return known.links

    def addresses(self, netns: str | None) -> set[tuple[str, IPInterface]]:
        known = self._entry(netns)
        if known.addresses is None:
            known.addresses = set(self._kernel_for_read(netns).addresses())
        return known.addresses

    def proxies(self, netns: str | None) -> set[NeighProxy]:
        known = self._entry(netns)
        if known.proxies is None:
            known.proxies = set(self._kernel_for_read(netns).neigh_proxies())
        return known.proxies

    def routes(self, netns: str | None, wanted: Mapping = _NOTHING) -> dict[RouteKey, Route]:
        """Our routes in `netns`, read once. A route read that equals its `wanted` object is
        cached as that object: the calculation's routes share their prefix and next hop with the
        directory view, the kernel's are new objects (~700 B a route, 100,000s of them)."""
        known = self._entry(netns)
        if known.routes is None:
            found = (  # no copy of a host route, whose netns is None already
                _same(r if r.netns == netns else dataclasses.replace(r, netns=netns), wanted)
                for r in self._kernel_for_read(netns).routes(OUR_PROTOS)
            )
            known.routes = {r.key: r for r in found}
        return known.routes

    def rules(self, netns: str | None) -> set[PolicyRule]:
        known = self._entry(netns)
        if known.rules is None:
            known.rules = set(filter(_is_owned_rule, self._kernel_for_read(netns).rules()))
        return known.rules

    def sysctl(self, netns: str | None, path: str) -> str | None:
        sysctls = self._entry(netns).sysctls
        if path not in sysctls:
            sysctls[path] = self._kernel_for_read(netns).read_sysctl(path)
        return sysctls[path]

    def cached(self, netns: str | None, kind: str) -> Any:
        """What is known of a kind ("rules", "addresses", "proxies") without reading: None if
        nothing is known."""
        known = self.known.get(netns)
        return None if known is None else getattr(known, kind)

    def forget(self, netns: str | None) -> None:
        """A device was changed (or we tried): the kernel may have dropped what hung on it, so
        the next plan reads it again."""
        known = self.known.get(netns)
        if known is not None:
            known.links = known.addresses = known.proxies = None
            known.sysctls.clear()

    def will_touch(self, touches: Iterable[Touch]) -> None:
        for t in touches:
            self.touched_devices.setdefault(t.netns, set()).add(t.ifname)
            if t.table is not None:
                self.touched_tables.setdefault(t.netns, set()).add(t.table)
            if t.gone:
                self.gone_devices.setdefault(t.netns, set()).add(t.ifname)

    def reasserted(self, netns: str | None, ifname: str | None, wanted: bool) -> bool:
        """Whether an object on this device is left out of what the kernel has: a wanted one
        is asserted again, any one on a gone device goes with it."""
        if ifname in self.gone_devices.get(netns, ()):
            return True
        return wanted and ifname in self.touched_devices.get(netns, ())

    def close(self) -> None:
        for kernel in self._kernels.values():
            kernel.close()


def _same(read: Route, wanted: Mapping) -> Route:
    same = wanted.get(read.key)
    return same if same is not None and same == read else read


class Touch(NamedTuple):
    """A device a change works on: the kernel may drop what hangs on it (`gone`: all of it)."""

    netns: str | None
    ifname: str
    table: int | None = None  # a VRF's: its routes may go with it
    gone: bool = False  # deleted or recreated


class _Manager(Protocol):
    """One object kind: what exists (ours only) and how to change it."""

    kind: str
    type: type

    def wanted(self, desired: DesiredRouting) -> Iterable[Any]: ...

    def actual(self, session: _Session, namespaces: set[str | None], desired: Mapping) -> dict: ...

    def write(self, session: _Session, changes: list[Change]) -> list[KernelError | None]:
        """Make the changes; one outcome per change, in order (None: done)."""

    def touches(self, change: Change) -> list[Touch]:
        """The devices a change works on (links and ports only)."""


class _OneByOne:
    """Writes one object after the other (kinds that come by the handful per host)."""

    def write(self, session: _Session, changes: list[Change]) -> list[KernelError | None]:
        outcomes: list[KernelError | None] = []
        for change in changes:
            kernel = session.kernel(change.obj.netns)
            try:
                if kernel is None:
                    raise KernelError("its network namespace is unavailable")
                if change.op == "-":
                    self.remove(session, kernel, change.obj)
                else:
                    self.upsert(session, kernel, change.obj, change.old)
                outcomes.append(None)
            except KernelError as exc:
                outcomes.append(exc)
            finally:
                for touch in self.touches(change):
                    session.forget(touch.netns)
        return outcomes

    def touches(self, change: Change) -> list[Touch]:
        return []

    def upsert(self, session: _Session, kernel: Kernel, new: Any, old: Any) -> None:
        raise NotImplementedError

    def remove(self, session: _Session, kernel: Kernel, old: Any) -> None:
        raise NotImplementedError


def _is_owned_link(state: LinkState) -> bool:
    if state.name == markers.HOST_DEVICE:
        return state.kind == LinkKind.DUMMY
    if markers.tenant_of_link(state.name) is not None:
        return state.kind in (LinkKind.VRF, LinkKind.IP6TNL)
    return state.name.startswith(markers.ENDPOINT_LINK_PREFIX) and state.kind == LinkKind.VETH


def _is_owned_rule(rule: PolicyRule) -> bool:
    # the kernel's default local-table rule (proto kernel, or unspec when an operator put it
    # back with `ip rule add pref 0 lookup local`) is the one ours replaces
    kernel_local = rule.priority == 0 and rule.table == LOCAL_TABLE
    return rule.proto == markers.RTPROT_INFRA or kernel_local


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


class _Links(_OneByOne):
    kind = "links"
    type = Link

    def wanted(self, desired: DesiredRouting) -> Iterable[Link]:
        return desired.links

    def actual(self, session: _Session, namespaces: set[str | None], desired: Mapping) -> dict:
        found = {}
        for ns in namespaces:
            for s in filter(_is_owned_link, session.links(ns)):
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
        for p in session.links(wanted.veth_peer.netns):
            if (
                p.name == wanted.veth_peer.name
                and p.kind == LinkKind.VETH
                and p.peer_index == state.index
                and state.peer_index == p.index
            ):
                return wanted.veth_peer
        return None

    def upsert(self, session: _Session, kernel: Kernel, new: Link, old: Link | None) -> None:
        if old is not None and new.same_identity(old):
            kernel.set_link(new.name, new.mtu, new.master, new.up)
            return
        if old is not None:
            kernel.delete_link(old.name)
        kernel.add_link(new)

    def remove(self, session: _Session, kernel: Kernel, old: Link) -> None:
        kernel.delete_link(old.name)

    def touches(self, change: Change) -> list[Touch]:
        if change.op == "-":
            return _link_touches(change.obj, gone=True)
        if change.old is None:
            return _link_touches(change.obj, gone=False)
        recreate = not change.obj.same_identity(change.old)
        return [*_link_touches(change.obj, recreate), *_link_touches(change.old, recreate)]


def _link_touches(link: Link, gone: bool) -> list[Touch]:
    touches = [Touch(link.netns, link.name, link.vrf_table, gone)]
    if link.veth_peer is not None:  # the other end goes and comes with this one
        touches.append(Touch(link.veth_peer.netns, link.veth_peer.name, gone=gone))
    return touches


class _Ports(_OneByOne):
    kind = "ports"
    type = Port

    def wanted(self, desired: DesiredRouting) -> Iterable[Port]:
        return desired.ports

    def actual(self, session: _Session, namespaces: set[str | None], desired: Mapping) -> dict:
        found = {}
        for ns in namespaces:
            for s in session.links(ns):
                wanted = (ns, s.name) in desired
                if session.reasserted(ns, s.name, wanted) or session.reasserted(
                    ns, s.master, wanted
                ):
                    continue  # it, or the VRF it is enslaved to, changes first
                stale = not wanted and _is_our_vrf(s.master) and not _is_owned_link(s)
                if wanted or stale:
                    port = Port(s.name, s.mtu, netns=ns, master=s.master, up=s.up)
                    found[(ns, s.name)] = _unmanaged_as_none(port, desired.get((ns, s.name)))
        return found

    def upsert(self, session: _Session, kernel: Kernel, new: Port, old: Port | None) -> None:
        kernel.set_link(new.name, new.mtu, new.master, new.up)

    def remove(self, session: _Session, kernel: Kernel, old: Port) -> None:
        kernel.set_link(old.name, None, None, old.up)

    def touches(self, change: Change) -> list[Touch]:
        return [Touch(change.obj.netns, change.obj.name)]


class _Sysctls(_OneByOne):
    kind = "sysctls"
    type = Sysctl

    def wanted(self, desired: DesiredRouting) -> Iterable[Sysctl]:
        return desired.sysctls

    def actual(self, session: _Session, namespaces: set[str | None], desired: Mapping) -> dict:
        found = {}
        for (ns, path), want in desired.items():
            if ns in namespaces and not session.reasserted(ns, _sysctl_device(path), True):
                value = session.sysctl(ns, path)
                if value is not None:
                    found[(ns, path)] = dataclasses.replace(want, value=value)
        return found

    def upsert(self, session: _Session, kernel: Kernel, new: Sysctl, old: Sysctl | None) -> None:
        kernel.write_sysctl(new.path, new.value)
        if (known := session.known.get(new.netns)) is not None:
            known.sysctls[new.path] = new.value

    def remove(self, session: _Session, kernel: Kernel, old: Sysctl) -> None:
        raise AssertionError("sysctls are never removed")  # actual() only reads desired ones


class _Rules(_OneByOne):
    kind = "policy rules"
    type = PolicyRule

    def wanted(self, desired: DesiredRouting) -> Iterable[PolicyRule]:
        return desired.rules

    def actual(self, session: _Session, namespaces: set[str | None], desired: Mapping) -> dict:
        # only where rules are wanted: a workload's namespace keeps its own rules
        found = {}
        for ns in {key[0] for key in desired} & namespaces:
            for rule in session.rules(ns):
                rule = dataclasses.replace(rule, netns=ns)
                found[rule.key] = rule
        return found

    def upsert(
        self, session: _Session, kernel: Kernel, new: PolicyRule, old: PolicyRule | None
    ) -> None:
        kernel.add_rule(new)
        if (rules := session.cached(new.netns, "rules")) is not None:
            rules.add(dataclasses.replace(new, netns=None))

    def remove(self, session: _Session, kernel: Kernel, old: PolicyRule) -> None:
        kernel.delete_rule(old)
        if (rules := session.cached(old.netns, "rules")) is not None:
            rules.discard(dataclasses.replace(old, netns=None))


class _Addresses(_OneByOne):
    kind = "addresses"
    type = Address

    def wanted(self, desired: DesiredRouting) -> Iterable[Address]:
        return desired.addresses

    def actual(self, session: _Session, namespaces: set[str | None], desired: Mapping) -> dict:
        found = {}
        for ns in namespaces:
            owned = session.owned_ifnames[ns]
            for ifname, iface in session.addresses(ns):
                if ifname not in owned:
                    continue
                if iface.version == 6 and iface.is_link_local and iface.ip != _GATEWAY_V6:
                    continue  # the kernel's own link-local address
                addr = Address(ifname, iface, netns=ns)
                if not session.reasserted(ns, ifname, addr in desired):
                    found[addr] = addr
        return found

    def upsert(self, session: _Session, kernel: Kernel, new: Address, old: Address | None) -> None:
        kernel.add_address(new)
        if (addresses := session.cached(new.netns, "addresses")) is not None:
            addresses.add((new.ifname, new.address))

    def remove(self, session: _Session, kernel: Kernel, old: Address) -> None:
        kernel.delete_address(old)
        if (addresses := session.cached(old.netns, "addresses")) is not None:
            addresses.discard((old.ifname, old.address))


class _Routes:
    kind = "routes"
    type = Route

    def wanted(self, desired: DesiredRouting) -> Iterable[Route]:
        return desired.routes

    def actual_of(
        self, session: _Session, namespaces: set[str | None], desired: Mapping, keys: Iterable
    ) -> dict:
        """actual() for these keys alone: O(keys), not O(routes)."""
        found = {}
        for key in keys:
            ns = key[0]
            if ns not in namespaces:
                continue
            route = session.routes(ns, desired).get(key)
            if route is None:
                continue
            devices = session.touched_devices.get(ns, ())
            tables = session.touched_tables.get(ns, ())
            if key in desired and (route.dev in devices or route.table in tables):
                continue  # may have gone with its device: assert it again
            found[key] = route
        return found

    def actual(self, session: _Session, namespaces: set[str | None], desired: Mapping) -> dict:
        found = {}
        for ns in namespaces:
            devices = session.touched_devices.get(ns, set())
            tables = session.touched_tables.get(ns, set())
            known = session.routes(ns, desired)
            if not (devices or tables):
                found.update(known)  # C-speed: reuses the stored hashes of 100,000 keys
                continue
            for key, route in known.items():
                if key in desired and (route.dev in devices or route.table in tables):
                    continue  # may have gone with its device: assert it again
                found[key] = route
        return found

    def write(self, session: _Session, changes: list[Change]) -> list[KernelError | None]:
        """One batch per namespace; the cache learns every route the kernel accepted."""
        outcomes: list[KernelError | None] = [None] * len(changes)
        by_netns: dict[str | None, list[int]] = {}
        for i, change in enumerate(changes):
            by_netns.setdefault(change.obj.netns, []).append(i)
        for ns, indexes in by_netns.items():
            kernel = session.kernel(ns)
            ops = [RouteOp(changes[i].op == "-", changes[i].obj) for i in indexes]
            if kernel is None:
                answers: list[KernelError | None] = [
                    KernelError("its network namespace is unavailable")
                ] * len(ops)
            else:
                answers = kernel.write_routes(ops)
            known = session.known.get(ns)
            for i, op, error in zip(indexes, ops, answers, strict=True):
                outcomes[i] = error
                if error is None and known is not None and known.routes is not None:
                    if op.delete:
                        known.routes.pop(op.route.key, None)
                    else:
                        known.routes[op.route.key] = op.route
        return outcomes

    def touches(self, change: Change) -> list[Touch]:
        return []


class _NeighProxies(_OneByOne):
    kind = "neighbour proxies"
    type = NeighProxy

    def wanted(self, desired: DesiredRouting) -> Iterable[NeighProxy]:
        return desired.neigh_proxies

    def actual(self, session: _Session, namespaces: set[str | None], desired: Mapping) -> dict:
        found = {}
        for ns in namespaces:
            owned = session.owned_ifnames[ns]
            for p in session.proxies(ns):
                if p.ifname not in owned:
                    continue
                proxy = dataclasses.replace(p, netns=ns)
                if not session.reasserted(ns, p.ifname, proxy in desired):
                    found[proxy] = proxy
        return found

    def upsert(
        self, session: _Session, kernel: Kernel, new: NeighProxy, old: NeighProxy | None
    ) -> None:
        kernel.add_neigh_proxy(new)
        if (proxies := session.cached(new.netns, "proxies")) is not None:
            proxies.add(dataclasses.replace(new, netns=None))

    def remove(self, session: _Session, kernel: Kernel, old: NeighProxy) -> None:
        kernel.delete_neigh_proxy(old)
        if (proxies := session.cached(old.netns, "proxies")) is not None:
            proxies.discard(dataclasses.replace(old, netns=None))


# Dependency order: links before the ports enslaved to them, per-device sysctls before the
# addresses (accept_dad), addresses before routes, routes before proxies. Rules depend on
# nothing; the local-table rule moves behind the l3mdev rule the first VRF brought.
_MANAGERS: tuple[_Manager, ...] = (
    _Links(),
    _Rules(),
    _Ports(),
    _Sysctls(),
    _Addresses(),
    _Routes(),
    _NeighProxies(),
)


def _announces(obj: Any) -> bool:
    """A route in a tenant's publish table, which BIRD announces to the directory."""
    return isinstance(obj, Route) and markers.is_publish_table(obj.table)


def _sysctl_device(path: str) -> str | None:
    """The interface of a per-interface sysctl (net/ipv4/conf/<if>/rp_filter)."""
    parts = path.split("/")
    return parts[3] if len(parts) == 5 and parts[2] in ("conf", "neigh") else None


def _sort_key(obj: Any) -> tuple:
    """Dependencies first: VRFs before their slaves, a gateway's on-link route before routes
    via that gateway. Routes come by the 100,000: their key is made of numbers, not str()."""
    if isinstance(obj, Route):
        dst = obj.dst
        return (
            obj.via is not None,
            obj.netns or "",
            dst.version,
            int(dst.network_address),
            dst.prefixlen,
            obj.table,
            obj.metric,
        )
    if isinstance(obj, Link):
        return (LINK_ORDER[obj.kind], str(obj))
    return (0, str(obj))


class RoutingDriver:
    """Brings the kernel to a DesiredRouting. `host_netns` None programs the namespace this
    process runs in; a name programs that namespace (labs, tests). Workload namespaces named by
    the objects are opened as they are. Keep one driver for the life of an agent: it holds the
    cache of what the kernel has."""

    def __init__(self, open_kernel: OpenKernel, host_netns: str | None = None) -> None:
        self._open = open_kernel
        self._host_netns = host_netns
        self._known: dict[str | None, _Known] = {}
        self._resyncs = 0  # resyncs planned: the clock of the rotation

    def plan(self, desired: DesiredRouting, resync: bool = False) -> RoutingPlan:
        """What apply() would change, in dependency order; changes nothing. `resync`: read the
        kernel again instead of trusting the cache (catches others' changes). A change of a
        device plans to assert again what is wanted on it, as the kernel may drop it."""
        problems: list[Problem] = []
        wanted_namespaces = desired.namespaces()
        for ns in set(self._known) - wanted_namespaces:
            del self._known[ns]  # forgotten: read afresh if it is ever wanted again
        workloads = _workloads(desired)
        session = _Session(self._open, self._host_netns, problems, self._known)
        try:
            if resync:
                self._forget_for_resync(session, workloads)
            namespaces = session.available(wanted_namespaces)
            changes = self._plan_in(session, desired, namespaces, problems)
            self._remember(session, workloads)
        finally:
            session.close()
        return RoutingPlan(tuple(changes), tuple(problems))

    def _forget_for_resync(
        self, session: _Session, workloads: dict[str, tuple[frozenset, str | None]]
    ) -> None:
        """A resync reads the host namespace in full, and of the workload namespaces: those
        whose host veth changed (missing, a new ifindex or peer ifindex: the workload side was
        recreated, or its namespace deleted), those whose wanted objects changed, and the
        ROTATE_NAMESPACES least recently read. Entering each of 1,000 namespaces took 16 s."""
        self._resyncs += 1
        self._known.pop(None, None)
        session.available([None])
        try:
            host = _veth_indexes(session.links(None))
        except KernelError:
            self._known.clear()  # the plan reports it; nothing is trusted meanwhile
            return
        stale, rest = [], []
        for ns, known in self._known.items():
            if ns is None:
                continue  # the host's: read afresh just now
            wanted, veth = workloads.get(ns, (None, None))
            recorded = known.host_veth != _UNRECORDED
            moved = recorded and known.host_veth != host.get(veth or "")
            changed = moved or known.wanted != wanted
            (stale if changed else rest).append(ns)
        rest.sort(key=lambda ns: self._known[ns].read_at)
        for ns in (*stale, *rest[:ROTATE_NAMESPACES]):
            del self._known[ns]

    def _remember(
        self, session: _Session, workloads: dict[str, tuple[frozenset, str | None]]
    ) -> None:
        """What a later resync compares against (see _forget_for_resync)."""
        host = _veth_indexes(session.cached(None, "links") or [])
        ours = session.touched_devices.get(None, set())
        for ns, (wanted, veth) in workloads.items():
            known = self._known.get(ns)
            if known is None:
                continue
            if known.wanted is None:  # read in full by this plan
                known.read_at = self._resyncs
            known.wanted = wanted
            known.host_veth = _UNRECORDED if veth in ours else host.get(veth or "")

    def apply(self, plan: RoutingPlan) -> RoutingResult:
        """Makes the planned changes without reading the kernel again; a failure is reported
        against its object and the others are still made."""
        result = RoutingResult(problems=list(plan.problems))
        withdrawn: list[Change] = []
        rest: list[Change] = []
        announced: list[Change] = []
        for change in plan.changes:  # one pass: a full plan holds 100,000s of routes
            if not _announces(change.obj):
                rest.append(change)
            elif change.op == "-":
                withdrawn.append(change)
            else:
                announced.append(change)
        session = _Session(self._open, self._host_netns, result.problems, self._known)
        try:
            # A published route draws the peers' traffic here (BIRD announces it at once): it is
            # withdrawn before anything it leads to goes and announced after all of it is there
            # (the workload's addresses and default route, the host's proxy entries); announced
            # first, a moved workload's first replies had no route back yet.
            for batch in (withdrawn, rest, announced):
                self._write(session, batch, result)
        finally:
            session.close()
        return result

    @staticmethod
    def _write(session: _Session, changes: list[Change], result: RoutingResult) -> None:
        """Every kind's changes, kind after kind (_MANAGERS)."""
        by_kind: dict[type, list[Change]] = {}
        for change in changes:
            by_kind.setdefault(type(change.obj), []).append(change)
        for manager in _MANAGERS:
            planned = by_kind.get(manager.type, [])
            for change, error in zip(
                planned, manager.write(session, planned) if planned else [], strict=True
            ):
                if error is None:
                    result.done.append(change)
                else:
                    message = f"{change.obj.describe()}: {error}"
                    result.problems.append(problem_of(error, change.obj, message))

    def reconcile(self, desired: DesiredRouting, resync: bool = False) -> RoutingResult:
        """Brings the kernel in line: plan() and apply()."""
        return self.apply(self.plan(desired, resync))

    def apply_changes(self, upserts: Iterable[Any], deletes: Iterable[Any]) -> RoutingResult | None:
        """Bring only these objects in line, each kind in the usual order: `upserts` as given,
        `deletes` gone unless an upsert has their key; nothing else is looked at or changed.
        For what a directory delta or one endpoint changes: the cache stands for the kernel
        (a namespace not known yet is read). Deletes in a workload namespace no upsert is in
        are left out: they go with the veth. None when the cache does not know the host's
        routes (nothing applied yet, or a resync cleared it): run `reconcile` instead. Plans
        these objects, then applies that plan (which reads nothing)."""
        known = self._known.get(None)
        if known is None or known.routes is None:
            return None
        up = _desired_of(upserts)
        kept = up.namespaces()  # a workload namespace no longer wanted goes with its veth
        down = _desired_of(o for o in deletes if o.netns in kept)
        problems: list[Problem] = []
        session = _Session(self._open, self._host_netns, problems, self._known)
        try:
            namespaces = session.available(up.namespaces())
            changes = self._plan_in(session, up, namespaces, problems, down)
        finally:
            session.close()
        return self.apply(RoutingPlan(tuple(changes), tuple(problems)))

    def _plan_in(
        self,
        session: _Session,
        desired: DesiredRouting,
        namespaces: set[str | None],
        problems: list[Problem],
        down: DesiredRouting | None = None,
    ) -> list[Change]:
        """Every kind's changes in dependency order. `down`: only `desired` and these objects
        to delete are looked at (apply_changes); None: what else is ours goes."""
        try:
            session.owned_ifnames = self._owned_ifnames(session, desired, namespaces)
        except KernelError as exc:
            problems.append(problem_of(exc, message=f"reading links: {exc}"))
            return []
        if down is not None:
            # the interfaces these addresses and proxies are on are ours (an unchanged port's)
            for o in (*desired.addresses, *desired.neigh_proxies, *down.addresses,
                      *down.neigh_proxies):  # fmt: skip
                session.owned_ifnames.setdefault(o.netns, set()).add(o.ifname)
        changes: list[Change] = []
        for manager in _MANAGERS:
            only = None if down is None else {o.key for o in manager.wanted(down)}
            planned = self._plan_kind(manager, session, desired, namespaces, problems, only)
            for change in planned:
                session.will_touch(manager.touches(change))
            changes += planned
        return changes

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
            for s in session.links(ns):
                if _is_owned_link(s) or _is_our_vrf(s.master):
                    owned[ns].add(s.name)
        return owned

    @staticmethod
    def _plan_kind(
        manager: _Manager,
        session: _Session,
        desired: DesiredRouting,
        namespaces: set[str | None],
        problems: list[Problem],
        only: set[Hashable] | None = None,
    ) -> list[Change]:
        """`only`: the objects of `desired` and these keys are all there is (apply_changes);
        None: `desired` is everything, and what else is ours goes."""
        wanted: dict[Hashable, Any] = {
            obj.key: obj for obj in manager.wanted(desired) if obj.netns in namespaces
        }
        if only is not None and not (wanted or only):
            return []
        try:
            if only is not None and isinstance(manager, _Routes):  # 100,000s: by key
                actual = manager.actual_of(session, namespaces, wanted, {*wanted, *only})
            else:
                actual = manager.actual(session, namespaces, wanted)
        except KernelError as exc:
            problems.append(problem_of(exc, message=f"reading {manager.kind}: {exc}"))
            return []
        if only is not None:
            actual = {k: actual[k] for k in (*wanted, *only) if k in actual}
        changes = delta(wanted, actual)
        planned = [
            Change("~" if new.key in actual else "+", new, actual.get(new.key))
            for new in sorted(changes.upserts.values(), key=_sort_key)
        ]
        planned += [
            Change("-", old)
            for old in sorted(changes.deletes.values(), key=_sort_key, reverse=True)
        ]
        return planned


def _workloads(desired: DesiredRouting) -> dict[str, tuple[frozenset, str | None]]:
    """Per workload namespace: what is wanted in it, and the name of its veth's host end."""
    objects: dict[str, list[Any]] = {}
    veths: dict[str, str] = {}
    for group in (
        desired.sysctls, desired.links, desired.ports, desired.addresses, desired.routes,
        desired.neigh_proxies, desired.rules,
    ):  # fmt: skip
        for obj in group:
            if obj.netns is not None:
                objects.setdefault(obj.netns, []).append(obj)
    for link in desired.links:
        if link.netns is None and link.veth_peer is not None:
            veths[link.veth_peer.netns] = link.name
    return {ns: (frozenset(objs), veths.get(ns)) for ns, objs in objects.items()}


def _veth_indexes(links: Iterable[LinkState]) -> dict[str, tuple[int, int | None]]:
    """Per host link name: its ifindex and its peer's, what tells a recreated veth apart."""
    return {s.name: (s.index, s.peer_index) for s in links}


def _desired_of(objects: Iterable[Any]) -> DesiredRouting:
    by_kind: dict[type, set[Any]] = {}
    for obj in objects:
        by_kind.setdefault(type(obj), set()).add(obj)

    def of(kind: type) -> frozenset[Any]:
        return frozenset(by_kind.get(kind, ()))

    return DesiredRouting(of(Sysctl), of(Link), of(Port), of(Address), of(Route),
                          of(NeighProxy), of(PolicyRule))  # fmt: skip
