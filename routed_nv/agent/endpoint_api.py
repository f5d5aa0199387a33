"""The endpoint API on the control socket: `endpoint.add|delete|get|list` (docs/agent.md,
"Endpoint API"), for a CNI plugin, a libvirt hook or a cloud platform's agent.

A change goes through the run-time drop-in (runtime.py): under its flock, validated as a whole
configuration and replaced atomically, so it is persisted before the answer and a restarted
agent (or `routed-nv endpoint add` without an agent) sees the same store. The validated config
then replaces the agent's in-process (no re-read on SIGHUP), the loop is woken, and the request
waits for the first apply that started with the change (a generation counter) and answers with
that apply's outcome for this endpoint. Changes are serialized here (one at a time through the
store and into the agent); the waits are not, so a burst of requests shares a few applies.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, Protocol

from routed_nv.agent import runtime
from routed_nv.agent.control import answer_error, answer_ok
from routed_nv.agent.loop import RESTART_ONLY_PROBLEM, Applied, restart_only
from routed_nv.calc.routing import endpoint_link_name
from routed_nv.config.loader import ConfigError
from routed_nv.config.model import Config, DirectorySourceKind, Endpoint
from routed_nv.errors import RoutedNvError
from routed_nv.model.directory import Claim, RemoteRoute

DEFAULT_TIMEOUT_S = 30.0
MAX_TIMEOUT_S = 600.0
MAX_ID = 64  # the config allows 32; a longer id is refused here, before it is echoed anywhere
FIELDS = ("tenant", "addresses", "interface", "netns", "style")
ALLOWED = {
    "endpoint.add": {"request", "id", "replace", "timeout", *FIELDS},
    "endpoint.delete": {"request", "id", "timeout"},
    "endpoint.get": {"request", "id"},
    "endpoint.list": {"request"},
}
_TOKENS = re.compile(r"[\s,;()\[\]{}'\"=]+")

Json = dict[str, Any]


class AgentLike(Protocol):
    """What the API needs of loop.Agent (unit tests pass the real one with fakes around it)."""

    config: Config
    stop_requested: bool

    def change_config(self, config: Config) -> int: ...
    def generation(self) -> int: ...
    def wait_applied(self, generation: int, timeout: float) -> Applied | None: ...
    def last_applied(self) -> Applied | None: ...
    def published(self) -> frozenset[Claim] | None: ...
    def contested(self) -> frozenset[RemoteRoute] | None: ...


class BadRequest(RoutedNvError, ValueError):
    pass


class EndpointApi:
    def __init__(self, agent: AgentLike, config_path: Path | None) -> None:
        self._agent = agent
        self._config_path = config_path
        self._lock = threading.Lock()  # one change at a time: store order = agent order

    def answer(self, request: Json) -> Json:
        kind = str(request.get("request"))
        try:
            if kind not in ALLOWED:
                raise BadRequest(f"unknown request {kind!r}")
            unknown = sorted(set(request) - ALLOWED[kind])
            if unknown:
                raise BadRequest(f"{kind}: unknown field {unknown[0]!r}")
            stored = runtime.runtime_endpoints(runtime.drop_in_path(self._config_path))
            names = sorted(set(self._agent.config.endpoints) | set(stored))
            if kind == "endpoint.list":
                return answer_ok({"endpoints": [self._state(n, stored) for n in names]})
            name = _id(request)
            if kind == "endpoint.get":
                if name not in names:
                    return answer_error("not-found", f"no endpoint {name}")
                return answer_ok(self._state(name, stored))
            if kind == "endpoint.add":
                return self._add(name, request)
            return self._delete(name, request)
        except BadRequest as exc:
            return answer_error("bad-request", str(exc))
        except runtime.Refused as exc:
            return answer_error(exc.code, "; ".join(exc.problems))
        except ConfigError as exc:
            return answer_error("conflict", "; ".join(str(p) for p in exc.problems))

    def _add(self, name: str, request: Json) -> Json:
        entry = _entry(request)
        replace = request.get("replace", False)
        if not isinstance(replace, bool):
            raise BadRequest("endpoint.add: field 'replace' must be true or false")
        timeout = _timeout(request)
        with self._lock:
            verb, config = runtime.add(self._config_path, name, entry, replace, self._check)
            generation = self._take(config, name in self._agent.config.endpoints)
        applied = self._agent.wait_applied(generation, timeout)
        if applied is not None and name not in applied.config.endpoints:
            return answer_error("conflict", f"endpoint {name} was deleted by a later request")
        return self._outcome(name, verb, applied, timeout, applied and applied.config)

    def _delete(self, name: str, request: Json) -> Json:
        timeout = _timeout(request)
        with self._lock:
            before = self._agent.config  # the endpoint's objects, to find them in errors
            verb, config = runtime.delete(self._config_path, name, self._check)
            generation = self._take(config, name not in self._agent.config.endpoints)
        applied = self._agent.wait_applied(generation, timeout)
        if applied is not None and name in applied.config.endpoints:
            return answer_error("conflict", f"endpoint {name} was added again by a later request")
        return self._outcome(name, verb, applied, timeout, before)

    def _check(self, config: Config) -> None:
        """Before the store changes: the agent must be able to take the result in-process (the
        files may hold an edit that only a restart can apply)."""
        if restart_only(config) != restart_only(self._agent.config):
            raise runtime.Refused([f"{RESTART_ONLY_PROBLEM}: restart the agent first"], "conflict")

    def _take(self, config: Config | None, agent_agrees: bool) -> int:
        """Hand a changed config to the agent; an unchanged store that the agent does not
        reflect yet (the CLI wrote it without an agent) is loaded and handed over too."""
        if config is None and not agent_agrees:
            config = runtime.load(self._config_path)
        if config is None:
            return self._agent.generation()
        return self._agent.change_config(config)

    def _outcome(
        self, name: str, verb: str, applied: Applied | None, timeout: float, objects: Config | None
    ) -> Json:
        stored = f"the change is stored in {runtime.drop_in_path(self._config_path)}"
        if applied is None:
            if self._agent.stop_requested:
                return answer_error("not-programmed", f"the agent is stopping; {stored}")
            pending = (
                "the directory source's first view"
                if self._agent.published() is None
                else "the apply that has the change"
            )
            return answer_error(
                "timeout", f"not programmed after {timeout:g} s: waiting for {pending}; {stored}"
            )
        mine, others = _split_errors(applied.record.errors, objects, name)
        if mine:
            return answer_error(
                "not-programmed",
                f"the apply failed for endpoint {name}: {'; '.join(mine)}; {stored} and retried",
            )
        return answer_ok(
            {
                "id": name,
                "action": verb,
                "programmed": True,
                "generation": applied.generation,
                "apply": {
                    "trigger": applied.record.trigger,
                    "seconds": round(applied.record.seconds, 3),
                    "changes": applied.record.changes,
                },
                "other_errors": others,
            }
        )

    def _state(self, name: str, stored: dict[str, Any]) -> Json:
        """`stored`: the run-time drop-in's endpoints (the agent may not have one yet)."""
        config = self._agent.config
        ep = config.endpoints.get(name)
        fields = ep.model_dump(mode="json") if ep else {"style": "host", **stored[name]}
        applied = self._agent.last_applied()
        programmed = (
            ep is not None
            and applied is not None
            and applied.config.endpoints.get(name) == ep
            and not _split_errors(applied.record.errors, applied.config, name)[0]
        )
        return {
            "id": name,
            **{k: fields.get(k) for k in FIELDS},
            "link": fields.get("interface") or endpoint_link_name(name),  # the host side
            "origin": "runtime" if name in stored else "config",
            "programmed": programmed,
            "announced": programmed and self._announced(config, name),
        }

    def _announced(self, config: Config, name: str) -> bool:
        """The directory's view of this host has every address (BGP: read back from the
        publish tables BIRD exports) and no other host's announcement of any of them: in a
        make-before-break move the old host withdraws once it has learned of this one (it
        then routes the address here), so only after that may it delete its endpoint without
        losing traffic. The static directory has nothing to announce."""
        if config.directory.source != DirectorySourceKind.BGP:
            return True
        published = self._agent.published() or frozenset()
        elsewhere = self._agent.contested() or frozenset()
        ep = config.endpoints[name]
        have = {(c.tenant_id, c.prefix.network_address) for c in published if not c.stale}
        have -= {(r.tenant_id, r.prefix.network_address) for r in elsewhere}
        tid = config.tenants[ep.tenant].id
        return all((tid, a) in have for a in ep.addresses)


