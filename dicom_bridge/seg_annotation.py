"""A received SEG as an annotation: what it says (header), and its segments on a source grid.

Two steps, so that the layer above can decide which segments mean what in between:

1. :func:`read_seg_header` reads the SEG's header only (no pixel data): identity, Frame
   of Reference, the source series and instances it references, provenance
   (Manufacturer, algorithm names) and the coded concepts of each segment.
2. :func:`place_segments` paints chosen segments onto the grid of the source series
   (the grid of :func:`dicom_bridge.volume.load_series_volume`), each as the value the
   caller assigns it. It applies the same geometric rules as
   :func:`dicom_bridge.seg_reader.read_seg_labelmap` (same Frame of Reference; each
   frame's orientation, pixel spacing and matrix equal to the source's; each frame on a
   source slice, not between slices or shifted in-plane): its frame loop is the reader's
   own, :func:`dicom_bridge.seg_reader.frames_on_grid`.
   Where chosen segments overlap (a BINARY SEG may draw a tumour inside the liver
   segment), the higher assigned value wins, whatever the segment numbers.

:func:`codes_equivalent` compares coded concepts the way DICOM does across the SNOMED
transition: a retired SNOMED-RT code (scheme ``SRT``, e.g. ``T-62000`` "Liver", which
dcmqi still writes) equals its SNOMED CT code (``SCT 10200004``). The translation is
pydicom's own table (``pydicom.sr.coding.Code`` equality, from DICOM PS3.16), not a
hand-written list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from dicom_bridge.codes import CodeValue
from dicom_bridge.seg import SourceGrid, read_source_grid
from dicom_bridge.seg_reader import (
    BACKGROUND,
    SegmentationReadError,
    SegmentInfo,
    frames_on_grid,
    open_seg_on_grid,
    segment_info,
)
from dicom_bridge.sop_classes import SEGMENTATION_CLASSES

__all__ = [
    "PlacedSegments",
    "SegHeader",
    "codes_equivalent",
    "place_segments",
    "read_seg_header",
]


@dataclass(frozen=True, slots=True)
class SegHeader:
    """What a SEG says about itself, without pixel data and without patient data."""

    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    frame_of_reference_uid: str
    segmentation_type: str
    number_of_frames: int
    manufacturer: str
    content_label: str
    series_description: str
    #: Series Instance UIDs of ReferencedSeriesSequence (the SEG's source series).
    referenced_series_uids: tuple[str, ...]
    #: SOP Instance UIDs the SEG references (ReferencedSeriesSequence and the frames'
    #: Derivation Image / Source Image Sequences), in first-seen order.
    referenced_instance_uids: tuple[str, ...]
    #: The described segments, background segments of a label map excluded.
    segments: tuple[SegmentInfo, ...]

    @property
    def algorithm_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.algorithm_name for s in self.segments if s.algorithm_name))


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def read_seg_header(path: Path) -> SegHeader:
    """Read the header of the SEG at ``path``; :class:`SegmentationReadError` if it is
    not a readable Segmentation."""
    try:
        ds = dcmread(Path(path), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types for bad input
        raise SegmentationReadError(f"not a readable DICOM file ({type(exc).__name__})") from exc
    sop_class = _text(ds, "SOPClassUID")
    if sop_class not in SEGMENTATION_CLASSES:
        raise SegmentationReadError(f"SOP class {sop_class or '(none)'} is not a Segmentation")
    try:
        infos = tuple(segment_info(item) for item in ds.get("SegmentSequence") or [])
    except (AttributeError, TypeError, ValueError) as exc:
        raise SegmentationReadError(f"the Segment Sequence cannot be read ({exc})") from exc
    segments = tuple(
        i for i in infos if not (i.property_type and BACKGROUND.same_concept(i.property_type))
    )
    series: list[str] = []
    instances: list[str] = []
    for item in ds.get("ReferencedSeriesSequence") or []:
        uid = _text(item, "SeriesInstanceUID")
        if uid:
            series.append(uid)
        for ref in item.get("ReferencedInstanceSequence") or []:
            instances.append(_text(ref, "ReferencedSOPInstanceUID"))
    for ref in ds.get("SourceImageSequence") or []:
        instances.append(_text(ref, "ReferencedSOPInstanceUID"))
    for frame in ds.get("PerFrameFunctionalGroupsSequence") or []:
        for derivation in frame.get("DerivationImageSequence") or []:
            for ref in derivation.get("SourceImageSequence") or []:
                instances.append(_text(ref, "ReferencedSOPInstanceUID"))
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    return SegHeader(
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        sop_class_uid=sop_class,
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        segmentation_type=_text(ds, "SegmentationType"),
        number_of_frames=frames,
        manufacturer=_text(ds, "Manufacturer"),
        content_label=_text(ds, "ContentLabel"),
        series_description=_text(ds, "SeriesDescription"),
        referenced_series_uids=tuple(dict.fromkeys(series)),
        referenced_instance_uids=tuple(dict.fromkeys(i for i in instances if i)),
        segments=segments,
    )


def _as_code(code: Any) -> Code:
    if isinstance(code, CodeValue):
        return Code(code.value, code.scheme, code.meaning)
    value = CodeValue.from_coded(code)
    return Code(value.value, value.scheme, value.meaning)


def codes_equivalent(a: Any, b: Any) -> bool:
    """True when two coded concepts (CodeValue, highdicom CodedConcept, pydicom Code, or
    anything with scheme/value/meaning) name the same concept, a retired SNOMED-RT (SRT)
    code being equal to its SNOMED CT (SCT) code. None equals nothing."""
    if a is None or b is None:
        return False
    return bool(_as_code(a) == _as_code(b))


@dataclass(frozen=True, slots=True, eq=False)
class PlacedSegments:
    """Chosen segments on the source grid: ``labels`` holds the assigned values (0 where
    no chosen segment is), axes ``(slice, row, column)``; ``affine`` index -> LPS mm."""

    labels: np.ndarray
    affine: np.ndarray
    frames_placed: int


def place_segments(
    seg_path: Path,
    source_paths: Sequence[Path],
    values: Mapping[int, int],
    *,
    fractional_threshold: float = 0.5,
    grid: SourceGrid | None = None,
) -> PlacedSegments:
    """Paint the segments ``values`` names (segment number -> value in 1..255) onto the
    grid of the source series; other segments are left out (module doc for the rules).

    Raises :class:`SegmentationReadError` when the SEG cannot be read or placed, and
    :class:`dicom_bridge.seg.SourceSeriesError` when the source is not one regular grid.
    """
    if not values or any(not 1 <= v <= 255 for v in values.values()):
        raise ValueError("values must map segment numbers to label values in 1..255")
    grid = grid if grid is not None else read_source_grid(source_paths)
    seg, seg_type, infos, background = open_seg_on_grid(seg_path, grid)
    described = {i.number for i in infos} - background
    unknown = sorted(set(values) - described)
    if unknown:
        raise SegmentationReadError(f"the SEG describes no segment {unknown}")
    padding = seg.get("PixelPaddingValue") if seg_type == "LABELMAP" else None
    if padding is not None and int(padding) not in described:
        background.add(int(padding))
    lookup = np.zeros(max(max(described, default=0), 255) + 1, dtype=np.uint8)
    for number, value in values.items():
        lookup[number] = value
    labels = np.zeros(grid.shape, dtype=np.uint8)
    placed = 0
    for frame in frames_on_grid(
        seg, seg_type, grid, described, background, fractional_threshold=fractional_threshold
    ):
        k = frame.slice_index
        np.maximum(labels[k], lookup[frame.numbers], out=labels[k])
        placed += 1
    return PlacedSegments(labels=labels, affine=grid.affine.copy(), frames_placed=placed)
