"""Annotations become training cases: a received (or imported) SEG, or a NIfTI label file.

A SEG that references a series stored here becomes a case of one task when

1. it references a stored source series (ReferencedSeriesSequence, else the frames'
   source-image references), and every source image it references is stored;
2. its Frame of Reference is the source series', and every frame lies on the source grid
   (same orientation, pixel spacing and matrix; on a slice, not between slices): the
   rules of :func:`dicom_bridge.seg_reader.read_seg_labelmap`, nothing is resampled;
3. at least one segment maps to a label of a task for the source modality **by its
   coded concepts**, never by its number (:func:`map_segments`).

Otherwise it is refused, and the refusal (reason code + explanation, no patient data) is
recorded (``appliance cases list`` shows it; a SEG series received over DICOM is also
``rejected`` with reason ``annotation_refused`` in ``appliance status``).

Concept mapping. A segment maps to a task label when

- its Segmented Property Type is the label's, a retired SNOMED-RT code counting as its
  SNOMED CT equivalent (dcmqi writes ``(T-62000, SRT, "Liver")`` for SCT 10200004), or one
  of the narrower types listed in :data:`PROPERTY_TYPE_ALTERNATIVES`;
- its Segmented Property Category is compatible with the label's
  (:data:`CATEGORY_ALTERNATIVES`: dcmqi and Slicer put organs under "Tissue", others
  under SCT 123037004 "Body structure");
- where both the label and the segment give an Anatomic Region, they agree (a neoplasm of
  the brain is not a liver tumour); a neoplasm without a region belongs to the task of
  the source modality.

The task is the one, among the tasks of the source series' modality, to which most
segments map. Segments that map to nothing (a spleen in a multi-organ SEG) are left out
as background and listed with the case. Where mapped segments overlap, the higher label
index wins (in the shipped tasks a lesion has a higher index than its organ, so a tumour
drawn inside the liver segment stays tumour). Labels of the task that no segment gives
are recorded as absent (``CaseRecord.labels`` holds every label's voxel count).

The appliance's own output is not a case. A SEG whose SOP Instance UID a job of this
appliance wrote, or whose Manufacturer is this appliance's (``SegOptions.manufacturer``),
is skipped when it comes back over DICOM (series ``skipped``, reason
``appliance_output``) and refused by ``appliance cases import``: training on the model's
own masks would teach it nothing. A radiologist's correction made in a viewer is a new
object, with the viewer's Manufacturer and its own UID, and becomes a case.

Held-out split. Each site keeps a fixed share of studies (``[cases] held_out_fraction``,
default 0.2) out of training: HMAC-SHA256 of the Study Instance UID under the site's key
(``[cases] split_key``, or one generated at first use and kept in the store), read as a
number in [0, 1), below the fraction means held out. All series of a study fall on the
same side; the split of a case is recorded when the case is made and never changes
(changing the fraction affects new cases only). The key is secret so that nobody can
pick studies into or out of the hold-out.

Files: ``<storage.root>/cases/<key>/labels.npz`` (``labels``: uint8 label map with the
task's indices on the source grid ``(slice, row, column)``; ``affine_lps``), and for a CLI
import the SEG or NIfTI file itself; ``<key>`` is derived from the annotation's identity.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from appliance.config import AppConfig
from appliance.errors import ApplianceError, CaseRefused, NotFoundError
from appliance.states import CaseOrigin, CaseSplit, Refusal, SeriesState
from appliance.store import CaseRecord, CaseRefusal, InstanceRecord, NewCase, SeriesRecord, Store
from dicom_bridge.codes import (
    ANATOMICAL_STRUCTURE,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    NEOPLASM,
    CodeValue,
)
from dicom_bridge.errors import DicomBridgeError, VolumeError
from dicom_bridge.seg import SegOptions, SourceSeriesError, read_source_grid
from dicom_bridge.seg_annotation import (
    SegHeader,
    codes_equivalent,
    place_segments,
    read_seg_header,
)
from dicom_bridge.seg_reader import SegmentationReadError, SegmentInfo
from dicom_bridge.sop_classes import VOLUME_CLASSES
from dicom_bridge.uids import short_ref
from dicom_bridge.volume import load_series_volume
from models.tasks import TASKS, LabelSpec, TaskSpec

LOG = logging.getLogger(__name__)

#: Where the split key lives in the store's meta table when it is not configured.
SPLIT_KEY_META: Final = "cases_split_key"

#: Categories accepted for a label's category (besides the label's own).
CATEGORY_ALTERNATIVES: Final[Mapping[CodeValue, tuple[CodeValue, ...]]] = {
    ANATOMICAL_STRUCTURE: (
        CodeValue("SCT", "85756007", "Tissue"),  # dcmqi, Slicer (SRT T-D0050)
        CodeValue("SCT", "123037004", "Body structure"),  # TotalSegmentator and others
    ),
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE: (),
}

#: Narrower property types accepted for a label's type (in the label's anatomic context).
PROPERTY_TYPE_ALTERNATIVES: Final[Mapping[CodeValue, tuple[CodeValue, ...]]] = {
    NEOPLASM: (
        CodeValue("SCT", "86049000", "Malignant neoplasm"),  # SRT M-80003
        CodeValue("SCT", "393564001", "Glioma"),
        CodeValue("SCT", "63634009", "Glioblastoma"),
        CodeValue("SCT", "4147007", "Mass"),
    ),
}


# --- concept mapping --------------------------------------------------------------------


def _code(code: Any) -> CodeValue:
    return code if isinstance(code, CodeValue) else CodeValue.from_coded(code)


def describe_code(code: CodeValue | None) -> str:
    return "(none)" if code is None else str(code)


def label_matches(label: LabelSpec, segment: SegmentInfo) -> bool:
    """Whether ``segment``'s coded concepts say it is ``label`` (module doc)."""
    wanted_type = _code(label.property_type)
    types = (wanted_type, *PROPERTY_TYPE_ALTERNATIVES.get(wanted_type, ()))
    if not any(codes_equivalent(segment.property_type, t) for t in types):
        return False
    wanted_category = _code(label.category)
    categories = (wanted_category, *CATEGORY_ALTERNATIVES.get(wanted_category, ()))
    if not any(codes_equivalent(segment.category, c) for c in categories):
        return False
    if label.anatomic_region is not None and segment.anatomic_region is not None:
        return codes_equivalent(segment.anatomic_region, _code(label.anatomic_region))
    return True


