"""The store's cases tables: older databases are migrated (see appliance.store)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from appliance.store import SCHEMA_VERSION, Store


def _downgrade_to_version_2(path: Path) -> None:
    """Turn a current database into what version 2 of the software left behind."""
    db = sqlite3.connect(path)
    db.executescript(
        """DROP TABLE cases; DROP TABLE case_refusals; DROP TABLE counters;
           ALTER TABLE series DROP COLUMN purged_at;
           ALTER TABLE jobs DROP COLUMN results_purged_at;
           UPDATE meta SET value = '2' WHERE key = 'schema_version';
           INSERT INTO rejections (at, scope, reason) VALUES (1.0, 'association', 'kept');"""
    )
    db.commit()
    db.close()


def _check_current(store: Store) -> None:
    assert store.schema_version == SCHEMA_VERSION
    assert store.list_cases() == [] and store.list_case_refusals() == []
    assert store.recent_rejections()[0].reason == "kept"
    # The columns the retention purge needs are there.
    assert store.retention_series() == [] and store.retention_jobs() == []
    assert store.retention_cases() == []


def test_a_version_2_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    Store(path).close()
    _downgrade_to_version_2(path)
    store = Store(path)
    try:
        _check_current(store)
    finally:
        store.close()


def test_a_half_applied_upgrade_is_finished(tmp_path: Path) -> None:
    """An upgrade cut off after some columns were added still completes on the next start."""
    path = tmp_path / "db.sqlite3"
    Store(path).close()
    _downgrade_to_version_2(path)
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE series ADD COLUMN purged_at REAL")
    db.commit()
    db.close()
    store = Store(path)
    try:
        _check_current(store)
    finally:
        store.close()
    Store(path).close()  # and opening it again changes nothing
