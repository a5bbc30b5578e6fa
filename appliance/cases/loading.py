"""Annotated cases for trainers and the validation gate: store records -> TrainingCase.

``load_cases(store, task, split)`` returns the ACTIVE cases of a task on one side of the
site's held-out split, each as a :class:`models.training.TrainingCase` (the source series'
volume from the spooled files, the labels from the case's label file, the LPS affine)
plus its case id. Held-out cases come back only when asked for by name
(``CaseSplit.HELD_OUT``, for evaluation): a trainer asks for ``CaseSplit.TRAIN``.
How cases are made: :mod:`appliance.cases.from_seg` and :mod:`appliance.cases.from_nifti`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from appliance.cases.recording import read_labels
from appliance.errors import CaseLoadError
from appliance.states import CaseSplit, CaseState
from appliance.store import CaseRecord, Store
from dicom_bridge.errors import VolumeError
from dicom_bridge.sop_classes import VOLUME_CLASSES
from dicom_bridge.volume import load_series_volume
from models.training_case import TrainingCase


@dataclass(frozen=True, slots=True, eq=False)
class LoadedCase:
    """One case ready for training or evaluation."""

    case_id: int
    task: str
    split: CaseSplit
    study_ref: str
    case: TrainingCase


def load_case(store: Store, record: CaseRecord) -> LoadedCase:
    """The volume and labels of one case; :class:`CaseLoadError` when they no longer fit."""
    paths = [
        i.path
        for i in store.series_instances(record.source_series_uid)
        if i.sop_class_uid in VOLUME_CLASSES
    ]
    try:
        volume = load_series_volume(paths)
    except VolumeError as exc:
        raise CaseLoadError(
            f"case {record.id}: its source series is no longer a volume ({exc.reason})"
        ) from exc
    try:
        labels, affine = read_labels(record.labels_path)
    except (OSError, KeyError, ValueError) as exc:
        raise CaseLoadError(f"case {record.id}: its label file cannot be read ({exc})") from exc
    if labels.shape != volume.shape or not np.allclose(affine, volume.affine, atol=1e-3):
        raise CaseLoadError(
            f"case {record.id}: its labels {labels.shape} no longer lie on the source series "
            f"grid {volume.shape} (was the series re-sent with other images?)"
        )
    return LoadedCase(
        case_id=record.id,
        task=record.task,
        split=record.split,
        study_ref=record.study_ref,
        case=TrainingCase(image=volume.array, labels=labels.astype(np.uint8), affine=volume.affine),
    )


def load_cases(
    store: Store, task: str, split: CaseSplit | str, *, limit: int | None = None
) -> list[LoadedCase]:
    """The ACTIVE cases of ``task`` in ``split``, oldest first. A case whose files no
    longer fit raises :class:`CaseLoadError` naming it (exclude it with
    ``appliance cases exclude ID``)."""
    records = store.list_cases(task=task, states=[CaseState.ACTIVE], split=CaseSplit(split))
    if limit is not None:
        records = records[:limit]
    return [load_case(store, r) for r in records]


def case_counts(store: Store, task: str) -> dict[str, int]:
    """Active cases of ``task`` per split (cheap: no files are read)."""
    return dict(
        store.case_counts().get(task, {"train": 0, "held_out": 0, "excluded": 0, "superseded": 0})
    )
