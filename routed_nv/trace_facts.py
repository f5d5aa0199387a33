"""What `routed-nv trace` reads, in one place: the kernel's route choice, the XFRM policies and
SAs, and the directory view (the running agent's, else the configuration's static entries).
The decision itself is pure (calc/trace.py).

The route is the kernel's own answer for the packet as it arrives from the workload:
`ip -j route get DST from SRC iif <endpoint interface>`, an input lookup. It goes through the
l3mdev rule into the tenant's VRF table and applies the reverse-path filter, as the packet does;
`ip route get vrf <dev> DST from SRC` would be an output lookup, which the kernel refuses for a
source that is not one of the host's own addresses.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
from pathlib import Path

from routed_nv.calc.trace import Facts, KernelRoute, source_interface
from routed_nv.config.model import Config, DirectorySourceKind
from routed_nv.config.views import static_view
from routed_nv.errors import RoutedNvError
from routed_nv.esp.xfrm import IprouteXfrm, XfrmError
from routed_nv.model.directory import DirectoryView

_TIMEOUT_S = 30


class GatherError(RoutedNvError, RuntimeError):
    """The kernel could not be read (no `ip`, no such netns, ...)."""


def gather(
    config: Config, tenant: str, src: str, dst: str, netns: str | None, run_dir: Path
) -> Facts:
    view, view_source = directory_view(config, run_dir)
    iif = source_interface(config, tenant, src)
    if iif is None:
        route = KernelRoute(error="not asked: no source endpoint")
    else:
        route = route_get(netns, src, dst, iif)
    xfrm = IprouteXfrm(netns)
    try:
        policies, states = xfrm.read_policies(), xfrm.read_states()
    except XfrmError as exc:
        raise GatherError(str(exc)) from None
    return Facts(config, view, view_source, route, tuple(policies), tuple(states))


def directory_view(config: Config, run_dir: Path) -> tuple[DirectoryView, str]:
    """The view the agent applied, or the configuration's static entries when none answers."""
    from routed_nv.agent import view_json
    from routed_nv.agent.control import SOCKET_NAME, AgentDown, ControlError, ask

    try:
        answer = ask(run_dir / SOCKET_NAME, {"request": "view"})
        return view_json.decode(answer["view"]), f"from the running agent, {answer['source']}"
    except AgentDown:
        pass
    except (ControlError, ValueError, KeyError, TypeError) as exc:
        raise GatherError(f"the agent's directory view: {exc}") from None
    if config.directory.source is DirectorySourceKind.BGP:
        return static_view(config), "from the configuration: no agent answers, BGP entries unknown"
    return static_view(config), "from the configuration: no agent answers"


def route_get(netns: str | None, src: str, dst: str, iif: str) -> KernelRoute:
    cmd = ["ip", *(["-n", netns] if netns else []), "-j", "route", "get", dst, "from", src]
    cmd += ["iif", iif]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GatherError(f"cannot run '{' '.join(cmd)}': {exc}") from None
    if proc.returncode != 0:
        error = proc.stderr.strip().removeprefix("RTNETLINK answers: ")
        if "Cannot find device" in error:
            where = f" in netns {netns}" if netns else ""
            raise GatherError(
                f"the source endpoint's interface {iif} does not exist{where}: the datapath is "
                "not applied (`routed-nv status`, `routed-nv apply`) or --netns is not this host's"
            )
        if "Cannot open network namespace" in error:
            raise GatherError(f"'{' '.join(cmd)}': {error}")
        return KernelRoute(error=error or f"ip exited with status {proc.returncode}")
    return parse_route_get(proc.stdout)


def parse_route_get(text: str) -> KernelRoute:
    """`ip -j route get` output: IPv4 over an IPv6 next hop prints `via: {family, host}`,
    IPv6 prints `gateway`; an unreachable or blackhole route comes back with its type."""
    try:
        found = json.loads(text)[0]
    except (ValueError, IndexError, KeyError) as exc:
        raise GatherError(f"cannot read 'ip -j route get' output: {exc}") from None
    kind = found.get("type", "unicast")
    if kind == "local":
        return KernelRoute(dev=found.get("dev"), local=True)
    if kind != "unicast":
        return KernelRoute(error=f"{kind} route")
    via = found.get("gateway") or (found.get("via") or {}).get("host")
    return KernelRoute(dev=found.get("dev"), via=ipaddress.ip_address(via) if via else None)
