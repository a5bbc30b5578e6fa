"""Measurement report: a TID 1500 Comprehensive 3D SR (highdicom) that references a SEG.

:func:`write_sr` measures the mask that the SEG was written from and returns a
:class:`highdicom.sr.Comprehensive3DSR` with one "Volumetric ROI Measurements" group
(TID 1411) per segment. Each group references its segment in the SEG (by SOP Instance UID
and segment number, with the source series), names the finding with the segment's coded
category and type (and anatomic region as finding site), identifies the model (TID 4019:
name, version, family "Artificial Intelligence", parameters ``weights_sha256=...``,
``federated_round=...``, ``research_only=...``) and holds:

- **Volume** (SCT 118565006) in UCUM ``cm3`` (1 cm3 = 1 mL), method "Sum of segmented
  voxel method for volume" (DCM 126030): voxel count x voxel volume, where the voxel volume
  is ``|det(affine[:3, :3])|``.
- For lesion segments only (category "Morphologically Abnormal Structure", SCT 49755003):
  **Number of lesions** (SCT 246206008, unit ``1``): the connected components of the
  segment, voxels being connected through faces, edges and corners (26-connectivity;
  ``connectivity=6`` for faces only). And **Diameter** (SCT 81827009) with derivation
  **Maximum** (SCT 56851009), in mm: the largest lesion is the component with the most
  voxels (ties: the first in slice/row/column order), and its diameter is the largest
  Euclidean distance between the centres of two of its voxels, in patient space (so a
  one-voxel lesion measures 0 mm; anisotropic spacing is accounted for). It is computed
  exactly: the farthest pair of a voxel set lies on its convex hull, whose vertices are
  among the per-slice 2D hull vertices of the first and last voxel of each row run. The
  definition is repeated in the measurement's algorithm parameters, so a reader of the
  SR sees it. With no lesion, the count is 0 and no diameter is given.

The mask is a label map or, for overlapping segments, one binary mask per segment
(:mod:`dicom_bridge.segment_masks`); every segment is measured on its own voxels, so a
voxel shared by overlapping segments counts in each of them.

Research-use labelling of the SR: SeriesDescription starts with
:data:`dicom_bridge.seg.RESEARCH_MARKER`; PreliminaryFlag is ``PRELIMINARY`` and
VerificationFlag ``UNVERIFIED``; the contributing-equipment item carries the provenance
sentence of :func:`dicom_bridge.seg.provenance_sentence`; the algorithm parameters say
``research_only=true``. The observer is the device (the appliance) with the model name and
version as its model name.

Connected components are computed here with numpy (no scipy in the appliance): runs of
set voxels along each row, joined where runs on neighbouring rows overlap, merged by a
vectorised union-find.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dicom_codes
from pydicom.uid import generate_uid

from dicom_bridge.codes import (
    CT_UNSPECIFIED_BODY_REGION,
    CUBIC_CENTIMETER,
    DIAMETER,
    MAXIMUM,
    MILLIMETER,
    MRI_UNSPECIFIED_BODY_REGION,
    NO_UNITS,
    NUMBER_OF_LESIONS,
    SUM_OF_SEGMENTED_VOXELS,
    VOLUME,
    CodeValue,
)
from dicom_bridge.errors import DicomBridgeError, InvalidUIDError
from dicom_bridge.patient import sanitized_sources
from dicom_bridge.seg import (
    AlgorithmInfo,
    SegmentDescription,
    identifying_values,
    processing_equipment,
    provenance_sentence,
    redact,
    sanitized_warnings,
    series_description,
)
from dicom_bridge.segment_masks import SegmentMasks, is_segment_masks
from dicom_bridge.sop_classes import (
    CT_IMAGE,
    ENHANCED_CT,
    ENHANCED_MR,
    LEGACY_ENHANCED_CT,
    LEGACY_ENHANCED_MR,
    MR_IMAGE,
    SEGMENTATION_CLASSES,
)
from dicom_bridge.uids import validate_uid

__all__ = [
    "DIAMETER_DEFINITION",
    "LesionStatistics",
    "ReportWriteError",
    "SegmentMeasurements",
    "SrOptions",
    "lesion_statistics",
    "measure_segments",
    "write_sr",
]

DIAMETER_DEFINITION: Final = (
    "diameter=largest distance between voxel centres of the largest lesion "
    "(connected component with most voxels)"
)
_CT_CLASSES: Final = frozenset({CT_IMAGE, ENHANCED_CT, LEGACY_ENHANCED_CT})
_MR_CLASSES: Final = frozenset({MR_IMAGE, ENHANCED_MR, LEGACY_ENHANCED_MR})
_IMAGING_PROCEDURE: Final = CodeValue("SCT", "363679005", "Imaging procedure")


class ReportWriteError(DicomBridgeError, ValueError):
    """The measurement report cannot be written from these inputs."""


@dataclass(frozen=True, slots=True)
class SrOptions:
    """How the SR is written."""

    research_only: bool = True
    manufacturer: str = "SegAppliance"
    manufacturer_model_name: str = "seg-appliance"
    device_serial_number: str = "1"
    device_uid: str | None = None  # the appliance's observer UID; generated when None
    series_number: int = 9902
    instance_number: int = 1
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    connectivity: int = 26
    procedure_reported: CodeValue | None = None  # from the source modality when None
    institution_name: str | None = None

    def __post_init__(self) -> None:
        if self.connectivity not in (6, 26):
            raise ReportWriteError("connectivity must be 6 (faces) or 26 (faces, edges, corners)")
        for uid in (self.series_instance_uid, self.sop_instance_uid, self.device_uid):
            if uid is not None:
                try:
                    validate_uid(uid)
                except InvalidUIDError as exc:
                    raise ReportWriteError(f"SrOptions: {exc}") from exc


@dataclass(frozen=True, slots=True)
class LesionStatistics:
    """Connected components of one binary mask."""

    count: int
    largest_voxels: int
    largest_diameter_mm: float | None  # None when there is no lesion


@dataclass(frozen=True, slots=True)
class SegmentMeasurements:
    """What the SR reports for one segment."""

    label_index: int
    label: str
    voxel_count: int
    volume_ml: float
    lesions: LesionStatistics | None  # lesion segments only


def measure_segments(
    mask: np.ndarray,
    affine: np.ndarray,
    segments: Sequence[SegmentDescription],
    *,
    connectivity: int = 26,
) -> tuple[SegmentMeasurements, ...]:
    """Volume of every segment, and lesion count and diameter of the lesion segments.

    ``mask`` is a label map ``(slice, row, column)`` or segment masks ``(S, slice, row,
    column)`` (:mod:`dicom_bridge.segment_masks`); with segment masks every segment is
    measured on its own mask, so a voxel shared by overlapping segments counts in each."""
    affine = _check_affine(affine)
    stack: SegmentMasks | None = None
    if is_segment_masks(mask):
        stack = SegmentMasks.from_array(
            mask, [s.label_index for s in segments], error=ReportWriteError
        )
    elif mask.ndim != 3:
        raise ReportWriteError(
            "mask must be a 3D label map (slice, row, column) or 4D segment masks "
            "(segment, slice, row, column)"
        )
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    counts = np.zeros(0, dtype=np.int64)
    if stack is None:
        # Measured inside the box of the labelled voxels (a few percent of a CT): counts,
        # components and diameters do not depend on where the box sits.
        mask = _labelled_box(np.asarray(mask))
        counts = np.bincount(mask.ravel().astype(np.int64, copy=False))
    out = []
    for segment in sorted(segments, key=lambda s: s.label_index):
        if stack is None:
            binary = mask == segment.label_index
            n = int(counts[segment.label_index]) if segment.label_index < counts.size else 0
        else:
            binary = stack.segment(segment.label_index)
            n = stack.voxel_count(segment.label_index)
        lesions = (
            lesion_statistics(binary, affine, connectivity=connectivity)
            if segment.is_lesion
            else None
        )
        out.append(
            SegmentMeasurements(
                label_index=segment.label_index,
                label=segment.label,
                voxel_count=n,
                volume_ml=n * voxel_ml,
                lesions=lesions,
            )
        )
    return tuple(out)


def _labelled_box(mask: np.ndarray) -> np.ndarray:
    """``mask`` cut to the bounding box of its non-zero voxels (one empty voxel when there
    are none)."""
    labelled = mask != 0
    slices = np.flatnonzero(labelled.any(axis=(1, 2)))
    if slices.size == 0:
        return np.zeros((1, 1, 1), dtype=mask.dtype)
    labelled = labelled[slices[0] : slices[-1] + 1]
    rows = np.flatnonzero(labelled.any(axis=(0, 2)))
    columns = np.flatnonzero(labelled.any(axis=(0, 1)))
    return mask[slices[0] : slices[-1] + 1, rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]


def write_sr(
    seg: Dataset | Path,
    mask: np.ndarray,
    affine: np.ndarray,
    segments: Sequence[SegmentDescription],
    algorithm: AlgorithmInfo,
    options: SrOptions | None = None,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of ``mask`` (the label map or segment masks written into
    ``seg``; see :func:`measure_segments`)."""
    options = options or SrOptions()
    seg_ds = seg if isinstance(seg, Dataset) else dcmread(Path(seg), stop_before_pixels=True)
    if str(seg_ds.get("SOPClassUID", "")) not in SEGMENTATION_CLASSES:
        raise ReportWriteError("the referenced object is not a DICOM Segmentation")
    if mask.ndim not in (3, 4) or tuple(mask.shape[-2:]) != (
        int(seg_ds.Rows),
        int(seg_ds.Columns),
    ):
        raise ReportWriteError("mask rows/columns do not match the SEG")
    described = {int(item.SegmentNumber) for item in seg_ds.SegmentSequence}
    missing = sorted({s.label_index for s in segments} - described)
    if missing:
        raise ReportWriteError(f"segments {missing} are not described in the SEG")
    try:
        source_series = str(seg_ds.ReferencedSeriesSequence[0].SeriesInstanceUID)
    except (AttributeError, IndexError) as exc:
        raise ReportWriteError("the SEG references no source series") from exc
    measured = measure_segments(mask, affine, segments, connectivity=options.connectivity)
    identifiers = identifying_values([seg_ds])
    (evidence,) = sanitized_sources([seg_ds])  # invalid patient values: fixed or dropped
    try:
        with sanitized_warnings(identifiers):
            return _report(evidence, source_series, segments, measured, algorithm, options)
    except (ValueError, TypeError, AttributeError) as exc:
        text = redact(" ".join(str(exc).split())[:300], identifiers)
        raise ReportWriteError(f"highdicom refused the SR: {type(exc).__name__}: {text}") from exc


