"""The endpoint API (agent/endpoint_api.py) against a real agent loop with a fake datapath and
directory source, through the real control socket: idempotency, conflicts, bad input that
changes nothing, answers that wait for the apply, 50 concurrent clients, and the CLI on top."""

from __future__ import annotations

import io
import ipaddress
import shutil
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from routed_nv.agent import runtime, snapshot
from routed_nv.agent.control import SOCKET_NAME, ControlServer, RequestFailed, ask
from routed_nv.agent.endpoint_api import EndpointApi
from routed_nv.agent.events import EventLog
from routed_nv.agent.loop import Agent, Settings
from routed_nv.cli.endpoint import endpoint_group
from routed_nv.config.loader import load_config
from routed_nv.config.model import Config
from routed_nv.config.views import static_view
from routed_nv.model.directory import Claim, DirectoryView, PeerHost, RemoteRoute
from routed_nv.model.directory_source import SourceUpdate
from tests.fakes import FakeDatapath

EXAMPLES = Path(__file__).resolve().parents[2] / "configs"
CLIENTS = 50


class Source:
    """Publishes the static view at start, unless held back (a directory not heard from)."""

    name = "fake"

    def __init__(self, silent: bool = False) -> None:
        self.silent = silent

    def start(self, config: Config, publish: Callable[[SourceUpdate], None]) -> None:
        if not self.silent:
            publish(SourceUpdate(static_view(config), in_sync=True))

    def reload(self, config: Config) -> None:
        pass

    def stop(self) -> None:
        pass


@dataclass
class Running:
    config_path: Path
    sock: Path
    agent: Agent
    datapath: FakeDatapath

    def ask(self, request: dict[str, Any]) -> Any:
        return ask(self.sock, request, timeout=60)

    def refused(self, request: dict[str, Any]) -> RequestFailed:
        with pytest.raises(RequestFailed) as failed:
            self.ask(request)
        return failed.value

    def stored(self) -> dict[str, Any]:
        return runtime.runtime_endpoints(runtime.drop_in_path(self.config_path))


def start(
    tmp_path: Path, silent: bool = False, source: Source | None = None
) -> tuple[Running, Callable[[], None]]:
    etc = tmp_path / "etc"
    if not etc.exists():
        shutil.copytree(EXAMPLES, etc)
    path = etc / "routed-nv.toml"
    datapath = FakeDatapath()
    agent = Agent(
        load_config(path),
        datapath,
        source or Source(silent),  # type: ignore[arg-type]
        lambda: load_config(path),
        settings=Settings(min_interval_s=0.01, resync_interval_s=600),
        log=EventLog(stream=io.StringIO()),
    )
    sock = tmp_path / "run" / SOCKET_NAME
    server = ControlServer(
        sock, agent.snapshot, agent.request_reload, EndpointApi(agent, path).answer
    ).start()
    loop = threading.Thread(target=agent.run, daemon=True)
    loop.start()

    def stop() -> None:
        agent.request_stop()
        loop.join(10)
        server.close()

    return Running(path, sock, agent, datapath), stop


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r, stop = start(tmp_path)
    try:
        yield r
    finally:
        stop()


def add(name: str, host: int, **extra: Any) -> dict[str, Any]:
    return {
        "request": "endpoint.add",
        "id": name,
        "tenant": "blue",
        "addresses": [f"10.0.0.{host}"],
        "netns": f"ns-{name}",
        **extra,
    }


def test_add_answers_once_an_apply_with_the_endpoint_ran_and_persists_first(
    running: Running,
) -> None:
    done = running.ask(add("web2", 5))
    assert done["action"] == "added" and done["programmed"] is True
    assert done["other_errors"] == []
    # the apply it reports had the endpoint, and the store had it before the answer
    applied_config = running.datapath.applied[-1][0]
    assert [str(a) for a in applied_config.endpoints["web2"].addresses] == ["10.0.0.5"]
    assert running.stored()["web2"]["netns"] == "ns-web2"
    state = running.ask({"request": "endpoint.get", "id": "web2"})
    assert state | {"announced": None} == {
        "id": "web2",
        "tenant": "blue",
        "addresses": ["10.0.0.5"],
        "interface": None,
        "netns": "ns-web2",
        "style": "host",
        "link": "rnv-eweb2",  # the host side of the veth, for a CNI result
        "origin": "runtime",
        "programmed": True,
        "announced": None,
    }
    assert state["announced"] is True  # static directory: programmed is announced
    listed = running.ask({"request": "endpoint.list"})["endpoints"]
    assert [(e["id"], e["origin"]) for e in listed] == [
        ("blue-web", "config"),
        ("red-db", "config"),
        ("web2", "runtime"),
    ]


