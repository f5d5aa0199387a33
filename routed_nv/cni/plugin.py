"""`routed-nv-cni`: the CNI plugin (docs/cni.md). The runtime runs it with CNI_* variables and
the network config on stdin; it answers one JSON object on stdout (a result, or an error with
the spec's code) and exits 0 on success, 1 on error.

ADD: IPAM (delegated) picks the addresses; the agent's endpoint API makes the veth, the
container side (addresses, gateway, MTU) and the host side in the tenant's VRF, and publishes.
Each step that fails undoes the ones before it, so a failed ADD leaves nothing behind. A small
state file per attachment (under dataDir/<network>) holds what DEL and GC need that the runtime
may not give again (the container id, the pin, the IPAM result).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from routed_nv.cni import agent_socket, ipam, sandbox, spec
from routed_nv.cni.agent_socket import AgentDown, AgentRefused
from routed_nv.cni.spec import CniError, Json, Request

# the agent's answer codes (docs/agent.md) as CNI error codes
AGENT_CODES = {
    "bad-request": spec.INVALID_CONFIG,  # unknown tenant, address outside its ranges, ...
    "conflict": spec.INVALID_CONFIG,  # a config-file endpoint, a restart-only change pending
    "timeout": spec.TRY_AGAIN,
    "not-programmed": spec.NOT_PROGRAMMED,
}


def main() -> None:
    started = time.monotonic()
    version = "1.1.0"
    try:
        command = spec.read_command(dict(os.environ))
        try:
            raw = sys.stdin.buffer.read()
        except OSError as exc:
            raise CniError(spec.IO_FAILURE, f"cannot read the network config: {exc}") from None
        config = spec.decode(raw)
        if command == "VERSION":
            version = str(config.get("cniVersion") or version)
            _print({"cniVersion": version, "supportedVersions": list(spec.SUPPORTED_VERSIONS)})
            return
        version = spec.version_of(config)
        req = spec.parse(command, dict(os.environ), config)
        out = VERBS[command](req)
        if out is not None:
            _print(out)
        _log(req, started)
    except CniError as exc:
        _print(exc.to_json(version))
        sys.exit(1)


def _print(obj: Json) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _log(req: Request, started: float) -> None:
    """One line on stderr per verb with its wall time (the runtime logs or drops it)."""
    ms = (time.monotonic() - started) * 1000
    print(f"routed-nv-cni {req.command} {req.endpoint_id} {ms:.0f} ms", file=sys.stderr)


def _ask(req: Request, request: Json) -> Any:
    """An agent request; its refusals and absence as CNI errors."""
    try:
        return agent_socket.ask(req.socket, request, req.timeout)
    except AgentDown as exc:
        raise CniError(spec.TRY_AGAIN, "the routed-nv agent is not answering", str(exc)) from None
    except AgentRefused as exc:
        code = AGENT_CODES.get(exc.code, spec.NOT_PROGRAMMED)
        raise CniError(code, f"routed-nv agent: {exc.code}", exc.error) from None


# --- the attachment's state file ---------------------------------------------------------


def _state_path(req: Request, eid: str) -> str:
    return os.path.join(req.data_dir, req.name, eid + ".json")


def _read_state(req: Request, eid: str) -> Json | None:
    try:
        with open(_state_path(req, eid)) as f:
            state = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _write_state(req: Request, eid: str, state: Json) -> None:
    path = _state_path(req, eid)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _drop_state(req: Request, eid: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_state_path(req, eid))


# --- verbs -------------------------------------------------------------------------------


def add(req: Request) -> Json:
    eid = req.endpoint_id
    if not os.path.exists(req.netns):
        raise CniError(spec.UNKNOWN_CONTAINER, f"CNI_NETNS {req.netns}: no such namespace")
    if _read_state(req, eid) is not None:
        raise CniError(
            spec.ATTACHMENT_EXISTS,
            f"container {req.container_id} is already attached to {req.name} as {req.ifname}",
        )
    if _endpoint(req, eid) is not None:  # also: the agent answers (else try again later)
        raise CniError(spec.ATTACHMENT_EXISTS, f"the agent already has endpoint {eid}")
    if _inside(req).present:
        raise CniError(spec.ATTACHMENT_EXISTS, f"{req.ifname} already exists in {req.netns}")
    name = sandbox.agent_name(req.netns)
    state: Json = {"containerID": req.container_id, "ifname": req.ifname, "netns": req.netns}
    _write_state(req, eid, state)  # before anything that GC would have to find
    undo: list[Callable[[], None]] = [lambda: _drop_state(req, eid)]
    try:
        undo.append(lambda: _ipam_quietly(req, "DEL"))
        t0 = time.monotonic()
        allocated = ipam.run(req, "ADD") or {}
        t1 = time.monotonic()
        addresses = spec.ipam_addresses(allocated)
        if name is None:
            sandbox.pin(req.netns, eid)
            undo.append(lambda: sandbox.unpin(eid))
            name = eid
        request = {"request": "endpoint.add", "id": eid, "tenant": req.tenant}
        request |= {"addresses": addresses, "netns": name, "timeout": req.timeout}
        undo.append(lambda: _delete_endpoint(req, eid))
        answer = _ask(req, request)
        t2 = time.monotonic()
        apply_s = answer.get("apply", {}).get("seconds", 0.0)
        print(
            f"routed-nv-cni ADD {eid}: ipam {(t1 - t0) * 1000:.0f} ms, agent "
            f"{(t2 - t1) * 1000:.0f} ms (its apply {apply_s * 1000:.0f} ms)",
            file=sys.stderr,
        )
        link = _ask(req, {"request": "endpoint.get", "id": eid}).get("link", "")
        interfaces = [_host_interface(link), _container_interface(req)]
        dns = req.config.get("dns") or allocated.get("dns")
        result = spec.add_result(req, addresses, interfaces, dns)
        _write_state(req, eid, state | {"ipam": allocated, "result": result})
        return result
    except BaseException as exc:
        for step in reversed(undo):
            with contextlib.suppress(Exception):
                step()
        if isinstance(exc, sandbox.SandboxError):
            raise CniError(spec.IO_FAILURE, str(exc)) from None
        raise


def delete(req: Request) -> None:
    """Idempotent: no netns, no endpoint, no state are all fine."""
    eid = req.endpoint_id
    _delete_endpoint(req, eid)
    sandbox.unpin(eid)  # ours by name, whether the state file says so or not
    ipam.run(req, "DEL")
    _drop_state(req, eid)


def check(req: Request) -> None:
    prev = req.config.get("prevResult")
    if not isinstance(prev, dict):
        raise CniError(spec.INVALID_CONFIG, "CHECK needs prevResult in the network config")
    eid = req.endpoint_id
    ep = _endpoint(req, eid)
    if ep is None:
        raise CniError(spec.CHECK_FAILED, f"the agent has no endpoint {eid}")
    want = sorted(ip["address"].split("/")[0] for ip in prev.get("ips", []))
    problems = []
    if ep.get("tenant") != req.tenant:
        problems.append(f"endpoint {eid} is in tenant {ep.get('tenant')}, not {req.tenant}")
    if sorted(ep.get("addresses") or []) != want:
        problems.append(f"endpoint {eid} has addresses {ep.get('addresses')}, not {want}")
    if not ep.get("programmed"):
        problems.append(f"endpoint {eid} is not programmed (routed-nv endpoint list)")
    link = sandbox.host_link(ep.get("link", ""))
    if link is None:
        problems.append(f"host link {ep.get('link')} is missing")
    elif not link[2]:
        problems.append(f"host link {ep.get('link')} is in no VRF")
    inside = _inside(req)
    if not inside.present:
        problems.append(f"{req.ifname} is missing in {req.netns}")
    else:
        missing = sorted(set(want) - inside.addresses)
        if missing:
            problems.append(f"{req.ifname} lacks {', '.join(missing)}")
        for family, gateways, gw in (
            ("IPv4", inside.v4_gateways, spec.GATEWAY4),
            ("IPv6", inside.v6_gateways, spec.GATEWAY6),
        ):
            needed = any(":" in a if family == "IPv6" else ":" not in a for a in want)
            if needed and gw not in gateways:
                problems.append(f"no {family} default route via {gw} on {req.ifname}")
    if problems:
        raise CniError(spec.CHECK_FAILED, "; ".join(problems))
    ipam.run(req, "CHECK")


def status(req: Request) -> None:
    try:
        answer = agent_socket.ask(req.socket, {"request": "status"}, 5.0)
    except (AgentDown, AgentRefused) as exc:
        raise CniError(
            spec.NOT_AVAILABLE, "the routed-nv agent is not answering", str(exc)
        ) from None
    agent = answer.get("agent", {})
    state = agent.get("state")
    if state == "degraded":
        raise CniError(
            spec.NOT_AVAILABLE_DISRUPTED, "routed-nv agent degraded", agent.get("reason", "")
        )
    if state != "ready":
        raise CniError(spec.NOT_AVAILABLE, f"the routed-nv agent is {state}")
    if ipam.supports(req, "1.1.0"):
        ipam.run(req, "STATUS")


def gc(req: Request) -> None:
    """Remove this network's endpoints, pins, IPAM reservations and state files whose
    attachment is not in cni.dev/valid-attachments; go on past errors, report them all."""
    valid = {spec.endpoint_id(req.name, c, i) for c, i in spec.valid_attachments(req.config)}
    prefix = spec.network_prefix(req.name)
    errors: list[str] = []
    listed = _ask(req, {"request": "endpoint.list"})["endpoints"]
    stale = {e["id"] for e in listed if e["id"].startswith(prefix) and e["origin"] == "runtime"}
    directory = os.path.join(req.data_dir, req.name)
    with contextlib.suppress(FileNotFoundError):
        stale |= {f[: -len(".json")] for f in os.listdir(directory) if f.endswith(".json")}
    for eid in sorted(stale - valid):
        try:
            _delete_endpoint(req, eid)
            sandbox.unpin(eid)
            state = _read_state(req, eid)
            if state is not None:
                env = {**os.environ, "CNI_CONTAINERID": state["containerID"]}
                env |= {"CNI_IFNAME": state["ifname"], "CNI_NETNS": ""}
                ipam.run(req, "DEL", env=env)
            _drop_state(req, eid)
        except (CniError, OSError, KeyError) as exc:
            errors.append(f"{eid}: {exc}")
    if ipam.supports(req, "1.1.0"):
        try:
            ipam.run(req, "GC")
        except CniError as exc:
            errors.append(str(exc))
    if errors:
        raise CniError(spec.TRY_AGAIN, f"GC left {len(errors)} attachment(s)", "; ".join(errors))


VERBS = {"ADD": add, "DEL": delete, "CHECK": check, "STATUS": status, "GC": gc}


# --- helpers -----------------------------------------------------------------------------


def _endpoint(req: Request, eid: str) -> Json | None:
    """The agent's state of the endpoint, None if it has none."""
    try:
        return _ask(req, {"request": "endpoint.get", "id": eid})
    except CniError as exc:
        if exc.msg == "routed-nv agent: not-found":
            return None
        raise


def _delete_endpoint(req: Request, eid: str) -> None:
    _ask(req, {"request": "endpoint.delete", "id": eid, "timeout": req.timeout})


def _ipam_quietly(req: Request, command: str) -> None:
    with contextlib.suppress(CniError, OSError):
        ipam.run(req, command)


def _inside(req: Request) -> sandbox.Inside:
    try:
        return sandbox.inspect(req.netns, req.ifname)
    except sandbox.SandboxError as exc:
        raise CniError(spec.UNKNOWN_CONTAINER, str(exc)) from None


def _host_interface(link: str) -> Json:
    mac, mtu, _ = sandbox.host_link(link) or ("", 0, "")
    return {"name": link, "mac": mac, "mtu": mtu}


def _container_interface(req: Request) -> Json:
    inside = _inside(req)
    return {"name": req.ifname, "mac": inside.mac, "mtu": inside.mtu, "sandbox": req.netns}
