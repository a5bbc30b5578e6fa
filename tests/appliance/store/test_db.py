"""Unit tests for appliance.store.db: durability, WAL, schema version and migrations, meta,
counters."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from appliance.errors import StoreError
from appliance.store import SCHEMA_VERSION, Store
from tests.appliance.conftest import Clock
from tests.appliance.store.test_series import SERIES, inst


def test_store_survives_reopen_and_uses_wal(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "appliance.sqlite3"
    first = Store(path, clock=clock)
    first.record_instance(inst(1))
    first.record_rejection("instance", "bad")
    item = first.enqueue("pacs", Path("/x.dcm"), "1.2.3")
    first.close()

    again = Store(path, clock=clock)
    try:
        assert again.instance_count() == 1
        assert again.get_series(SERIES).instances == 1
        assert len(again.recent_rejections()) == 1
        assert again.get_outbox(item).sop_uid == "1.2.3"
        assert again.record_instance(inst(1)) is False
    finally:
        again.close()

    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert raw.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (
            str(SCHEMA_VERSION),
        )


def test_meta_setdefault_keeps_the_first_value(store: Store) -> None:
    assert store.meta_setdefault("site", "a") == "a"
    assert store.meta_setdefault("site", "b") == "a"


def test_counters_count_across_reopen(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "appliance.sqlite3"
    first = Store(path, clock=clock)
    first.bump("sent", "pacs")
    first.bump("sent", "pacs", 2)
    first.bump("gate")
    first.record_instance(inst(1))
    first.record_instance(inst(1))
    first.close()
    again = Store(path, clock=clock)
    try:
        assert again.counters() == {
            ("sent", "pacs"): 3,
            ("gate", ""): 1,
            ("instances_received", "new"): 1,
            ("instances_received", "repeat"): 1,
        }
    finally:
        again.close()


def test_half_applied_migration_is_completed(tmp_path: Path, clock: Clock) -> None:
    """A database recorded at an older version whose newer tables and columns are partly
    there already (an interrupted upgrade) is brought up to date without error."""
    path = tmp_path / "appliance.sqlite3"
    Store(path, clock=clock).close()
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    again = Store(path, clock=clock)
    try:
        assert again.schema_version == SCHEMA_VERSION
        again.bump("after_upgrade")
        assert again.counters() == {("after_upgrade", ""): 1}
    finally:
        again.close()


def test_newer_schema_is_refused(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "appliance.sqlite3"
    Store(path, clock=clock).close()
    with sqlite3.connect(path) as raw:
        raw.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    with pytest.raises(StoreError, match="newer than this software"):
        Store(path, clock=clock)
