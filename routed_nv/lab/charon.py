"""strongSwan's charon in the lab: one daemon per host namespace, each with its own
strongswan.conf, VICI socket and log under a per-host directory of the lab's work directory.

charon's pid file path (/run/charon.pid) is compiled in, so two charons on one machine need
different /run directories: each runs in a private mount namespace with a tmpfs on /run. The
VICI socket lives in the work directory instead, so the agent (in the parent mount namespace)
reaches it. `ip netns exec`, `unshare` and `sh -c '... exec'` all exec, so the spawned process
IS charon: stop() and kill() signal exactly that pid, and the Lab's teardown stops what is left.

`routed-nv lab demo|shell --keying ike` use it too (with_psk() gives each host's config IKE
keying with a pre-shared key file in the lab's run directory); the shell keeps every charon
running (keep_running(): a charon that exits is started again, as systemd would), so an operator
can kill one and watch the agents re-assert their connections.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from subprocess import DEVNULL, Popen, TimeoutExpired

from routed_nv.config.model import Config
from routed_nv.doctor import lab_plugins
from routed_nv.esp.spimap import SaRow, rows_from_sas
from routed_nv.esp.vici_adapter import ViciSession
from routed_nv.lab.builder import Lab, LabError
from routed_nv.lab.topology import Topology
from routed_nv.model import markers
from routed_nv.model.ike import conn_name, is_ours

CHARON = "/usr/lib/ipsec/charon"
SOCKET_WAIT_S = 10.0
STOP_WAIT_S = 5.0
# what swanctl needs of them to read keys and certificates; VICI itself needs no plugin
SWANCTL_PLUGINS = ("random", "pem", "pkcs1", "pkcs8", "x509", "pubkey", "openssl")
# Without libstrongswan-standard-plugins (gcm, curve25519) IKE falls back to AES-CBC/HMAC-SHA-256
# with MODP-3072 (gmp plugin); ESP stays AES-GCM (the kernel does it).
FALLBACK_IKE, FALLBACK_ESP = ["aes128-sha256-modp3072"], ["aes128gcm16-modp3072"]
# The agent re-asserts charon's state only when it reconciles (it reads no VICI events): the
# lab's agents reconcile every few seconds, so a restarted charon is keyed again that quickly.
LAB_RESYNC_S = 5.0
KEYED_TIMEOUT_S = 120.0
RESTART_POLL_S = 0.5


def strongswan_conf(vici_socket: Path, log: Path, plugins: Sequence[str]) -> str:
    """charon's config; `plugins` are loaded, in that order (doctor.lab_plugins(): those of
    kernel_features.CHARON_PLUGINS this strongSwan has)."""
    return f"""\
charon {{
  load = {" ".join(plugins)}
  # routed_nv routes tenant traffic itself; charon only negotiates and installs SAs.
  install_routes = no
  plugins {{
    vici {{
      socket = unix://{vici_socket}
    }}
  }}
  filelog {{
    lab {{
      path = {log}
      default = 1
      ike = 2
      cfg = 2
      chd = 2
      knl = 2
      time_format = %T
      flush_line = yes  # the test copies the log while charon runs
    }}
  }}
}}
# for operators in `lab shell`: STRONGSWAN_CONF=<this file> swanctl --list-sas talks to this
# charon, without the plugin errors the system's swanctl configuration prints here
swanctl {{
  load = {" ".join(p for p in plugins if p in SWANCTL_PLUGINS)}
  socket = unix://{vici_socket}
}}
"""


@dataclass
class CharonNode:
    host: str
    namespace: str
    directory: Path
    process: Popen[bytes] | None = None

    @property
    def conf(self) -> Path:
        return self.directory / "strongswan.conf"

    @property
    def socket(self) -> Path:
        return self.directory / "charon.vici"

    @property
    def log(self) -> Path:
        return self.directory / "charon.log"

    @property
    def pid_file(self) -> Path:
        """The running charon's pid, for operators (its own pid file is in its private /run)."""
        return self.directory / "charon.pid"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.poll() is None else None