def test_the_same_add_twice_changes_nothing_and_other_fields_are_a_conflict(
    running: Running,
) -> None:
    running.ask(add("web2", 5))
    applies = len(running.datapath.applied)
    generation = running.agent.generation()
    again = running.ask(add("web2", 5))
    assert again["action"] == "unchanged" and again["programmed"] is True
    assert running.agent.generation() == generation
    assert len(running.datapath.applied) == applies  # no apply needed to answer

    conflict = running.refused(add("web2", 6))
    assert conflict.code == "conflict"
    assert "addresses: ['10.0.0.5'] != ['10.0.0.6']" in str(conflict)
    assert running.stored()["web2"]["addresses"] == ["10.0.0.5"]

    replaced = running.ask(add("web2", 6, replace=True))
    assert replaced["action"] == "replaced"
    assert running.datapath.applied[-1][0].endpoints["web2"].addresses[0].exploded == "10.0.0.6"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"tenant": None}, "endpoint.add: field 'tenant' is required"),
        ({"addresses": "10.0.0.5"}, "field 'addresses' must be a list of strings"),
        ({"netns": 7}, "field 'netns' must be a string"),
        ({"colour": "red"}, "endpoint.add: unknown field 'colour'"),
        ({"request": "endpoint.move"}, "unknown request 'endpoint.move'"),
        ({"id": ""}, "field 'id' must be a non-empty string"),
        ({"timeout": 0}, "field 'timeout': 0 is not in (0, 600]"),
        ({"replace": "yes"}, "field 'replace' must be true or false"),
        ({"addresses": ["192.168.1.1"]}, "endpoints.web3.addresses[0]"),
        ({"tenant": "green"}, "endpoints.web3.tenant"),
        ({"netns": "a" * 40}, "endpoints.web3.netns"),
    ],
)
def test_bad_input_names_the_field_and_changes_nothing(
    running: Running, change: dict[str, Any], says: str
) -> None:
    running.ask(add("web2", 5))
    generation, applies = running.agent.generation(), len(running.datapath.applied)
    request = {k: v for k, v in (add("web3", 7) | change).items() if v is not None}
    refused = running.refused(request)
    assert refused.code == "bad-request"
    assert says in str(refused)
    assert "\n" not in str(refused)
    assert list(running.stored()) == ["web2"]
    assert running.agent.generation() == generation
    assert len(running.datapath.applied) == applies


def test_delete_is_idempotent_and_leaves_the_configuration_files_alone(running: Running) -> None:
    running.ask(add("web2", 5))
    deleted = running.ask({"request": "endpoint.delete", "id": "web2"})
    assert deleted["action"] == "deleted" and deleted["programmed"] is True
    assert "web2" not in running.datapath.applied[-1][0].endpoints
    assert running.stored() == {}
    assert running.ask({"request": "endpoint.delete", "id": "web2"})["action"] == "absent"
    theirs = running.refused({"request": "endpoint.delete", "id": "blue-web"})
    assert theirs.code == "conflict" and "defined in the configuration files" in str(theirs)
    theirs = running.refused(add("blue-web", 5))
    assert theirs.code == "conflict"
    missing = running.refused({"request": "endpoint.get", "id": "web2"})
    assert missing.code == "not-found"


def test_an_apply_that_fails_for_the_endpoint_is_the_answer(running: Running) -> None:
    running.datapath.errors = ["link rnv-eweb2: netns ns-web2 does not exist"]
    failed = running.refused(add("web2", 5))
    assert failed.code == "not-programmed"
    assert "netns ns-web2 does not exist" in str(failed)
    assert "stored in" in str(failed)  # stored: the agent retries
    assert running.stored()["web2"]["netns"] == "ns-web2"
    assert running.ask({"request": "endpoint.get", "id": "web2"})["programmed"] is False
    # an error about someone else does not fail this endpoint, it is reported beside it
    running.datapath.errors = ["route 10.0.0.77/32 table 100: File exists"]
    done = running.ask(add("web4", 7))
    assert done["programmed"] is True
    assert done["other_errors"] == ["routing: route 10.0.0.77/32 table 100: File exists"]