@dataclass(frozen=True, slots=True)
class SegmentMapping:
    """How one segment of an annotation was read: its number, label and codes, and the
    task label it became (None: left out as background)."""

    number: int
    segment_label: str
    property_type: str
    category: str
    anatomic_region: str | None
    label: str | None
    label_index: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "segment_label": self.segment_label,
            "property_type": self.property_type,
            "category": self.category,
            "anatomic_region": self.anatomic_region,
            "label": self.label,
            "label_index": self.label_index,
        }


@dataclass(frozen=True, slots=True)
class TaskMapping:
    task: str
    values: Mapping[int, int]  # segment number -> task label index
    segments: tuple[SegmentMapping, ...]


def _segment_mapping(segment: SegmentInfo, label: LabelSpec | None) -> SegmentMapping:
    return SegmentMapping(
        number=segment.number,
        segment_label=segment.label,
        property_type=describe_code(segment.property_type),
        category=describe_code(segment.category),
        anatomic_region=(
            None if segment.anatomic_region is None else describe_code(segment.anatomic_region)
        ),
        label=None if label is None else label.name,
        label_index=None if label is None else label.index,
    )


def map_segments(
    segments: Sequence[SegmentInfo], modality: str, tasks: Sequence[TaskSpec] | None = None
) -> TaskMapping:
    """Choose the task and map each segment to one of its labels by coded concepts.

    Raises :class:`CaseRefused` (``no_matching_segments``) when no segment maps to a label
    of any task for ``modality``; the message lists the codes found."""
    candidates = [
        t for t in (tasks if tasks is not None else TASKS.values()) if t.modality == modality
    ]
    best: TaskMapping | None = None
    for spec in candidates:
        values: dict[int, int] = {}
        described: list[SegmentMapping] = []
        for segment in segments:
            label = next((lb for lb in spec.labels if label_matches(lb, segment)), None)
            described.append(_segment_mapping(segment, label))
            if label is not None:
                values[segment.number] = label.index
        if values and (best is None or len(values) > len(best.values)):
            best = TaskMapping(str(spec.name), values, tuple(described))
    if best is None:
        found = "; ".join(
            f"segment {s.number} {s.label!r}: type {describe_code(s.property_type)}, "
            f"category {describe_code(s.category)}"
            for s in segments
        )
        names = ", ".join(str(t.name) for t in candidates)
        where = (
            f"task {names}"
            if len(candidates) == 1
            else f"any {modality or '(no modality)'} task ({names or 'none known'})"
        )
        raise CaseRefused(
            Refusal.NO_MATCHING_SEGMENTS,
            f"no segment codes match {where}: found {found or 'no segments'}"[:1000],
        )
    return best


# --- the held-out split -----------------------------------------------------------------