def _report(
    seg_ds: Dataset,
    source_series: str,
    segments: Sequence[SegmentDescription],
    measured: Sequence[SegmentMeasurements],
    algorithm: AlgorithmInfo,
    options: SrOptions,
) -> hd.sr.Comprehensive3DSR:
    parameters = [f"{k}={v}" for k, v in algorithm.parameters(options.research_only).items()]
    family = algorithm.family.to_coded_concept()
    algorithm_id = hd.sr.AlgorithmIdentification(
        name=algorithm.name, version=algorithm.version, parameters=parameters, family=family
    )
    diameter_algorithm = hd.sr.AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=[*parameters, DIAMETER_DEFINITION, f"connectivity={options.connectivity}"],
        family=family,
    )
    by_index = {s.label_index: s for s in segments}
    groups = [
        _roi_group(
            seg_ds, source_series, by_index[m.label_index], m, algorithm_id, diameter_algorithm
        )
        for m in measured
    ]
    observer = hd.sr.ObserverContext(
        observer_type=dicom_codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=options.device_uid or generate_uid(),
            name=options.manufacturer_model_name,
            manufacturer_name=options.manufacturer,
            model_name=f"{algorithm.name} {algorithm.version}"[:64],
            serial_number=options.device_serial_number,
        ),
    )
    procedure = options.procedure_reported or _procedure(seg_ds)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=procedure.to_coded_concept(),
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[seg_ds],
        content=report[0],
        series_instance_uid=options.series_instance_uid or generate_uid(),
        series_number=options.series_number,
        sop_instance_uid=options.sop_instance_uid or generate_uid(),
        instance_number=options.instance_number,
        manufacturer=options.manufacturer,
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=options.institution_name,
        series_description=series_description(algorithm, options.research_only, "SR"),
        contributing_equipment=[
            processing_equipment(
                options.manufacturer,
                algorithm,
                provenance_sentence(algorithm, options.research_only),
            )
        ],
    )