class LabCharon:
    """The charon daemons of one built lab, one per host."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.nodes = {
            h.name: CharonNode(h.name, h.namespace, workdir / h.name / "charon")
            for h in lab.topology.hosts
        }
        self._psk = f"rnv-lab {secrets.token_hex(24)}\n".encode()  # one per lab, every host
        self._restarting: threading.Thread | None = None
        self._stop_restarting = threading.Event()

    def start(self, host: str) -> CharonNode:
        """Start the host's charon and wait until its VICI socket accepts connections."""
        node = self.nodes[host]
        if node.pid is not None:
            raise LabError(f"{host}: charon is already running (pid {node.pid})")
        node.directory.mkdir(parents=True, exist_ok=True)
        node.conf.write_text(strongswan_conf(node.socket, node.log, lab_plugins()))
        node.socket.unlink(missing_ok=True)
        script = f"mount -t tmpfs none /run && exec {CHARON}"
        node.process = self.lab.spawn(
            node.namespace,
            ["env", f"STRONGSWAN_CONF={node.conf}", "unshare", "-m", "sh", "-c", script],
            stdout=DEVNULL,
            stderr=DEVNULL,
        )
        deadline = time.monotonic() + SOCKET_WAIT_S
        while not _accepts(node.socket):
            if node.process.poll() is not None:
                raise LabError(f"{host}: charon exited with {node.process.returncode}; {node.log}")
            if time.monotonic() > deadline:
                raise LabError(f"{host}: no VICI socket {node.socket} after {SOCKET_WAIT_S} s")
            time.sleep(0.05)
        node.pid_file.write_text(f"{node.process.pid}\n")
        return node

    def start_all(self) -> None:
        for host in self.nodes:
            self.start(host)

    def proposals(self) -> tuple[list[str], list[str]]:
        """(IKE, ESP) proposals: the defaults when charon supports them, else the fallback."""
        with ViciSession(next(iter(self.nodes.values())).socket) as vici:
            algorithms = vici.algorithms()
        kes = [*algorithms.get("dh", []), *algorithms.get("ke", [])]
        if "CURVE_25519" in kes and "AES_GCM_16" in algorithms.get("aead", []):
            return ["aes128gcm16-prfsha256-x25519"], ["aes128gcm16-x25519"]
        return FALLBACK_IKE, FALLBACK_ESP

    def keying(self, host: str, auth: dict[str, str]) -> dict[str, object]:
        """The [keying] section of a lab host in IKE mode: `auth` (psk_file or
        ca_cert/cert/key), its charon's socket and proposals it can negotiate."""
        return ike_keying(self.nodes[host].socket, auth, self.proposals())

    def kill(self, host: str, sig: int = signal.SIGKILL) -> None:
        """Signal the host's charon (SIGKILL by default: a crash, SAs left in the kernel)."""
        node = self.nodes[host]
        if node.process is None or node.pid is None:
            raise LabError(f"{host}: charon is not running")
        node.process.send_signal(sig)
        node.process.wait(timeout=STOP_WAIT_S)

    def stop(self, host: str) -> None:
        """Stop it the clean way (SIGTERM: charon deletes its SAs and tells the peers)."""
        self.kill(host, signal.SIGTERM)

    def psk_file(self, host: str) -> Path:
        return self.workdir / host / "psk"

    def with_psk(self, host: str, config: Config) -> Config:
        """The host's config in IKE mode with the lab's pre-shared key, written to psk_file(host)
        (mode 0600). Needs the charons running: it asks them which proposals they support."""
        write_secret(self.psk_file(host), self._psk)
        return ike_config(config, self.keying(host, {"psk_file": str(self.psk_file(host))}))

    def listing(self, host: str) -> CharonListing:
        with ViciSession(self.nodes[host].socket) as vici:
            sas = vici.list_sas()
        return CharonListing([(name, sa.get("state", "")) for name, sa in sas], rows_from_sas(sas))

    def wait_keyed(self, topology: Topology, timeout: float = KEYED_TIMEOUT_S) -> float:
        """Seconds until keying_problems() finds none: every host has exactly one IKE_SA per
        peer and one installed CHILD_SA per peer and shared tenant, with the same SPIs at both
        ends. Raises LabError with what is still wrong."""
        started = time.monotonic()
        expected = expected_children(topology)
        while True:
            problems = keying_problems(expected, {h: self.listing(h) for h in expected})
            if not problems:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise LabError(f"IKE not keyed after {timeout:g} s: " + "; ".join(problems))
            time.sleep(0.2)

    def keep_running(self, echo: Callable[[str], None]) -> None:
        """From now until stop_all(), start a host's charon again whenever it exits (killed by
        an operator in `lab shell`), as systemd's Restart=always would; echo says so."""
        self._restarting = threading.Thread(target=self._restart_exited, args=(echo,), daemon=True)
        self._restarting.start()

    def _restart_exited(self, echo: Callable[[str], None]) -> None:
        while not self._stop_restarting.wait(RESTART_POLL_S):
            for host, node in self.nodes.items():
                if node.process is None or node.process.poll() is None:
                    continue
                code = node.process.returncode
                try:
                    pid = self.start(host).pid
                    echo(f"{host}: charon exited ({code}); started again, pid {pid}")
                except LabError as exc:
                    echo(f"{host}: charon exited ({code}) and did not start again: {exc}")
                    node.process = None

    def stop_all(self) -> dict[str, int]:
        """Stop every charon this lab started (SIGTERM by pid, SIGKILL after STOP_WAIT_S) and
        remove its files and the PSK files; returns the pids stopped."""
        self._stop_restarting.set()
        if self._restarting is not None:
            self._restarting.join()
        stopped = {}
        for host, node in self.nodes.items():
            if node.process is not None and node.pid is not None:
                stopped[host] = node.pid
                node.process.terminate()
                try:
                    node.process.wait(timeout=STOP_WAIT_S)
                except TimeoutExpired:
                    node.process.kill()
                    node.process.wait()
            shutil.rmtree(node.directory, ignore_errors=True)
            self.psk_file(host).unlink(missing_ok=True)
        return stopped


