"""What the store hands out and takes in: frozen records, and the one row-to-record mapping.

A record read from the database is built by :func:`from_row`: each dataclass field comes
from the column of the same name, converted by the field's type (``int``, ``float``,
``bool``, :class:`~pathlib.Path`, a state enum, or ``None`` for an optional one). Fields
stored differently (JSON text, DICOM multi-values, a renamed column) are named in
``_COLUMNS``; a field of any other type without an entry there is a ``TypeError`` the first
time its record is built.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sqlite3
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from appliance.states import CaseOrigin, CaseSplit, CaseState, JobState, OutboxState, SeriesState
from models.lifecycle import ModelState

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    sop_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path
    size: int
    calling_ae: str
    instance_number: int | None
    number_of_frames: int
    received_at: float
    sha256: str | None = None  # of the encoded dataset as received; None before schema 5


@dataclass(frozen=True, slots=True)
class NewInstance:
    """What the listener hands over for one durable instance."""

    sop_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path
    size: int
    calling_ae: str
    modality: str = ""
    series_description: str = ""
    body_part_examined: str = ""
    image_type: tuple[str, ...] = ()
    instance_number: int | None = None
    number_of_frames: int = 1
    sha256: str | None = None  # of the encoded dataset as received, when known
    # MR sequence attributes of the series (from its first instance), for routing
    contrast_bolus_agent: str = ""
    scanning_sequence: tuple[str, ...] = ()
    echo_time_ms: float | None = None
    repetition_time_ms: float | None = None
    inversion_time_ms: float | None = None


@dataclass(frozen=True, slots=True)
class SeriesRecord:
    series_uid: str
    study_uid: str
    modality: str
    sop_class_uid: str
    series_description: str
    body_part_examined: str
    image_type: tuple[str, ...]
    state: SeriesState
    generation: int
    instances: int
    first_instance_at: float
    last_instance_at: float
    updated_at: float
    reason: str | None
    detail: str | None
    result_generation: int | None
    result: dict[str, Any] | None
    # MR sequence attributes from the first instance (schema 7; empty / None before it)
    contrast_bolus_agent: str = ""
    scanning_sequence: tuple[str, ...] = ()
    echo_time_ms: float | None = None
    repetition_time_ms: float | None = None
    inversion_time_ms: float | None = None


@dataclass(frozen=True, slots=True)
class RetentionSeries:
    """A series with stored instances, as retention sees it (:meth:`Store.retention_series`)."""

    series_uid: str
    study_uid: str
    modality: str
    state: SeriesState
    generation: int
    updated_at: float
    files: int
    bytes: int
    sends: int  # outbox items of the series (its SEG/SR to destinations)
    unsent: int  # of which not yet acknowledged (pending, sending or dead)
    delivered_at: float | None  # the last acknowledgement
    open_jobs: int  # queued or running
    job_finished_at: float | None  # the current generation's job, when it has finished
    job_state: JobState | None
    in_training_set: bool  # the source (or the SEG) of an active case


@dataclass(frozen=True, slots=True)
class RetentionJob:
    job_id: int
    series_uid: str
    generation: int
    state: JobState
    finished_at: float
    sends: int
    unsent: int
    delivered_at: float | None


@dataclass(frozen=True, slots=True)
class RejectionRecord:
    id: int
    at: float
    scope: str
    reason: str
    status: int | None
    calling_ae: str
    peer_host: str
    ref: str | None


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    destination: str
    path: Path
    sop_uid: str
    series_uid: str | None
    state: OutboxState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    last_status: int | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """One registered model version and its lifecycle state at this site."""

    task: str
    version: str
    state: ModelState
    name: str
    weights_sha256: str
    federated_round: int | None
    path: Path
    origin: str  # "shipped", "monai_bundle", "registry_bundle", ...
    registered_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class ActivationRecord:
    id: int
    task: str
    version: str
    previous_version: str | None
    action: str  # "activate" or "rollback"
    forced: bool
    at: float


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One segmentation job: a (series, generation, task)."""

    id: int
    series_uid: str
    study_uid: str
    generation: int
    task: str
    state: JobState
    attempts: int
    model_name: str | None
    model_version: str | None
    model_sha256: str | None
    federated_round: int | None
    reason: str | None
    detail: str | None
    timings: dict[str, Any]
    outputs: dict[str, Any]
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class NewCase:
    """An annotated case to record (its label file is already written)."""

    task: str
    source_series_uid: str
    study_uid: str
    study_ref: str
    annotation_ref: str  # the SEG's SOP Instance UID, or "nifti:<sha256 of the file>"
    seg_sop_uid: str | None
    origin: CaseOrigin
    split: CaseSplit
    labels_path: Path
    labels: dict[str, int]  # label name -> voxels, for every label of the task
    segments: list[dict[str, Any]]  # how each source segment/value was mapped
    calling_ae: str | None = None  # who sent it over DICOM; None for a CLI import
    review: list[str] = dataclasses.field(
        default_factory=list
    )  # reasons it needs review (-> PENDING)