def _split_errors(
    errors: tuple[str, ...], config: Config | None, name: str
) -> tuple[list[str], list[str]]:
    """The apply's errors about this endpoint (naming it, its link, netns or an address; or an
    apply that failed as a whole), and the others."""
    ep: Endpoint | None = config.endpoints.get(name) if config else None
    marks = {name}
    if ep is not None:
        marks |= {ep.interface or endpoint_link_name(name), *(str(a) for a in ep.addresses)}
        marks |= {ep.netns} if ep.netns else set()
    mine, others = [], []
    for error in errors:
        # "rnv-eweb2:", "10.0.0.5/32" and "10.0.0.5" all name it
        tokens = {x for t in _TOKENS.split(error) for x in (t, t.rstrip(":."), t.split("/")[0])}
        about = error.startswith("apply: ") or bool(marks & tokens)
        (mine if about else others).append(error)
    return mine, others


def _id(request: Json) -> str:
    name = request.get("id")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{request.get('request')}: field 'id' must be a non-empty string")
    if len(name) > MAX_ID or not name.isprintable():
        raise BadRequest(f"{request.get('request')}: field 'id' is not a valid endpoint name")
    return name


def _entry(request: Json) -> Json:
    """The drop-in entry, typed as TOML needs it; values are checked by the config's rules."""
    entry: Json = {}
    for field in FIELDS:
        value = request.get(field)
        if value is None:
            continue
        if field == "addresses":
            if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
                raise BadRequest("endpoint.add: field 'addresses' must be a list of strings")
        elif not isinstance(value, str):
            raise BadRequest(f"endpoint.add: field {field!r} must be a string")
        entry[field] = value
    for field in ("tenant", "addresses"):
        if field not in entry:
            raise BadRequest(f"endpoint.add: field {field!r} is required")
    return entry


def _timeout(request: Json) -> float:
    value = request.get("timeout", DEFAULT_TIMEOUT_S)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"{request['request']}: field 'timeout' must be a number of seconds")
    if not 0 < value <= MAX_TIMEOUT_S:
        raise BadRequest(
            f"{request['request']}: field 'timeout': {value} is not in (0, {MAX_TIMEOUT_S:g}]"
        )
    return float(value)