def ike_keying(
    vici_socket: Path, auth: dict[str, str], proposals: tuple[list[str], list[str]]
) -> dict[str, object]:
    """A [keying] section in IKE mode: `auth` (psk_file or ca_cert/cert/key), the charon's VICI
    socket and the (IKE, ESP) proposals it can negotiate."""
    return {
        "mode": "ike",
        **auth,
        "vici_socket": str(vici_socket),
        "ike_proposals": proposals[0],
        "esp_proposals": proposals[1],
    }


def ike_config(config: Config, keying: dict[str, object]) -> Config:
    """`config` with this [keying] section and the lab's short resync interval (LAB_RESYNC_S)."""
    data = config.model_dump(mode="json")
    data["keying"] = keying
    data["agent"]["resync_interval_s"] = LAB_RESYNC_S
    return Config.model_validate(data)


@dataclass(frozen=True)
class CharonListing:
    """One charon's list-sas: its IKE_SAs as (connection, state) and routed_nv's CHILD_SAs."""

    ike_sas: list[tuple[str, str]]
    children: list[SaRow]


def expected_children(topology: Topology) -> dict[str, set[tuple[str, int]]]:
    """Per host, the (peer, tenant id) pairs it needs a CHILD_SA for: every other host with a
    workload of a tenant that the host has one of too."""
    tenants = {h.name: {w.tenant for w in topology.workloads_on(h.name)} for h in topology.hosts}
    return {
        host: {
            (peer, topology.tenant(t).id)
            for peer in tenants
            if peer != host
            for t in tenants[host] & tenants[peer]
        }
        for host in tenants
    }


def keying_problems(
    expected: dict[str, set[tuple[str, int]]], listings: dict[str, CharonListing]
) -> list[str]:
    """What keeps the lab from being keyed as routed_nv wants it (empty: keyed): a missing or
    duplicate IKE_SA or CHILD_SA (both ends initiated at once, not yet resolved by the agents),
    one not yet up, or two ends that disagree on a CHILD_SA's SPIs."""
    problems = []
    for host, pairs in sorted(expected.items()):
        listing = listings[host]
        ike = Counter(name for name, _ in listing.ike_sas if is_ours(name))
        peers = {name.removeprefix(markers.IKE_CONN_PREFIX) for name in ike}
        for peer in sorted({peer for peer, _ in pairs} | peers):
            name, count = conn_name(peer), ike[conn_name(peer)]
            states = {state for n, state in listing.ike_sas if n == name}
            if count != 1 or states != {"ESTABLISHED"}:
                problems.append(f"{host}: {count} IKE_SAs {name} ({', '.join(sorted(states))})")
        children = Counter((r.peer, r.tenant) for r in listing.children)
        for peer, tenant in sorted(pairs | set(children)):
            count = children[(peer, tenant)]
            if count != 1 or (peer, tenant) not in pairs:
                problems.append(f"{host}: {count} CHILD_SAs to {peer} for tenant {tenant}")
        for r in listing.children:
            if r.state != "INSTALLED":
                problems.append(f"{host}: {r.child} {r.state}")
            theirs = [
                (x.spi_in, x.spi_out)
                for x in listings.get(r.peer, CharonListing([], [])).children
                if x.peer == host and x.tenant == r.tenant
            ]
            if theirs and theirs != [(r.spi_out, r.spi_in)]:
                problems.append(f"{host}: {r.child} SPIs differ from {r.peer}'s {theirs}")
    return problems


def write_secret(path: Path, data: bytes) -> None:
    """A key file as routed_nv wants it: readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _accepts(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX) as sock:
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True