def _check_affine(affine: np.ndarray) -> np.ndarray:
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise ReportWriteError("affine must be a finite 4x4 matrix")
    if abs(float(np.linalg.det(matrix[:3, :3]))) < 1e-12:
        raise ReportWriteError("affine is singular")
    return matrix


def _procedure(seg_ds: Dataset) -> CodeValue:
    classes = {
        str(inst.ReferencedSOPClassUID)
        for series in seg_ds.get("ReferencedSeriesSequence", [])
        for inst in series.get("ReferencedInstanceSequence", [])
    }
    if classes and classes <= _CT_CLASSES:
        return CT_UNSPECIFIED_BODY_REGION
    if classes and classes <= _MR_CLASSES:
        return MRI_UNSPECIFIED_BODY_REGION
    return _IMAGING_PROCEDURE


def _roi_group(
    seg_ds: Dataset,
    source_series: str,
    segment: SegmentDescription,
    measured: SegmentMeasurements,
    algorithm_id: hd.sr.AlgorithmIdentification,
    diameter_algorithm: hd.sr.AlgorithmIdentification,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    measurements = [
        hd.sr.Measurement(
            name=VOLUME.to_coded_concept(),
            value=round(measured.volume_ml, 4),
            unit=CUBIC_CENTIMETER.to_coded_concept(),
            method=SUM_OF_SEGMENTED_VOXELS.to_coded_concept(),
            algorithm_id=algorithm_id,
        )
    ]
    if measured.lesions is not None:
        measurements.append(
            hd.sr.Measurement(
                name=NUMBER_OF_LESIONS.to_coded_concept(),
                value=measured.lesions.count,
                unit=NO_UNITS.to_coded_concept(),
                algorithm_id=algorithm_id,
            )
        )
        if measured.lesions.largest_diameter_mm is not None:
            measurements.append(
                hd.sr.Measurement(
                    name=DIAMETER.to_coded_concept(),
                    value=round(measured.lesions.largest_diameter_mm, 2),
                    unit=MILLIMETER.to_coded_concept(),
                    derivation=MAXIMUM.to_coded_concept(),
                    algorithm_id=diameter_algorithm,
                )
            )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(),
            identifier=f"{segment.label} (segment {segment.label_index})"[:64],
        ),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=str(seg_ds.SOPClassUID),
            sop_instance_uid=str(seg_ds.SOPInstanceUID),
            segment_number=segment.label_index,
            source_series=hd.sr.SourceSeriesForSegmentation(source_series),
        ),
        finding_type=segment.property_type.to_coded_concept(),
        finding_category=segment.category.to_coded_concept(),
        finding_sites=(
            [hd.sr.FindingSite(segment.anatomic_region.to_coded_concept())]
            if segment.anatomic_region
            else None
        ),
        measurements=measurements,
    )