def test_without_a_directory_view_the_answer_is_a_timeout_saying_what_is_pending(
    tmp_path: Path,
) -> None:
    r, stop = start(tmp_path, silent=True)
    try:
        late = r.refused(add("web2", 5, timeout=0.3))
    finally:
        stop()
    assert late.code == "timeout"
    assert "waiting for the directory source's first view" in str(late)
    assert r.stored()["web2"]["addresses"] == ["10.0.0.5"]


def test_fifty_concurrent_clients_all_land_none_lost(running: Running) -> None:
    answers: dict[str, Any] = {}

    def client(i: int) -> None:
        try:
            answers[f"c{i}"] = running.ask(add(f"c{i}", 100 + i))
        except RequestFailed as exc:
            answers[f"c{i}"] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    names = {f"c{i}" for i in range(CLIENTS)}
    assert {n: a for n, a in answers.items() if not isinstance(a, dict)} == {}
    assert all(a["programmed"] and a["action"] == "added" for a in answers.values())
    assert set(running.stored()) == names
    assert names <= set(running.agent.config.endpoints)
    assert names <= set(running.datapath.applied[-1][0].endpoints)
    # every answer names an apply that had its endpoint
    generations = {a["generation"] for a in answers.values()}
    assert max(generations) == running.agent.generation()


