"""strongSwan's charon in the lab: one daemon per host namespace, each with its own
strongswan.conf, VICI socket and log under a per-host directory of the lab's work directory.

charon's pid file path (/run/charon.pid) is compiled in, so two charons on one machine need
different /run directories: each runs in a private mount namespace with a tmpfs on /run. The
VICI socket lives in the work directory instead, so the agent (in the parent mount namespace)
reaches it. `ip netns exec`, `unshare` and `sh -c '... exec'` all exec, so the spawned process
IS charon: stop() and kill() signal exactly that pid, and the Lab's teardown stops what is left.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from subprocess import DEVNULL, Popen

from routed_nv.doctor import lab_plugins
from routed_nv.esp.vici_adapter import ViciSession
from routed_nv.lab.builder import Lab, LabError

CHARON = "/usr/lib/ipsec/charon"
SOCKET_WAIT_S = 10.0
STOP_WAIT_S = 5.0
# Without libstrongswan-standard-plugins (gcm, curve25519) IKE falls back to AES-CBC/HMAC-SHA-256
# with MODP-3072 (gmp plugin); ESP stays AES-GCM (the kernel does it).
FALLBACK_IKE, FALLBACK_ESP = ["aes128-sha256-modp3072"], ["aes128gcm16-modp3072"]


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
    def pid(self) -> int | None:
        return self.process.pid if self.process and self.process.poll() is None else None


class LabCharon:
    """The charon daemons of one built lab, one per host."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.nodes = {
            h.name: CharonNode(h.name, h.namespace, workdir / h.name / "charon")
            for h in lab.topology.hosts
        }

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
        ike_proposals, esp_proposals = self.proposals()
        return {
            "mode": "ike",
            **auth,
            "vici_socket": str(self.nodes[host].socket),
            "ike_proposals": ike_proposals,
            "esp_proposals": esp_proposals,
        }

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