# --- connected components -------------------------------------------------------------------


def lesion_statistics(
    binary: np.ndarray, affine: np.ndarray, *, connectivity: int = 26
) -> LesionStatistics:
    """Number of connected components, and the diameter of the largest (module doc)."""
    if connectivity not in (6, 26):
        raise ReportWriteError("connectivity must be 6 or 26")
    affine = _check_affine(affine)
    runs = _runs(np.asarray(binary, dtype=bool))
    if runs.line.size == 0:
        return LesionStatistics(count=0, largest_voxels=0, largest_diameter_mm=None)
    component = _components(runs, binary.shape, connectivity)
    lengths = runs.end - runs.start
    sizes = np.bincount(component, weights=lengths).astype(np.int64)
    largest = int(np.argmax(sizes))  # first maximum: the earliest in scan order
    chosen = component == largest
    diameter = _max_diameter(
        runs.line[chosen], runs.start[chosen], runs.end[chosen] - 1, binary.shape, affine
    )
    return LesionStatistics(
        count=int(sizes.size), largest_voxels=int(sizes[largest]), largest_diameter_mm=diameter
    )


@dataclass(frozen=True, slots=True)
class _Runs:
    """Maximal runs of set voxels along the column axis, in scan order."""

    line: np.ndarray  # slice * rows + row
    start: np.ndarray  # first column
    end: np.ndarray  # one past the last column


def _runs(binary: np.ndarray) -> _Runs:
    slices, rows, columns = binary.shape
    flat = binary.reshape(slices * rows, columns)
    lines = np.flatnonzero(flat.any(axis=1))
    if lines.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _Runs(empty, empty, empty)
    padded = np.zeros((lines.size, columns + 2), dtype=np.int8)
    padded[:, 1:-1] = flat[lines]
    steps = np.diff(padded, axis=1)
    start_line, start_col = np.nonzero(steps == 1)
    _, end_col = np.nonzero(steps == -1)  # row-major order pairs each start with its end
    return _Runs(lines[start_line].astype(np.int64), start_col.astype(np.int64), end_col)


