"""Unit tests for appliance.store.records: the one row -> record mapping."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance import store as store_package
from appliance.states import JobState, SeriesState
from appliance.store.records import (
    CaseRecord,
    JobRecord,
    RetentionJob,
    SeriesRecord,
    _plan,
    from_row,
    multi_value,
)


@pytest.fixture
def db() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    yield conn
    conn.close()


def _row(db: sqlite3.Connection, **columns: Any) -> sqlite3.Row:
    names = ", ".join(f'? AS "{name}"' for name in columns)
    row: sqlite3.Row = db.execute(f"SELECT {names}", tuple(columns.values())).fetchone()
    return row


@dataclass(frozen=True, slots=True)
class _Plain:
    name: str
    count: int
    at: float
    path: Path
    state: SeriesState
    forced: bool
    when: float | None
    job: JobState | None


def test_fields_convert_by_their_type(db: sqlite3.Connection) -> None:
    row = _row(
        db, name="x", count=3, at=2, path="/a/b", state="done", forced=1, when=None, job="failed"
    )
    record = from_row(_Plain, row)
    assert record == _Plain(
        "x", 3, 2.0, Path("/a/b"), SeriesState.DONE, True, None, JobState.FAILED
    )
    assert type(record.at) is float and type(record.forced) is bool
    assert isinstance(record.state, SeriesState) and isinstance(record.path, Path)
    later = from_row(
        _Plain,
        _row(db, name="y", count=0, at=1.5, path="p", state="complete", forced=0, when=7, job=None),
    )
    assert (later.when, later.job, later.forced) == (7.0, None, False)


def test_json_multi_value_and_renamed_columns(db: sqlite3.Connection) -> None:
    series: dict[str, Any] = {f.name: None for f in dataclasses.fields(SeriesRecord)}
    series.update(
        series_uid="1.2",
        study_uid="1.1",
        modality="CT",
        sop_class_uid="1.2.840",
        series_description="",
        body_part_examined="",
        image_type=multi_value(("ORIGINAL", "PRIMARY")),
        state="receiving",
        generation=2,
        instances=5,
        first_instance_at=1.0,
        last_instance_at=2.0,
        updated_at=3.0,
        contrast_bolus_agent="",
        scanning_sequence=multi_value(("SE", "IR")),
        echo_time_ms=90.0,
    )
    del series["result"]
    record = from_row(SeriesRecord, _row(db, **series, result_json=json.dumps({"shape": [1]})))
    assert record.image_type == ("ORIGINAL", "PRIMARY")
    assert record.scanning_sequence == ("SE", "IR")
    assert record.echo_time_ms == 90.0 and record.inversion_time_ms is None
    assert record.result == {"shape": [1]}
    assert record.state is SeriesState.RECEIVING
    assert (
        from_row(SeriesRecord, _row(db, **{**series, "image_type": ""}, result_json=None)).result
        is None
    )

    job = from_row(
        RetentionJob,
        _row(
            db,
            id=9,
            series_uid="1.2",
            generation=1,
            state="done",
            finished_at=5,
            sends=2,
            unsent=0,
            delivered_at=None,
        ),
    )
    assert job == RetentionJob(9, "1.2", 1, JobState.DONE, 5.0, 2, 0, None)


def test_every_stored_record_has_a_mapping() -> None:
    """Each record read from the database can be built: no field lacks a converter."""
    for name in store_package.__all__:
        cls = getattr(store_package, name)
        if (
            isinstance(cls, type)
            and dataclasses.is_dataclass(cls)
            and name not in {"NewInstance", "NewCase", "Enqueue"}
        ):
            assert [field for field, _, _ in _plan(cls)] == [
                f.name for f in dataclasses.fields(cls)
            ]
    columns = {field: column for field, column, _ in _plan(JobRecord)}
    assert (columns["timings"], columns["outputs"]) == ("timings_json", "outputs_json")
    columns = {field: column for field, column, _ in _plan(CaseRecord)}
    assert (columns["labels"], columns["segments"]) == ("labels_json", "segments_json")


@dataclass(frozen=True, slots=True)
class _Unknown:
    values: dict[str, int]


def test_a_field_without_a_stored_form_is_an_error(db: sqlite3.Connection) -> None:
    with pytest.raises(TypeError, match=r"_Unknown\.values"):
        from_row(_Unknown, _row(db, values="{}"))