def split_key(store: Store, config: AppConfig) -> bytes:
    """The site's split key: configured, else generated once and kept in the store."""
    if config.cases.split_key:
        return config.cases.split_key.encode("utf-8")
    return store.meta_setdefault(SPLIT_KEY_META, secrets.token_hex(32)).encode("utf-8")


def split_position(study_uid: str, key: bytes) -> float:
    """The study's place in [0, 1) under the site's key (HMAC-SHA256)."""
    digest = hmac.new(key, study_uid.encode("ascii", "replace"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_for(study_uid: str, key: bytes, held_out_fraction: float) -> CaseSplit:
    if split_position(study_uid, key) < held_out_fraction:
        return CaseSplit.HELD_OUT
    return CaseSplit.TRAIN


# --- files ------------------------------------------------------------------------------


def cases_dir(config: AppConfig) -> Path:
    return config.storage.root / "cases"


def case_dir_for(config: AppConfig, annotation_ref: str) -> Path:
    """``<storage.root>/cases/<key>``: the key is a hash, so no DICOM value names it."""
    key = hashlib.sha256(annotation_ref.encode("utf-8")).hexdigest()[:24]
    return cases_dir(config) / key


def _write_labels(directory: Path, labels: np.ndarray, affine: np.ndarray) -> Path:
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


# --- one SEG -> one case -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SegOutcome:
    """What became of one SEG instance: a case (new or already recorded), a refusal, or
    nothing (the appliance's own output)."""

    case: CaseRecord | None = None
    refusal: CaseRefusal | None = None
    skipped: str | None = None
    existing: bool = False
    superseded: tuple[int, ...] = field(default_factory=tuple)


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
) -> SegOutcome:
    """Make one SEG instance a case, or record why not (never raises for bad input).

    ``keep_copy``: copy the SEG file next to the labels (for a CLI import; a received SEG
    stays in the spool)."""
    try:
        header = read_seg_header(seg_path)
    except SegmentationReadError as exc:
        return SegOutcome(refusal=_refuse(store, origin, Refusal.UNREADABLE, str(exc), None))
    ref = header.sop_instance_uid
    if is_appliance_output(store, header):
        if origin is CaseOrigin.DICOM:
            return SegOutcome(skipped="appliance_output")
        return SegOutcome(
            refusal=_refuse(
                store,
                origin,
                Refusal.OWN_OUTPUT,
                f"the SEG was made by this appliance (Manufacturer {header.manufacturer!r}); "
                "only annotations made or corrected elsewhere become cases",
                header,
            )
        )
    existing = store.case_by_annotation(ref) if ref else None
    if existing is not None:
        return SegOutcome(case=existing, existing=True)
    try:
        case, superseded = _seg_case(store, config, seg_path, header, origin, keep_copy)
    except CaseRefused as exc:
        return SegOutcome(
            refusal=_refuse(
                store, origin, exc.reason, exc.detail, header, source=exc.source_series_uid
            )
        )
    LOG.info(
        "case %d (%s, %s) from SEG %s of series %s: labels %s%s",
        case.id,
        case.task,
        case.split.value,
        short_ref(ref),
        short_ref(case.source_series_uid),
        ", ".join(case.labels_present) or "none",
        f"; supersedes case {', '.join(map(str, superseded))}" if superseded else "",
    )
    return SegOutcome(case=case, superseded=superseded)


def _refuse(
    store: Store,
    origin: CaseOrigin,
    reason: Refusal,
    detail: str,
    header: SegHeader | None,
    *,
    source: str | None = None,
    annotation_ref: str | None = None,
    study_uid: str | None = None,
) -> CaseRefusal:
    study = study_uid or (header.study_instance_uid if header is not None else "")
    refusal = store.record_case_refusal(
        origin,
        reason.value,
        detail,
        annotation_ref=annotation_ref or (header.sop_instance_uid if header else None),
        seg_series_uid=header.series_instance_uid if header else None,
        source_series_uid=source,
        study_ref=short_ref(study) if study else None,
    )
    # The CLI reports its refusal itself; the service logs it.
    level = logging.WARNING if origin is CaseOrigin.DICOM else logging.DEBUG
    LOG.log(level, "annotation refused (%s): %s", reason.value, detail)
    return refusal


def _seg_case(
    store: Store,
    config: AppConfig,
    seg_path: Path,
    header: SegHeader,
    origin: CaseOrigin,
    keep_copy: bool,
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
    return _record_case(
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
    )


def _record_case(
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
) -> tuple[CaseRecord, tuple[int, ...]]:
    spec = TASKS[next(t for t in TASKS if str(t) == task)]
    counts = np.bincount(labels.ravel(), minlength=spec.num_classes)
    voxels = {label.name: int(counts[label.index]) for label in spec.labels}
    if not any(voxels.values()):
        mapped = ", ".join(str(s["label"]) for s in segments if s.get("label")) or "none"
        raise CaseRefused(
            Refusal.EMPTY_LABELS,
            f"the segments that map to {task} ({mapped}) hold no voxel on the source series",
            source_series_uid=series.series_uid,
        )
    directory = case_dir_for(config, annotation_ref)
    labels_path = _write_labels(directory, labels, affine)
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
    )
    return store.add_case(case)


# --- a complete SEG series received over DICOM -------------------------------------------


@dataclass(frozen=True, slots=True)
class SeriesNote:
    """The outcome of a SEG series for the series table."""

    state: SeriesState
    reason: str | None
    detail: str | None
    result: dict[str, Any] | None


def annotate_seg_series(store: Store, config: AppConfig, seg_paths: Sequence[Path]) -> SeriesNote:
    """Every SEG instance of a complete series -> a case or a recorded refusal."""
    outcomes = [case_from_seg(store, config, path, CaseOrigin.DICOM) for path in seg_paths]
    cases = [o.case for o in outcomes if o.case is not None]
    refusals = [o.refusal for o in outcomes if o.refusal is not None]
    result: dict[str, Any] = {
        "annotation": True,
        "case_ids": [c.id for c in cases],
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


# --- NIfTI labels plus their series ---------------------------------------------------


def parse_label_map(text: str, spec: TaskSpec) -> dict[int, int]:
    """``"5=liver,6=liver tumour"`` -> ``{5: 1, 6: 2}`` (file value -> task label index).

    A label is named by its name (case, spaces, '_' and '-' ignored) or its index."""
    by_name = {_norm(label.name): label.index for label in spec.labels}
    mapping: dict[int, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        value_text, sep, label_text = part.partition("=")
        if not sep:
            raise ValueError(f"{part!r} is not VALUE=LABEL")
        try:
            value = int(value_text.strip())
        except ValueError as exc:
            raise ValueError(f"{value_text.strip()!r} in {part!r} is not an integer") from exc
        if not 1 <= value <= 65535:
            raise ValueError(f"file value {value} must be in 1..65535")
        name = _norm(label_text)
        if name.isdigit() and int(name) in by_name.values():
            index = int(name)
        elif name in by_name:
            index = by_name[name]
        else:
            known = ", ".join(f"{lb.index}={lb.name}" for lb in spec.labels)
            raise ValueError(f"{label_text.strip()!r} is not a label of {spec.name} ({known})")
        if value in mapping:
            raise ValueError(f"file value {value} is mapped twice")
        mapping[value] = index
    if not mapping:
        raise ValueError("the label map is empty")
    return mapping


def _norm(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def case_from_nifti(
    store: Store,
    config: AppConfig,
    nifti_path: Path,
    series_uid: str,
    task: str,
    label_map: Mapping[int, int] | None,
) -> SegOutcome:
    """Make a NIfTI label file on a stored series a case, or record why not.

    ``label_map``: file value -> task label index; None means the file's values are the
    task's label indices. Values the map does not name become background."""
    from appliance.cases.from_nifti import nifti_onto_grid

    spec = TASKS[next(t for t in TASKS if str(t) == task)]
    data = Path(nifti_path).read_bytes()
    identity = json.dumps([task, series_uid, sorted((label_map or {}).items())])
    annotation_ref = "nifti:" + hashlib.sha256(data + identity.encode()).hexdigest()
    existing = store.case_by_annotation(annotation_ref)
    if existing is not None:
        return SegOutcome(case=existing, existing=True)
    try:
        series = store.get_series(series_uid)
    except NotFoundError:
        return SegOutcome(
            refusal=_refuse(
                store,
                CaseOrigin.CLI,
                Refusal.SOURCE_NOT_STORED,
                f"series ref {short_ref(series_uid)} is not stored here",
                None,
                annotation_ref=annotation_ref,
            )
        )

    def refuse(reason: Refusal, detail: str) -> SegOutcome:
        return SegOutcome(
            refusal=_refuse(
                store,
                CaseOrigin.CLI,
                reason,
                detail,
                None,
                source=series_uid,
                annotation_ref=annotation_ref,
                study_uid=series.study_uid,
            )
        )

    if series.modality != spec.modality:
        return refuse(
            Refusal.MODALITY_MISMATCH,
            f"task {task} is for {spec.modality}, the series is {series.modality or '(none)'}",
        )
    paths = [
        i.path for i in store.series_instances(series_uid) if i.sop_class_uid in VOLUME_CLASSES
    ]
    try:
        grid = read_source_grid(paths)  # headers only: the cheap checks come first
    except SourceSeriesError as exc:
        return refuse(Refusal.SOURCE_NOT_A_VOLUME, str(exc))
    try:
        values = nifti_onto_grid(nifti_path, grid.affine, grid.shape)
    except CaseRefused as exc:
        return refuse(exc.reason, exc.detail)
    present = sorted(int(v) for v in np.unique(values) if v != 0)
    if label_map is None:
        known = {label.index for label in spec.labels}
        unknown = [v for v in present if v not in known]
        if unknown:
            return refuse(
                Refusal.BAD_LABEL_VALUES,
                f"values {unknown[:10]} are not labels of {task} "
                f"({', '.join(f'{lb.index}={lb.name}' for lb in spec.labels)}); give a label map "
                "such as --label-map '5=liver'",
            )
        label_map = {v: v for v in known}
    try:
        volume = load_series_volume(paths)  # trainers will load it: it must be a volume
    except VolumeError as exc:
        return refuse(Refusal.SOURCE_NOT_A_VOLUME, f"{exc.reason}: {exc.detail}")
    if volume.shape != grid.shape or not np.allclose(volume.affine, grid.affine, atol=1e-3):
        return refuse(
            Refusal.GEOMETRY_MISMATCH, "the source volume's grid differs from its headers' grid"
        )
    lookup = np.zeros(max(int(values.max(initial=0)), max(label_map)) + 1, dtype=np.uint8)
    for value, index in label_map.items():
        lookup[value] = index
    labels = lookup[values]
    segments = [
        {
            "value": value,
            "label": spec.label(label_map[value]).name if value in label_map else None,
            "label_index": label_map.get(value),
        }
        for value in present
    ]
    try:
        case, superseded = _record_case(
            store,
            config,
            task=task,
            series=series,
            labels=labels,
            affine=volume.affine,
            annotation_ref=annotation_ref,
            seg_sop_uid=None,
            origin=CaseOrigin.CLI,
            segments=segments,
        )
    except CaseRefused as exc:
        return refuse(exc.reason, exc.detail)
    shutil.copyfile(nifti_path, case.labels_path.parent / "labels_source.nii.gz")
    return SegOutcome(case=case, superseded=superseded)


# --- ingest of files given on the command line -----------------------------------------


def ingest_files(store: Store, config: AppConfig, files: Sequence[Path]) -> list[InstanceRecord]:
    """Put DICOM files into the spool and the store as if they had been received
    (calling AE ``CLI-IMPORT``); returns their records. Raises ApplianceError naming the
    file by its position when one is not a storable DICOM instance."""
    from pydicom import dcmread

    from appliance.flow.ingest import to_new_instance
    from dicom_bridge.instance import describe
    from dicom_bridge.spool import Spool, SpoolKey
    from dicom_bridge.uids import validate_uid

    spool = Spool(config.storage.spool_dir, fsync=config.storage.fsync)
    prepared = []
    for index, path in enumerate(files):
        try:
            ds = dcmread(path, stop_before_pixels=True)
            key = SpoolKey(
                validate_uid(ds.get("StudyInstanceUID"), what="StudyInstanceUID"),
                validate_uid(ds.get("SeriesInstanceUID"), what="SeriesInstanceUID"),
                validate_uid(ds.get("SOPInstanceUID"), what="SOPInstanceUID"),
            )
        except DicomBridgeError as exc:
            raise ApplianceError(f"file {index + 1} ({Path(path).name}): {exc}") from exc
        except Exception as exc:
            raise ApplianceError(
                f"file {index + 1} ({Path(path).name}) is not DICOM ({type(exc).__name__})"
            ) from exc
        prepared.append((path, ds, key))
    records = []
    for path, ds, key in prepared:
        final = spool.write(key, (Path(path).read_bytes(),))
        received = describe(
            ds,
            key=key,
            transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", "")),
            path=final,
            size=final.stat().st_size,
            calling_ae="CLI-IMPORT",
            peer_host="",
        )
        store.record_instance(to_new_instance(received))
        records.append(key.sop_uid)
    return store.instances_by_sop(records)


__all__ = [
    "CATEGORY_ALTERNATIVES",
    "PROPERTY_TYPE_ALTERNATIVES",
    "CaseRefused",
    "Refusal",
    "SegOutcome",
    "SeriesNote",
    "annotate_seg_series",
    "case_from_nifti",
    "case_from_seg",
    "ingest_files",
    "label_matches",
    "map_segments",
    "parse_label_map",
    "read_labels",
    "split_for",
    "split_key",
]
