"""The persisted outbound sequence reservations (esp/seqstore.py)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import stat
import threading
from pathlib import Path

import pytest

from routed_nv.esp import seqstore
from routed_nv.esp.seqstore import FILE_NAME, ReservationStore, StoreError

PEER = ipaddress.IPv6Address("2001:db8:0:2::1:64")
A, B = (PEER, 0x640004), (PEER, 0x640005)


def test_missing_file_is_empty_and_the_directory_is_made_private(tmp_path: Path) -> None:
    store = ReservationStore(tmp_path / "state")
    assert store.load() == {}
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


def test_round_trip_by_peer_and_spi(tmp_path: Path) -> None:
    store = ReservationStore(tmp_path)
    assert store.raise_to(lambda held: {A: 10, B: 20}) == {A: 10, B: 20}
    assert ReservationStore(tmp_path).load() == {A: 10, B: 20}
    data = json.loads((tmp_path / FILE_NAME).read_text())
    assert data == {"version": 1, "reserved": {f"{PEER} 0x00640004": 10, f"{PEER} 0x00640005": 20}}
    assert stat.S_IMODE((tmp_path / FILE_NAME).stat().st_mode) == 0o600


def test_never_lowers_a_reservation(tmp_path: Path) -> None:
    store = ReservationStore(tmp_path)
    store.raise_to(lambda held: {A: 1000})
    # a writer with an older view (another process, a stale cache) asks for less
    assert store.raise_to(lambda held: {A: 5, B: 7}) == {A: 1000, B: 7}
    assert store.load() == {A: 1000, B: 7}


def test_change_sees_the_file_not_a_cache(tmp_path: Path) -> None:
    ReservationStore(tmp_path).raise_to(lambda held: {A: 1000})
    seen = []
    ReservationStore(tmp_path).raise_to(lambda held: seen.append(held) or {})
    assert seen == [{A: 1000}]


@pytest.mark.parametrize(
    "content",
    [b"{", b"[]", b'{"version": 2, "reserved": {}}', b'{"version": 1, "reserved": {"x": 1}}',
     b'{"version": 1, "reserved": {"2001:db8::1 0x10": -1}}',
     b'{"version": 1, "reserved": {"2001:db8::1 0x10": "7"}}', b"\xff\xfe"],
)  # fmt: skip
def test_a_corrupt_file_is_an_error_naming_it_and_is_kept(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(content)
    store = ReservationStore(tmp_path)
    with pytest.raises(StoreError, match=re.escape(str(path))):
        store.load()
    with pytest.raises(StoreError, match="not a reservation file"):
        store.raise_to(lambda held: {A: 1})
    assert path.read_bytes() == content  # never replaced by something lower


def test_an_unreadable_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match=r"state directory .*file"):
        ReservationStore(tmp_path / "file").load()


def test_a_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch) -> None:
    store = ReservationStore(tmp_path)
    store.raise_to(lambda held: {A: 1000})

    def no_rename(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(seqstore.os, "rename", no_rename)
    with pytest.raises(StoreError, match="cannot be written: No space left on device"):
        store.raise_to(lambda held: {A: 2000})
    monkeypatch.undo()
    assert store.load() == {A: 1000}


def test_the_write_is_synced_before_it_replaces_the_file(tmp_path: Path, monkeypatch) -> None:
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(seqstore.os, "fsync", lambda fd: events.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(
        seqstore.os, "rename", lambda a, b: events.append("rename") or real_rename(a, b)
    )
    ReservationStore(tmp_path).raise_to(lambda held: {A: 1})
    assert events == ["fsync", "rename", "fsync"]  # the file, then the directory entry
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".{FILE_NAME}.lock", FILE_NAME]


def test_concurrent_writers_lose_no_raise(tmp_path: Path) -> None:
    def writer(n: int) -> None:
        store = ReservationStore(tmp_path)
        for i in range(20):
            store.raise_to(lambda held, i=i: {(PEER, n): i + 1, A: held.get(A, 0) + 1})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(1, 6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = ReservationStore(tmp_path).load()
    assert held[A] == 100  # every read-modify-write saw the one before it
    assert all(held[(PEER, n)] == 20 for n in range(1, 6))