def _components(runs: _Runs, shape: tuple[int, ...], connectivity: int) -> np.ndarray:
    """Component index (0..n-1, numbered in scan order) of every run."""
    slices, rows, columns = shape
    width = columns + 3  # keys of different lines never interleave
    ext = 1 if connectivity == 26 else 0
    offsets = [(0, 1), (1, -1), (1, 0), (1, 1)] if connectivity == 26 else [(0, 1), (1, 0)]
    key_start = runs.line * width + runs.start
    key_end = runs.line * width + runs.end
    s, r = np.divmod(runs.line, rows)
    sources, targets = [], []
    for ds, dr in offsets:
        valid = (s + ds < slices) & (r + dr >= 0) & (r + dr < rows)
        a = np.flatnonzero(valid)
        target_line = runs.line[a] + ds * rows + dr
        # runs b on the target line with end_b + ext > start_a and start_b < end_a + ext
        lo = np.searchsorted(key_end, target_line * width + runs.start[a] - ext, side="right")
        hi = np.searchsorted(key_start, target_line * width + runs.end[a] + ext, side="left")
        counts = np.maximum(hi - lo, 0)
        total = int(counts.sum())
        if total == 0:
            continue
        first = np.repeat(lo, counts)
        within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        sources.append(np.repeat(a, counts))
        targets.append(first + within)
    parent = np.arange(runs.line.size)
    if sources:
        u = np.concatenate(sources)
        v = np.concatenate(targets)
        while True:
            pu, pv = parent[u], parent[v]
            differ = pu != pv
            if not differ.any():
                break
            low = np.minimum(pu[differ], pv[differ])
            high = np.maximum(pu[differ], pv[differ])
            np.minimum.at(parent, high, low)  # hook each root under a smaller root
            while True:  # compress: every run points at its root
                grand = parent[parent]
                if np.array_equal(grand, parent):
                    break
                parent = grand
    _, component = np.unique(parent, return_inverse=True)
    return component.astype(np.int64)


def _max_diameter(
    line: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    shape: tuple[int, ...],
    affine: np.ndarray,
) -> float:
    """Largest distance in mm between centres of the voxels covered by these runs."""
    rows = shape[1]
    # Per row, only the leftmost and rightmost voxel can be a hull vertex.
    unique_lines, inverse = np.unique(line, return_inverse=True)
    lo = np.full(unique_lines.size, np.iinfo(np.int64).max)
    hi = np.full(unique_lines.size, -1)
    np.minimum.at(lo, inverse, first)
    np.maximum.at(hi, inverse, last)
    s, r = np.divmod(unique_lines, rows)
    candidates: list[np.ndarray] = []
    for slice_index in np.unique(s):
        pick = s == slice_index
        points = np.concatenate(
            [np.column_stack([r[pick], lo[pick]]), np.column_stack([r[pick], hi[pick]])]
        )
        hull = _hull_2d(points)
        candidates.append(np.column_stack([np.full(len(hull), slice_index), hull]))
    index_points = np.unique(np.concatenate(candidates), axis=0).astype(np.float64)
    world = index_points @ affine[:3, :3].T
    world -= world.mean(axis=0)  # centred: |a|^2 + |b|^2 - 2 a.b loses no precision
    squared = (world**2).sum(axis=1)
    best = 0.0
    chunk = max(1, 2_000_000 // max(1, len(world)))
    for begin in range(0, len(world), chunk):
        block = world[begin : begin + chunk]
        d2 = squared[begin : begin + chunk, None] + squared[None, :] - 2.0 * (block @ world.T)
        best = max(best, float(d2.max()))
    return float(np.sqrt(max(best, 0.0)))


def _hull_2d(points: np.ndarray) -> np.ndarray:
    """Vertices of the convex hull of integer 2D points (Andrew's monotone chain)."""
    pts = np.unique(points, axis=0)  # sorted by x, then y
    if len(pts) <= 2:
        return pts
    plist = [(int(x), int(y)) for x, y in pts]

    def cross(o: tuple[int, int], a: tuple[int, int], b: tuple[int, int]) -> int:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[int, int]] = []
    for p in plist:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[int, int]] = []
    for p in reversed(plist):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return np.array(lower[:-1] + upper[:-1], dtype=np.int64)
