"""The one adapter to charon's VICI socket: the only module that imports `vici`.

VICI replies are nested OrderedDicts of bytes; they leave this module as plain dicts of str, so
the rest of routed_nv (and its fakes in the tests) never sees bytes. `list_*` and `initiate` are
generators in the vici package that send nothing until iterated: they are drained here. Every
failure (socket missing, charon gone, command refused) becomes a ViciError with a clear message.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import vici
from vici.exception import CommandException, DeserializationException, SessionException

from routed_nv.errors import TransientError
from routed_nv.model.secret import Secret

DEFAULT_TIMEOUT_S = 10.0


class ViciError(TransientError):
    """charon could not be reached or refused a command; `log` holds charon's own explanation
    (the control-log lines of a failed initiate)."""

    def __init__(self, message: str, log: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.log = log


def decode(value: Any) -> Any:
    """VICI's bytes/OrderedDict tree as str/dict/list."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, Mapping):
        return {decode(k): decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    return value


class ViciSession:
    """One connection to charon's VICI socket. Use as a context manager."""

    def __init__(self, path: Path, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.path = path
        self._timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._session: Any = None

    def __enter__(self) -> ViciSession:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout_s)
        try:
            sock.connect(str(self.path))
        except FileNotFoundError:
            sock.close()
            raise ViciError(
                f"charon's VICI socket {self.path} does not exist: is charon running, with the "
                "vici plugin and this socket path (keying.vici_socket)?"
            ) from None
        except OSError as exc:
            sock.close()
            raise ViciError(f"cannot connect to charon at {self.path}: {exc.strerror}") from None
        self._sock = sock
        self._session = vici.Session(sock)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = self._session = None

    def _call(self, what: str, run: Any) -> Any:
        try:
            return run()
        except CommandException as exc:
            raise ViciError(f"charon refused {what}: {_errmsg(exc)}") from None
        except (SessionException, DeserializationException) as exc:
            raise ViciError(f"VICI protocol error on {what}: {exc}") from None
        except TimeoutError:
            raise ViciError(f"charon did not answer {what} within {self._timeout_s:g} s") from None
        except OSError as exc:
            raise ViciError(f"lost the connection to charon during {what}: {exc}") from None

    # reading

    def list_conns(self) -> dict[str, dict[str, Any]]:
        """Every loaded connection, by name."""
        entries = self._call("list-conns", lambda: list(self._session.list_conns()))
        return {name: conn for entry in entries for name, conn in decode(entry).items()}

    def list_sas(self) -> list[tuple[str, dict[str, Any]]]:
        """Every IKE_SA as (connection name, its attributes with `child-sas`)."""
        entries = self._call("list-sas", lambda: list(self._session.list_sas()))
        return [(name, sa) for entry in entries for name, sa in decode(entry).items()]

    def get_shared(self) -> list[str]:
        """The ids of the shared secrets that were loaded with one."""
        return decode(self._call("get-shared", self._session.get_shared)).get("keys", [])

    def get_keys(self) -> list[str]:
        return decode(self._call("get-keys", self._session.get_keys)).get("keys", [])

    def list_certs(self) -> list[bytes]:
        """The DER encoding of every loaded X.509 certificate."""
        entries = self._call("list-certs", lambda: list(self._session.list_certs({"type": "X509"})))
        return [bytes(e["data"]) for e in entries if "data" in e]

    def algorithms(self) -> dict[str, list[str]]:
        """What charon's plugins can negotiate, by kind (encryption, ke, prf, ...)."""
        reply = decode(self._call("get-algorithms", self._session.get_algorithms))
        return {kind: list(algs) for kind, algs in reply.items()}

    # writing

    def load_conn(self, name: str, message: Mapping[str, object]) -> None:
        self._call(f"load-conn {name}", lambda: self._session.load_conn({name: message}))

    def unload_conn(self, name: str) -> None:
        self._call(f"unload-conn {name}", lambda: self._session.unload_conn({"name": name}))

    def load_shared(self, ident: str, secret: Secret, owners: list[str]) -> None:
        # The secret goes into the request body only: it is never part of a message we raise.
        body = {"id": ident, "type": "IKE", "data": secret.value, "owners": owners}
        self._call(f"load-shared {ident}", lambda: self._session.load_shared(body))

    def load_cert(self, flag: str, pem: str) -> None:
        body = {"type": "X509", "flag": flag, "data": pem}
        self._call("load-cert", lambda: self._session.load_cert(body))

    def load_key(self, key: Secret) -> str:
        """Load a PEM private key (any type); returns the key id charon lists it by."""
        body = {"type": "any", "data": key.value}
        return decode(self._call("load-key", lambda: self._session.load_key(body)))["id"]

    def initiate(self, ike: str, child: str, timeout_s: float) -> None:
        """Establish a CHILD_SA (and its IKE_SA if needed) and wait for the outcome."""
        body = {"ike": ike, "child": child, "timeout": str(int(timeout_s * 1000))}
        log: list[str] = []
        try:
            for event in self._session.initiate(body):
                log.append(decode(event).get("msg", ""))
        except CommandException as exc:
            raise ViciError(f"initiating {child}: {_errmsg(exc)}", tuple(log)) from None
        except (SessionException, DeserializationException, OSError) as exc:
            raise ViciError(f"initiating {child}: {exc}", tuple(log)) from None

    def terminate_ike(self, uniqueid: str, timeout_s: float, force: bool = False) -> None:
        """`force`: destroy it once the timeout passes without the peer's answer."""
        which = {"ike-id": uniqueid, **({"force": "yes"} if force else {})}
        self._terminate(which, f"IKE_SA #{uniqueid}", timeout_s)

    def terminate_child(self, uniqueid: str, timeout_s: float) -> None:
        self._terminate({"child-id": uniqueid}, f"CHILD_SA #{uniqueid}", timeout_s)

    def _terminate(self, which: dict[str, str], what: str, timeout_s: float) -> None:
        body = {**which, "timeout": str(int(timeout_s * 1000))}
        try:
            for _ in self._session.terminate(body):
                pass  # control-log lines: only the outcome matters here
        except CommandException as exc:
            raise ViciError(f"terminating {what}: {_errmsg(exc)}") from None
        except (SessionException, DeserializationException, OSError) as exc:
            raise ViciError(f"terminating {what}: {exc}") from None

    def rekey_child(self, uniqueid: str) -> None:
        """Start a rekey of one CHILD_SA (charon answers at once; the exchange follows)."""
        self._call(
            f"rekey CHILD_SA #{uniqueid}", lambda: self._session.rekey({"child-id": uniqueid})
        )

    def rekey(self, *, child: str | None = None, ike: str | None = None) -> None:
        body = {"child": child} if child else {"ike": ike}
        self._call("rekey", lambda: self._session.rekey(body))

    def listen(
        self, events: list[str], timeout_s: float
    ) -> Iterator[tuple[str, dict[str, Any]] | None]:
        """Events as (type, payload); None whenever `timeout_s` passes without one, so the
        caller can do other work (or stop) while staying registered."""
        try:
            for kind, payload in self._session.listen(events, timeout=timeout_s):
                yield None if kind is None else (decode(kind), decode(payload))
        except (SessionException, DeserializationException, OSError) as exc:
            raise ViciError(f"event stream from charon ended: {exc}") from None


def _errmsg(exc: CommandException) -> str:
    return str(exc).removeprefix("Command failed: ") or "no reason given"
