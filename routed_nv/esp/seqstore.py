"""The persisted outbound sequence reservations (esp/seqres.py): one small JSON file in the
agent's state directory, `{"version": 1, "reserved": {"<peer tenant address> 0x<spi>": n}}`.

Written atomically (a temporary file in the same directory, fsync, rename, fsync of the
directory), so a crash leaves the old file or the new one, never a torn one. Every update re-reads
the file under an exclusive lock and keeps the larger value per SA, so neither a concurrent writer
(the agent and `routed-nv apply` on one host) nor a stale reader can lower a reservation.

A file that exists but cannot be read or parsed is an error, not an empty store: starting from 0
would hand the peers sequence numbers they have already seen. The agent then creates no outbound
SA (those in the kernel keep running) and says so until an operator repairs or removes the file
(docs/agent.md: removing it is losing the state directory, and needs a key rotation).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from routed_nv.errors import RoutedNvError
from routed_nv.model.xfrm import StateKey

FILE_NAME = "xfrm-oseq.json"
_VERSION = 1
_MAX_BYTES = 64 << 20  # ~1 million SAs; anything larger is not ours

Reservations = dict[StateKey, int]


class StoreError(RoutedNvError):
    """The reservation file cannot be read, parsed or written; the message names it."""


class ReservationStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / FILE_NAME
        self._lock_path = state_dir / f".{FILE_NAME}.lock"

    def load(self) -> Reservations:
        """The persisted reservations; empty when there is no file yet."""
        with self._locked():
            return self._read()

    def raise_to(self, change: Callable[[Reservations], Reservations]) -> Reservations:
        """Under the lock: reads the file, asks `change` for new values given the current ones,
        persists the larger of old and new per SA (if anything grew), returns the result."""
        with self._locked():
            current = self._read()
            merged = dict(current)
            for key, value in change(dict(current)).items():
                merged[key] = max(value, current.get(key, 0))
            if merged != current:
                self._write(merged)
            return merged

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"state directory {self.path.parent}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> Reservations:
        try:
            with self.path.open("rb") as fh:
                raw = fh.read(_MAX_BYTES + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot be read: {exc.strerror}") from None
        if len(raw) > _MAX_BYTES:
            raise StoreError(f"{self.path}: larger than {_MAX_BYTES} bytes")
        try:
            return decode(json.loads(raw))
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreError(f"{self.path}: not a reservation file: {str(exc)[:200]}") from None

    def _write(self, reservations: Mapping[StateKey, int]) -> None:
        tmp = self.path.with_name(f".{FILE_NAME}.tmp")
        data = json.dumps(encode(reservations), indent=1, sort_keys=True).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot be written: {exc.strerror}") from None


def encode(reservations: Mapping[StateKey, int]) -> dict[str, object]:
    return {
        "version": _VERSION,
        "reserved": {f"{dst} 0x{spi:08x}": n for (dst, spi), n in reservations.items()},
    }


def decode(data: object) -> Reservations:
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        raise ValueError(f"expected an object with version {_VERSION}")
    entries = data["reserved"]
    if not isinstance(entries, dict):
        raise ValueError("'reserved' is not an object")
    result: Reservations = {}
    for name, value in entries.items():
        dst, spi = name.split(" ")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name}: {value!r} is not a sequence number")
        result[(ipaddress.IPv6Address(dst), int(spi, 16))] = value
    return result
