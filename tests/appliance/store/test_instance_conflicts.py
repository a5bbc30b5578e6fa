"""Acknowledged means immutable: identical repeats write nothing, conflicting ones are
refused and leave the recorded instance as it was, and the decision is atomic with the
spool's rename (``publish``) even when two threads record the same SOP Instance UID."""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
from pathlib import Path

import pytest

from appliance.errors import InstanceConflictError
from appliance.store import SCHEMA_VERSION, InstanceRecord, NewInstance, Store
from tests.appliance.conftest import Clock
from tests.appliance.store.test_series import SERIES, inst

HASH_A = "a" * 64
HASH_B = "b" * 64


def hashed(n: int, digest: str = HASH_A, **changes: object) -> NewInstance:
    fields: dict[str, object] = {"sha256": digest, **changes}
    return dataclasses.replace(inst(n), **fields)  # type: ignore[arg-type]


def row(store: Store, sop_uid: str) -> InstanceRecord:
    (record,) = store.instances_by_sop([sop_uid])
    return record


def test_identical_repeat_writes_nothing(store: Store, clock: Clock) -> None:
    published: list[int] = []
    assert store.record_instance(hashed(1), lambda: published.append(1)) is True
    before_row, before_series = row(store, f"{SERIES}.1"), store.get_series(SERIES)
    clock.advance(5)
    assert store.record_instance(hashed(1), lambda: published.append(2)) is False
    assert published == [1]  # the repeat's file is never renamed into place
    assert row(store, f"{SERIES}.1") == before_row
    assert store.get_series(SERIES) == before_series  # not even updated_at moves
    assert before_row.sha256 == HASH_A
    counters = store.counters()
    assert counters[("instances_received", "new")] == 1
    assert counters[("instances_received", "repeat")] == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"sha256": HASH_B},  # other pixels, same size
        {"sha256": HASH_B, "size": 5000},
        {"series_uid": "1.2.826.0.1.3680043.8.498.3"},  # identical bytes, other series
        {"study_uid": "1.2.826.0.1.3680043.8.498.7"},  # identical bytes, other study
    ],
)
def test_conflicting_repeat_is_refused_and_changes_nothing(
    store: Store, clock: Clock, changes: dict[str, object]
) -> None:
    store.record_instance(hashed(1))
    before_row, before_series = row(store, f"{SERIES}.1"), store.get_series(SERIES)
    clock.advance(5)
    published: list[int] = []
    with pytest.raises(InstanceConflictError, match="already acknowledged") as caught:
        store.record_instance(hashed(1, **changes), lambda: published.append(1))
    assert caught.value.reason == "sop_instance_conflict"
    assert published == []
    assert row(store, f"{SERIES}.1") == before_row
    assert store.get_series(SERIES) == before_series
    assert [s.series_uid for s in store.list_series()] == [SERIES]
    assert store.instance_count() == 1
    assert f"{SERIES}.1" not in str(caught.value)  # short references only


def test_rows_without_hash_compare_by_size(store: Store) -> None:
    store.record_instance(inst(1))  # recorded before schema 5: no sha256
    assert store.record_instance(hashed(1)) is False  # same place, same size
    with pytest.raises(InstanceConflictError):
        store.record_instance(hashed(1, size=1))
    assert row(store, f"{SERIES}.1").sha256 is None  # the old row is left as it was


def test_failing_publish_rolls_the_row_back(store: Store) -> None:
    def publish() -> None:
        raise OSError("disk gone")

    with pytest.raises(OSError):
        store.record_instance(hashed(1), publish)
    assert store.instance_count() == 0
    assert store.list_series() == []
    assert store.record_instance(hashed(1)) is True  # the retry is a first copy


def race(store: Store, n: int) -> tuple[list[str], list[str]]:
    """Record SOP instance ``n`` from two threads at once, with different bytes."""
    barrier = threading.Barrier(2)
    outcomes: list[str] = []
    published: list[str] = []

    def send(digest: str) -> None:
        barrier.wait()
        try:
            store.record_instance(hashed(n, digest), lambda: published.append(digest))
            outcomes.append(digest)
        except InstanceConflictError:
            outcomes.append("conflict")

    pair = [threading.Thread(target=send, args=(d,)) for d in (HASH_A, HASH_B)]
    for th in pair:
        th.start()
    for th in pair:
        th.join()
    return outcomes, published


def test_same_uid_from_two_threads_one_publish(store: Store) -> None:
    """Two associations with the same SOP Instance UID at once, different bytes: exactly one
    is recorded and published, the other is refused."""
    rounds = 20
    for n in range(rounds):
        outcomes, published = race(store, n)
        assert outcomes.count("conflict") == 1
        assert len(published) == 1 and published[0] in outcomes
        assert row(store, f"{SERIES}.{n}").sha256 == published[0]
    assert store.get_series(SERIES).instances == rounds


def test_schema_5_adds_the_hash_column_to_an_old_database(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    Store(path).close()
    raw = sqlite3.connect(path)
    raw.executescript(
        """ALTER TABLE instances DROP COLUMN sha256;
           UPDATE meta SET value = '4' WHERE key = 'schema_version';"""
    )
    raw.close()
    store = Store(path)
    try:
        assert store.schema_version == SCHEMA_VERSION
        assert store.record_instance(hashed(1)) is True
        assert row(store, f"{SERIES}.1").sha256 == HASH_A
    finally:
        store.close()
    again = Store(path)  # a second open changes nothing
    try:
        assert again.schema_version == SCHEMA_VERSION
        assert again.record_instance(hashed(1)) is False
    finally:
        again.close()
