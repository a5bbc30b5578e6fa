"""What becomes of an annotation, recorded: a case (its label file and its row) or a refusal.

:func:`record_case` writes a case's label map and adds the case to the store, its split
decided by :func:`appliance.cases.split.split_for`; a case whose mapped labels hold no
voxel is refused (``empty_labels``). :func:`record_refusal` records a refusal (reason code +
explanation, no patient data): ``appliance cases list`` shows it.

Files: ``<storage.root>/cases/<key>/labels.npz`` (``labels``: uint8 label map with the
task's indices on the source grid ``(slice, row, column)``; ``affine_lps``), and for a CLI
import the SEG or NIfTI file itself; ``<key>`` is derived from the annotation's identity.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from appliance.cases.split import split_for, split_key
from appliance.cases.trust import plausibility_review, review_reasons
from appliance.config import AppConfig
from appliance.errors import CaseRefused
from appliance.states import CaseOrigin, Refusal
from appliance.store import CaseRecord, CaseRefusal, NewCase, SeriesRecord, Store
from dicom_bridge.seg_annotation import SegHeader
from dicom_bridge.uids import short_ref
from models.tasks import TASKS

__all__ = [
    "SegOutcome",
    "case_dir_for",
    "cases_dir",
    "read_labels",
    "record_case",
    "record_refusal",
    "write_labels",
]

LOG = logging.getLogger(__name__)


def cases_dir(config: AppConfig) -> Path:
    return config.storage.root / "cases"


def case_dir_for(config: AppConfig, annotation_ref: str) -> Path:
    """``<storage.root>/cases/<key>``: the key is a hash, so no DICOM value names it."""
    key = hashlib.sha256(annotation_ref.encode("utf-8")).hexdigest()[:24]
    return cases_dir(config) / key


def write_labels(directory: Path, labels: np.ndarray, affine: np.ndarray) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / "labels.npz"
    tmp = directory / ".labels.tmp.npz"
    np.savez_compressed(tmp, labels=labels.astype(np.uint8), affine_lps=affine)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    return final


def read_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A case's label map and its index -> LPS affine."""
    with np.load(path) as data:
        return np.asarray(data["labels"]), np.asarray(data["affine_lps"], dtype=np.float64)


@dataclass(frozen=True, slots=True)
class SegOutcome:
    """What became of one annotation (a SEG instance, or a NIfTI file): a case (new or
    already recorded), a refusal, or nothing (the appliance's own output)."""

    case: CaseRecord | None = None
    refusal: CaseRefusal | None = None
    skipped: str | None = None
    existing: bool = False
    superseded: tuple[int, ...] = field(default_factory=tuple)


def record_refusal(
    store: Store,
    origin: CaseOrigin,
    reason: Refusal,
    detail: str,
    header: SegHeader | None,
    *,
    source: str | None = None,
    annotation_ref: str | None = None,
    study_uid: str | None = None,
    calling_ae: str | None = None,
) -> CaseRefusal:
    """Record why an annotation is not a case (no patient data) and log it."""
    study = study_uid or (header.study_instance_uid if header is not None else "")
    refusal = store.record_case_refusal(
        origin,
        reason.value,
        detail,
        annotation_ref=annotation_ref or (header.sop_instance_uid if header else None),
        seg_series_uid=header.series_instance_uid if header else None,
        source_series_uid=source,
        study_ref=short_ref(study) if study else None,
        calling_ae=calling_ae,
    )
    # The CLI reports its refusal itself; the service logs it.
    level = logging.WARNING if origin is CaseOrigin.DICOM else logging.DEBUG
    LOG.log(level, "annotation refused (%s): %s", reason.value, detail)
    return refusal


def record_case(
    store: Store,
    config: AppConfig,
    *,
    task: str,
    series: SeriesRecord,
    labels: np.ndarray,
    affine: np.ndarray,
    annotation_ref: str,
    seg_sop_uid: str | None,
    origin: CaseOrigin,
    segments: list[dict[str, Any]],
    image: np.ndarray | None = None,
    calling_ae: str | None = None,
) -> tuple[CaseRecord, tuple[int, ...]]:
    """Write the case's label map and add the case (with its split) to the store; returns
    it and the ids of the cases it supersedes. :class:`CaseRefused` (``empty_labels``)
    when no label of the task holds a voxel. ``image``: the source volume's values (for
    the plausibility checks); ``calling_ae``: who sent it over DICOM. A case needing
    review (:mod:`appliance.cases.trust`) is recorded PENDING."""
    spec = TASKS[next(t for t in TASKS if str(t) == task)]
    counts = np.bincount(labels.ravel(), minlength=int(labels.max(initial=0)) + 1)
    if spec.is_sigmoid:  # a map of tissue classes; each label is a union of them
        voxels = {
            label.name: int(sum(counts[v] for v in region if v < counts.size))
            for label, region in zip(spec.labels, spec.regions, strict=True)
        }
    else:
        voxels = {
            label.name: int(counts[label.index]) if label.index < counts.size else 0
            for label in spec.labels
        }
    if not any(voxels.values()):
        mapped = ", ".join(str(s["label"]) for s in segments if s.get("label")) or "none"
        raise CaseRefused(
            Refusal.EMPTY_LABELS,
            f"the segments that map to {task} ({mapped}) hold no voxel on the source series",
            source_series_uid=series.series_uid,
        )
    review = review_reasons(config, origin, calling_ae) + plausibility_review(
        store,
        config,
        task=task,
        series_uid=series.series_uid,
        modality=series.modality,
        labels=labels,
        image=image,
    )
    directory = case_dir_for(config, annotation_ref)
    labels_path = write_labels(directory, labels, affine)
    key = split_key(store, config)
    case = NewCase(
        task=task,
        source_series_uid=series.series_uid,
        study_uid=series.study_uid,
        study_ref=short_ref(series.study_uid),
        annotation_ref=annotation_ref,
        seg_sop_uid=seg_sop_uid,
        origin=origin,
        split=split_for(series.study_uid, key, config.cases.held_out_fraction),
        labels_path=labels_path,
        labels=voxels,
        segments=segments,
        calling_ae=calling_ae,
        review=review,
    )
    return store.add_case(case)
