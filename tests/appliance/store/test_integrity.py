"""The database file: missing, empty, unreadable or holding records; the service lock;
the online backup (refuses to overwrite, consistent while another connection writes)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance.errors import StoreError
from appliance.store import NewInstance, Store
from appliance.store.integrity import (
    DatabaseCondition,
    ServiceLock,
    backup_database,
    check_database,
    move_aside,
)

ROOT = "1.2.826.0.1.3680043.8.498.77"


def _instance(n: int, tmp: Path) -> NewInstance:
    return NewInstance(
        sop_uid=f"{ROOT}.3.{n}",
        series_uid=f"{ROOT}.2",
        study_uid=f"{ROOT}.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=tmp / f"{n}.dcm",
        size=10,
        calling_ae="CT1",
        modality="CT",
    )


def test_conditions(tmp_path: Path) -> None:
    db = tmp_path / "appliance.sqlite3"
    assert check_database(db).condition is DatabaseCondition.MISSING
    db.write_bytes(b"")
    assert check_database(db).condition is DatabaseCondition.EMPTY
    assert check_database(db).detail == "empty (zero bytes)"
    db.write_bytes(b"this is not a database at all, just some text" * 100)
    unreadable = check_database(db)
    assert unreadable.condition is DatabaseCondition.UNREADABLE
    assert "not a database" in unreadable.detail
    db.unlink()
    sqlite3.connect(db).close()  # a zero-byte SQLite file
    assert check_database(db).condition is DatabaseCondition.EMPTY
    store = Store(db)  # schema, meta and keys, but no records
    try:
        assert check_database(db).condition is DatabaseCondition.EMPTY
        store.record_instance(_instance(1, tmp_path))
        assert check_database(db).condition is DatabaseCondition.HOLDS_DATA
    finally:
        store.close()
    assert not list(tmp_path.glob("*.lock")), "checking creates nothing"


def test_corrupt_pages_are_unreadable(tmp_path: Path) -> None:
    db = tmp_path / "appliance.sqlite3"
    store = Store(db)
    for n in range(200):
        store.record_instance(_instance(n, tmp_path))
    store.close()
    data = bytearray(db.read_bytes())
    assert len(data) > 8192
    data[4096:8192] = b"\xa5" * 4096  # page 2 and on: garbage after a valid header
    db.write_bytes(bytes(data))
    assert check_database(db).condition is DatabaseCondition.UNREADABLE


def test_move_aside_keeps_the_files(tmp_path: Path) -> None:
    db = tmp_path / "appliance.sqlite3"
    db.write_bytes(b"garbage")
    (tmp_path / "appliance.sqlite3-wal").write_bytes(b"wal")
    kept = move_aside(db)
    assert not db.exists() and kept.read_bytes() == b"garbage"
    assert kept.with_name(kept.name + "-wal").read_bytes() == b"wal"


def test_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    db = tmp_path / "appliance.sqlite3"
    with ServiceLock(db), pytest.raises(StoreError, match="in use by a running appliance"):
        ServiceLock(db).acquire()
    ServiceLock(db).acquire().release()


def test_backup_is_a_consistent_copy_and_never_overwrites(tmp_path: Path) -> None:
    db = tmp_path / "data" / "appliance.sqlite3"
    store = Store(db)
    try:
        for n in range(50):
            store.record_instance(_instance(n, tmp_path))
        target = tmp_path / "backup.sqlite3"
        assert backup_database(db, target) > 0  # while the store's connection is open
        store.record_instance(_instance(99, tmp_path))
        with pytest.raises(StoreError, match="exists"):
            backup_database(db, target)
        key = store.meta_setdefault("audit_key", "x")
    finally:
        store.close()
    assert not list(tmp_path.glob(".backup*")), "no partial file is left"
    assert not Path(str(target) + "-wal").exists(), "the backup is one self-contained file"
    copy = Store(target)
    try:
        assert copy.instance_count() == 50
        assert copy.meta_setdefault("audit_key", "y") == key, "the keys come along"
    finally:
        copy.close()


def test_backup_refuses_a_missing_or_unreadable_database(tmp_path: Path) -> None:
    db = tmp_path / "appliance.sqlite3"
    with pytest.raises(StoreError, match="missing"):
        backup_database(db, tmp_path / "b1")
    db.write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreError, match="unreadable"):
        backup_database(db, tmp_path / "b2")
    assert not (tmp_path / "b1").exists() and not (tmp_path / "b2").exists()