def test_a_change_parses_no_configuration_file_again(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each change is validated as a whole configuration, which at 1,000 run-time endpoints
    meant parsing their drop-in three times per request (most of the request's cost). Files
    unchanged since they were read, and the drop-in the agent itself just wrote, are not
    parsed again; an edit (a new inode or mtime) is."""
    running.ask(add("p1", 11))
    parsed: list[str] = []
    loads = tomllib.loads
    monkeypatch.setattr(tomllib, "loads", lambda text: parsed.append(text) or loads(text))
    running.ask(add("p2", 12))
    running.ask({"request": "endpoint.delete", "id": "p1"})
    assert {e["id"] for e in running.ask({"request": "endpoint.list"})["endpoints"]} >= {"p2"}
    assert parsed == []
    drop_in = runtime.drop_in_path(running.config_path)
    drop_in.write_text(drop_in.read_text().replace("10.0.0.12", "10.0.0.13"))  # by hand
    assert running.stored()["p2"]["addresses"] == ["10.0.0.13"]
    assert len(parsed) == 1


def test_an_endpoint_change_counts_only_that_endpoint(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After each apply the agent counts what it wants (status, metrics): at 1,000 endpoints,
    building every endpoint's routes to count them, and reading the SAs back, was most of an
    API change's CPU. An endpoint change counts its own routes and keeps the SA count (SAs
    change with tenants, keys and peers); the counts equal a full count."""
    running.ask(add("q1", 21))
    built: list[object] = []
    read: list[object] = []
    full = snapshot.desired_routing
    monkeypatch.setattr(snapshot, "desired_routing", lambda *a: built.append(a) or full(*a))
    monkeypatch.setattr(running.agent, "_read_sas", lambda: read.append(1) or ())
    running.ask(add("q2", 22))
    running.ask({"request": "endpoint.delete", "id": "q1"})
    assert (built, read) == ([], [])
    monkeypatch.undo()
    now = running.agent.snapshot()
    assert now.counts == snapshot.count(now.config, now.view, now.sas)


def test_a_restarted_agent_has_the_endpoints_the_api_added(tmp_path: Path) -> None:
    first, stop = start(tmp_path)
    try:
        first.ask(add("web2", 5))
    finally:
        stop()
    second, stop = start(tmp_path)
    try:
        # programmed means applied by this agent: wait for its first apply, not a fixed time
        deadline = time.monotonic() + 30
        while second.agent.snapshot().state != "ready" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert second.ask({"request": "endpoint.get", "id": "web2"})["programmed"] is True
        assert "web2" in second.datapath.applied[0][0].endpoints
    finally:
        stop()


def invoke(*args: str) -> Result:
    command: click.Command = endpoint_group
    return CliRunner().invoke(command, list(args), env={}, catch_exceptions=False)


def test_the_cli_uses_the_api_and_exits_0_only_when_programmed(running: Running) -> None:
    common = ["-c", str(running.config_path), "--run-dir", str(running.sock.parent)]
    added = invoke("add", "web2", "--tenant=blue", "--address=10.0.0.5", "--netns=n2", *common)
    assert added.exit_code == 0, added.stderr
    assert added.stdout.startswith("added endpoint web2: programmed by the agent (apply ")
    waited = invoke(
        "add", "web2", "--tenant=blue", "--address=10.0.0.5", "--netns=n2", "--wait", *common
    )
    assert waited.exit_code == 0, waited.stderr
    assert waited.stdout.splitlines() == [
        waited.stdout.splitlines()[0],
        "announced in the directory",
    ]
    assert waited.stdout.startswith("unchanged endpoint web2: programmed")
    other = invoke("add", "web2", "--tenant=blue", "--address=10.0.0.6", "--netns=n2", *common)
    assert other.exit_code == 2 and "exists with other fields" in other.stderr
    running.datapath.errors = ["link rnv-eweb5: Operation not permitted"]
    failed = invoke("add", "web5", "--tenant=blue", "--address=10.0.0.8", "--netns=n5", *common)
    assert failed.exit_code == 1 and "Operation not permitted" in failed.stderr
    running.datapath.errors = []
    assert invoke("del", "web2", *common).exit_code == 0
    assert invoke("del", "web2", *common).exit_code == 1  # absent
    assert "web2" not in running.datapath.applied[-1][0].endpoints


def test_a_file_edit_only_a_restart_applies_refuses_the_change_before_it_is_stored(
    running: Running,
) -> None:
    (running.config_path.parent / "conf.d" / "50-state.toml").write_text(
        '[agent]\nstate_dir = "/var/lib/elsewhere"\n'
    )
    refused = running.refused(add("web2", 5))
    assert refused.code == "conflict"
    assert "change only on restart: restart the agent first" in str(refused)
    assert running.stored() == {}


class BgpSource(Source):
    """A BGP directory the test speaks for: `say` publishes a view."""

    def start(self, config: Config, publish: Callable[[SourceUpdate], None]) -> None:
        self.publish = publish
        self.say(DirectoryView(frozenset()))

    def say(self, view: DirectoryView) -> None:
        self.publish(SourceUpdate(view, in_sync=True))


def _announced_when(running: Running, source: BgpSource, view: DirectoryView) -> bool:
    source.say(view)  # the agent keeps the update before publish returns
    return bool(running.ask({"request": "endpoint.get", "id": "mover"})["announced"])


def test_announced_only_once_no_other_host_announces_the_address(tmp_path: Path) -> None:
    """`endpoint add --wait` in a make-before-break move (issue 16): the old host still
    announcing the address means it has not learned of the new location yet, and deleting
    the endpoint there then black-holes the peers' traffic until they learn it."""
    shutil.copytree(EXAMPLES, tmp_path / "etc")
    (tmp_path / "etc" / "conf.d" / "40-bgp.toml").write_text('[directory]\nsource = "bgp"\n')
    source = BgpSource()
    running, stop = start(tmp_path, source=source)
    try:
        assert running.ask(add("mover", 13))["programmed"] is True
        tid = running.agent.config.tenants["blue"].id
        prefix = ipaddress.ip_network("10.0.0.13/32")
        here = frozenset({Claim(tid, prefix, sequence=1)})
        old = RemoteRoute(
            tid, prefix, PeerHost("host3", 3, ipaddress.ip_network("2001:db8:0:3::/64"))
        )
        assert not _announced_when(running, source, DirectoryView(frozenset()))
        # announced here, the old host still announces it: not yet
        assert not _announced_when(
            running, source, DirectoryView(frozenset(), frozenset({old}), here)
        )
        # the old host withdrew (it went stale: it routes the address here now)
        assert _announced_when(running, source, DirectoryView(frozenset(), published=here))
    finally:
        stop()