@dataclass(frozen=True, slots=True)
class CaseRecord:
    id: int
    task: str
    source_series_uid: str
    study_uid: str
    study_ref: str
    annotation_ref: str
    seg_sop_uid: str | None
    origin: CaseOrigin
    state: CaseState
    split: CaseSplit
    labels_path: Path
    labels: dict[str, int]
    segments: list[dict[str, Any]]
    created_at: float
    updated_at: float
    calling_ae: str | None
    review: list[str]

    @property
    def labels_present(self) -> tuple[str, ...]:
        return tuple(name for name, voxels in self.labels.items() if voxels > 0)


@dataclass(frozen=True, slots=True)
class CaseRefusal:
    id: int
    at: float
    origin: CaseOrigin
    annotation_ref: str | None
    seg_series_uid: str | None
    source_series_uid: str | None
    study_ref: str | None
    reason: str
    detail: str
    calling_ae: str | None


@dataclass(frozen=True, slots=True)
class Enqueue:
    """An outbox item to create together with a job's result."""

    destination: str
    path: Path
    sop_uid: str


@dataclass(frozen=True, slots=True)
class Claim:
    """A series taken by the worker: process this generation of it."""

    series_uid: str
    generation: int


# -- row -> record ---------------------------------------------------------------------------

Convert = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Column:
    """How a field is stored when not as the same-named column of its type."""

    name: str | None = None  # the column, where it differs from the field
    convert: Convert | None = None  # stored value -> field value (default: by the field's type)


def multi_value(values: tuple[str, ...]) -> str:
    """A DICOM multi-value (e.g. Image Type) as stored: backslash-separated."""
    return "\\".join(values)


def _multi_values(stored: str) -> tuple[str, ...]:
    return tuple(v for v in stored.split("\\") if v)


def _json_or_none(stored: str | None) -> Any:
    return json.loads(stored) if stored else None


def _json_object(stored: str | None) -> Any:
    return json.loads(stored or "{}")


def _voxels_by_label(stored: str | None) -> dict[str, int]:
    return {str(k): int(v) for k, v in json.loads(stored or "{}").items()}


def _json_list(stored: str | None) -> list[Any]:
    return list(json.loads(stored or "[]"))


#: The fields stored otherwise than as a same-named column of their type.
_COLUMNS: Mapping[type, Mapping[str, Column]] = {
    SeriesRecord: {
        "image_type": Column(convert=_multi_values),
        "scanning_sequence": Column(convert=_multi_values),
        "result": Column("result_json", _json_or_none),
    },
    JobRecord: {
        "timings": Column("timings_json", _json_object),
        "outputs": Column("outputs_json", _json_object),
    },
    CaseRecord: {
        "labels": Column("labels_json", _voxels_by_label),
        "segments": Column("segments_json", _json_list),
        "review": Column("review_json", _json_list),
    },
    RetentionJob: {"job_id": Column("id")},
}

R = TypeVar("R", bound="DataclassInstance")


def from_row(cls: type[R], row: sqlite3.Row) -> R:
    """The record ``cls`` built from ``row`` (see the module docstring for the rules)."""
    return cls(**{field: convert(row[column]) for field, column, convert in _plan(cls)})


@functools.cache
def _plan(cls: type[DataclassInstance]) -> tuple[tuple[str, str, Convert], ...]:
    """For each field of ``cls``: (field, column, converter)."""
    hints = typing.get_type_hints(cls)
    stored = _COLUMNS.get(cls, {})
    plan: list[tuple[str, str, Convert]] = []
    for field in dataclasses.fields(cls):
        column = stored.get(field.name, Column())
        convert = column.convert or _by_type(hints[field.name], f"{cls.__name__}.{field.name}")
        plan.append((field.name, column.name or field.name, convert))
    return tuple(plan)


def _same(value: Any) -> Any:
    return value


def _by_type(tp: Any, where: str) -> Convert:
    """The converter of a stored value to type ``tp``."""
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and len(args) == 2:
            convert = _by_type(inner[0], where)
            return lambda value: None if value is None else convert(value)
    if tp is str:
        return _same
    if tp in (int, float, bool, Path) or (isinstance(tp, type) and issubclass(tp, Enum)):
        return typing.cast(Convert, tp)
    raise TypeError(f"{where}: no stored form is known for {tp}; name one in _COLUMNS")
