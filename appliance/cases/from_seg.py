"""A received (or imported) SEG becomes a training case, or a recorded refusal.

A SEG that references a series stored here becomes a case of one task when

1. it references a stored source series (ReferencedSeriesSequence, else the frames'
   source-image references), and every source image it references is stored;
2. its Frame of Reference is the source series', and every frame lies on the source grid
   (same orientation, pixel spacing and matrix; on a slice, not between slices): the
   rules of :func:`dicom_bridge.seg_reader.read_seg_labelmap`, nothing is resampled;
3. at least one segment maps to a label of a task for the source modality **by its
   coded concepts**, never by its number
   (:func:`appliance.cases.concepts.map_segments`).

A SEG received over DICOM must come from a caller in ``cases.annotation_callers``, and a
new case may wait for review (``pending``): :mod:`appliance.cases.trust`.

Otherwise it is refused, and the refusal (reason code + explanation, no patient data) is
recorded (``appliance cases list`` shows it; a SEG series received over DICOM is also
``rejected`` with reason ``annotation_refused`` in ``appliance status``).

Where mapped segments overlap, the higher label index wins (in the shipped tasks a lesion
has a higher index than its organ, so a tumour drawn inside the liver segment stays
tumour). Labels of the task that no segment gives are recorded as absent
(``CaseRecord.labels`` holds every label's voxel count). The case's split:
:mod:`appliance.cases.split`; its files: :mod:`appliance.cases.recording`.

The appliance's own output is not a case. A SEG whose SOP Instance UID a job of this
appliance wrote, or whose Manufacturer is this appliance's (``SegOptions.manufacturer``),
is skipped when it comes back over DICOM (series ``skipped``, reason
``appliance_output``) and refused by ``appliance cases import``: training on the model's
own masks would teach it nothing. A radiologist's correction made in a viewer is a new
object, with the viewer's Manufacturer and its own UID, and becomes a case.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from appliance.cases.concepts import map_segments
from appliance.cases.recording import (
    SegOutcome,
    case_dir_for,
    read_labels,
    record_case,
    record_refusal,
)
from appliance.cases.trust import caller_allowed
from appliance.config import AppConfig
from appliance.errors import CaseRefused
from appliance.states import CaseOrigin, Refusal, SeriesState
from appliance.store import CaseRecord, InstanceRecord, SeriesRecord, Store
from dicom_bridge.errors import VolumeError
from dicom_bridge.seg import SegOptions, SourceSeriesError, read_source_grid
from dicom_bridge.seg_annotation import SegHeader, place_segments, read_seg_header
from dicom_bridge.seg_reader import SegmentationReadError
from dicom_bridge.sop_classes import VOLUME_CLASSES
from dicom_bridge.uids import short_ref
from dicom_bridge.volume import load_series_volume

__all__ = [
    "SeriesNote",
    "annotate_seg_series",
    "case_from_seg",
    "is_appliance_output",
]

LOG = logging.getLogger(__name__)


def is_appliance_output(store: Store, header: SegHeader) -> bool:
    return store.is_own_output(header.sop_instance_uid) or (
        header.manufacturer == SegOptions().manufacturer
    )


def _source_of(store: Store, header: SegHeader) -> tuple[SeriesRecord, list[InstanceRecord]]:
    """The stored source series of a SEG and its image instances (or CaseRefused)."""
    stored_refs = store.instances_by_sop(header.referenced_instance_uids)
    by_series = [
        uid for uid in header.referenced_series_uids if store.series_instances(uid)
    ] or list(dict.fromkeys(i.series_uid for i in stored_refs))
    if not header.referenced_series_uids and not header.referenced_instance_uids:
        raise CaseRefused(
            Refusal.SOURCE_NOT_REFERENCED,
            "the SEG references no source series or images (ReferencedSeriesSequence and "
            "the frames' Source Image Sequences are empty)",
        )
    if not by_series:
        refs = ", ".join(short_ref(u) for u in header.referenced_series_uids) or "unnamed"
        raise CaseRefused(
            Refusal.SOURCE_NOT_STORED,
            f"the source series it references (ref {refs}) is not stored here; send the "
            "source series first, then the SEG",
        )
    if len(by_series) > 1:
        raise CaseRefused(
            Refusal.MULTIPLE_SOURCES,
            f"it references {len(by_series)} stored series "
            f"({', '.join(short_ref(u) for u in by_series)}); a case has one source series",
        )
    source_uid = by_series[0]
    instances = [i for i in store.series_instances(source_uid) if i.sop_class_uid in VOLUME_CLASSES]
    if not instances:
        raise CaseRefused(
            Refusal.SOURCE_NOT_STORED,
            f"the referenced series (ref {short_ref(source_uid)}) has no CT/MR images here",
            source_series_uid=source_uid,
        )
    stored = {i.sop_uid for i in instances}
    missing = [u for u in header.referenced_instance_uids if u not in stored]
    if missing:
        raise CaseRefused(
            Refusal.SOURCE_INCOMPLETE,
            f"{len(missing)} of the {len(header.referenced_instance_uids)} source images it "
            f"references are not stored in series ref {short_ref(source_uid)}",
            source_series_uid=source_uid,
        )
    return store.get_series(source_uid), instances


def case_from_seg(
    store: Store,
    config: AppConfig,
    seg_path: Path,
    origin: CaseOrigin,
    *,
    keep_copy: bool = False,
    calling_ae: str | None = None,
) -> SegOutcome:
    """Make one SEG instance a case, or record why not (never raises for bad input).

    ``keep_copy``: copy the SEG file next to the labels (for a CLI import; a received SEG
    stays in the spool). ``calling_ae``: who sent a SEG received over DICOM (default: the
    ``calling_ae`` of its stored instance row); it must be one of
    ``cases.annotation_callers`` (:mod:`appliance.cases.trust`)."""
    try:
        header = read_seg_header(seg_path)
    except SegmentationReadError as exc:
        return SegOutcome(refusal=record_refusal(store, origin, Refusal.UNREADABLE, str(exc), None))
    ref = header.sop_instance_uid
    if is_appliance_output(store, header):
        if origin is CaseOrigin.DICOM:
            return SegOutcome(skipped="appliance_output")
        return SegOutcome(
            refusal=record_refusal(
                store,
                origin,
                Refusal.OWN_OUTPUT,
                f"the SEG was made by this appliance (Manufacturer {header.manufacturer!r}); "
                "only annotations made or corrected elsewhere become cases",
                header,
            )
        )
    if origin is CaseOrigin.DICOM and calling_ae is None and ref:
        rows = store.instances_by_sop([ref])
        calling_ae = rows[0].calling_ae if rows else None
    caller = calling_ae if origin is CaseOrigin.DICOM else None
    if not caller_allowed(config, origin, caller):
        return SegOutcome(
            refusal=record_refusal(
                store,
                origin,
                Refusal.CALLER_NOT_TRUSTED,
                f"its caller {caller or '(unknown)'} is not in cases.annotation_callers; "
                "the SEG is stored, not made a case",
                header,
                calling_ae=caller,
            )
        )
    existing = store.case_by_annotation(ref) if ref else None
    if existing is not None:
        return SegOutcome(case=existing, existing=True)
    try:
        case, superseded = _seg_case(store, config, seg_path, header, origin, keep_copy, caller)
    except CaseRefused as exc:
        return SegOutcome(
            refusal=record_refusal(
                store,
                origin,
                exc.reason,
                exc.detail,
                header,
                source=exc.source_series_uid,
                calling_ae=caller,
            )
        )
    LOG.info(
        "case %d (%s, %s, %s) from SEG %s of series %s: labels %s%s",
        case.id,
        case.task,
        case.split.value,
        case.state.value + (f": {'; '.join(case.review)}" if case.review else ""),
        short_ref(ref),
        short_ref(case.source_series_uid),
        ", ".join(case.labels_present) or "none",
        f"; supersedes case {', '.join(map(str, superseded))}" if superseded else "",
    )
    return SegOutcome(case=case, superseded=superseded)


def _seg_case(
    store: Store,
    config: AppConfig,
    seg_path: Path,
    header: SegHeader,
    origin: CaseOrigin,
    keep_copy: bool,
    calling_ae: str | None,
) -> tuple[CaseRecord, tuple[int, ...]]:
    series, instances = _source_of(store, header)
    source = series.series_uid
    paths = [i.path for i in instances]
    try:
        grid = read_source_grid(paths)
    except SourceSeriesError as exc:
        raise CaseRefused(Refusal.SOURCE_NOT_A_VOLUME, str(exc), source_series_uid=source) from exc
    if header.frame_of_reference_uid != grid.frame_of_reference_uid:
        raise CaseRefused(
            Refusal.FRAME_OF_REFERENCE_MISMATCH,
            "the SEG's Frame of Reference differs from its source series'"
            if header.frame_of_reference_uid
            else "the SEG has no Frame of Reference: its frames cannot be placed",
            source_series_uid=source,
        )
    try:
        mapping = map_segments(header.segments, series.modality)
    except CaseRefused as exc:
        exc.source_series_uid = source
        raise
    try:
        placed = place_segments(seg_path, paths, mapping.values, grid=grid)
    except SegmentationReadError as exc:
        raise CaseRefused(
            Refusal.GEOMETRY_MISMATCH,
            f"the SEG does not lie on the source series' grid: {exc}",
            source_series_uid=source,
        ) from exc
    try:
        volume = load_series_volume(paths)
    except VolumeError as exc:
        raise CaseRefused(
            Refusal.SOURCE_NOT_A_VOLUME,
            f"{exc.reason}: {exc.detail}",
            source_series_uid=source,
        ) from exc
    if volume.shape != placed.labels.shape or not np.allclose(
        volume.affine, placed.affine, atol=1e-3
    ):
        raise CaseRefused(
            Refusal.GEOMETRY_MISMATCH,
            "the source volume's grid differs from the grid of its headers",
            source_series_uid=source,
        )
    annotation_ref = header.sop_instance_uid
    directory = case_dir_for(config, annotation_ref)
    copy = None
    if keep_copy:
        directory.mkdir(parents=True, exist_ok=True)
        copy = directory / "seg.dcm"
        shutil.copyfile(seg_path, copy)
    return record_case(
        store,
        config,
        task=mapping.task,
        series=series,
        labels=placed.labels,
        affine=volume.affine,
        annotation_ref=annotation_ref,
        seg_sop_uid=annotation_ref,
        origin=origin,
        segments=[m.as_dict() for m in mapping.segments],
        image=volume.array,
        calling_ae=calling_ae,
    )


# --- a complete SEG series received over DICOM -------------------------------------------


@dataclass(frozen=True, slots=True)
class SeriesNote:
    """The outcome of a SEG series for the series table."""

    state: SeriesState
    reason: str | None
    detail: str | None
    result: dict[str, Any] | None


def annotate_seg_series(
    store: Store, config: AppConfig, seg_paths: Sequence[Path], *, calling_ae: str | None = None
) -> SeriesNote:
    """Every SEG instance of a complete series -> a case or a recorded refusal
    (``calling_ae``: as for :func:`case_from_seg`)."""
    outcomes = [
        case_from_seg(store, config, path, CaseOrigin.DICOM, calling_ae=calling_ae)
        for path in seg_paths
    ]
    cases = [o.case for o in outcomes if o.case is not None]
    refusals = [o.refusal for o in outcomes if o.refusal is not None]
    result: dict[str, Any] = {
        "annotation": True,
        "case_ids": [c.id for c in cases],
        "pending_case_ids": [c.id for c in cases if c.review],
        "refusals": [{"reason": r.reason, "detail": r.detail} for r in refusals],
    }
    if cases:
        first = cases[0]
        result["task"] = first.task
        result["labels_present"] = list(first.labels_present)
        labels, _ = read_labels(first.labels_path)
        result["shape"] = [int(v) for v in labels.shape]
        return SeriesNote(SeriesState.DONE, None, None, result)
    if refusals:
        first_refusal = refusals[0]
        return SeriesNote(
            SeriesState.REJECTED,
            "annotation_refused",
            f"{first_refusal.reason}: {first_refusal.detail}"[:1000],
            result,
        )
    return SeriesNote(
        SeriesState.SKIPPED,
        "appliance_output",
        "a SEG made by this appliance came back; it is not a training case",
        result,
    )
