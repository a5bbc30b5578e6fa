"""The store's cases tables: older databases are migrated (see appliance.store)."""

from __future__ import annotations

import dataclasses
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


MR_COLUMNS = (
    "contrast_bolus_agent",
    "scanning_sequence",
    "echo_time_ms",
    "repetition_time_ms",
    "inversion_time_ms",
)


def test_a_version_6_database_gains_the_mr_sequence_columns(tmp_path: Path) -> None:
    """A series recorded before version 7 keeps its row, with the attributes empty; a new
    series records them."""
    from tests.appliance.store.test_series import SERIES, inst, mr_inst

    path = tmp_path / "db.sqlite3"
    old = Store(path)
    old.record_instance(inst(1))
    old.close()
    db = sqlite3.connect(path)
    db.executescript(
        "".join(f"ALTER TABLE series DROP COLUMN {c};" for c in MR_COLUMNS)
        + "UPDATE meta SET value = '6' WHERE key = 'schema_version';"
    )
    db.commit()
    db.close()
    store = Store(path)
    try:
        assert store.schema_version == SCHEMA_VERSION == 7
        kept = store.get_series(SERIES)
        assert kept.instances == 1 and kept.modality == "CT"
        assert kept.contrast_bolus_agent == "" and kept.scanning_sequence == ()
        assert kept.echo_time_ms is None and kept.inversion_time_ms is None
        other = "1.2.826.0.1.3680043.8.498.9"
        store.record_instance(
            dataclasses.replace(
                mr_inst(1), series_uid=other, sop_uid=f"{other}.1", scanning_sequence=("IR",)
            )
        )
        store.record_instance(
            dataclasses.replace(mr_inst(2), series_uid=other, sop_uid=f"{other}.2")
        )
        assert store.get_series(other).scanning_sequence == ("IR",)
    finally:
        store.close()
    Store(path).close()  # and opening it again changes nothing
