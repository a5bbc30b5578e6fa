"""A received (or our own) DICOM SEG -> label map on the source series' volume grid.

:func:`read_seg_labelmap` reads a Segmentation (BINARY, FRACTIONAL or LABELMAP; ours or
another tool's) with highdicom and places it on the grid that
:func:`dicom_bridge.volume.load_series_volume` returns for the source files: axes
``(slice, row, column)``, slice index increasing along the image normal.

Placement is spatial, not by reference. Each SEG frame's Image Position (Patient) is mapped
through the inverse of the source grid's affine to a slice index; its orientation, pixel
spacing and matrix size must equal the source's. This is what a viewer does when it
overlays the SEG, so a SEG whose frames would be displayed on the wrong slice is caught
(the per-frame source-image references are not trusted for placement; a test compares
them with the spatial result). highdicom's own ``Segmentation.get_volume`` is not used
because it infers the slice spacing from the frames present, and a SEG that omits empty
frames may have frames two or more slices apart only.

Pixel values:

- BINARY: the frame's Referenced Segment Number where the stored value is 1;
- FRACTIONAL: the same where the stored value is at least ``fractional_threshold`` of
  Maximum Fractional Value;
- LABELMAP: the stored value is the segment number. Values of segments whose property type
  is (125040, DCM, "Background"), and the Pixel Padding Value where it describes no
  segment, become 0.

Where segments overlap, ``overlap`` decides: ``"error"`` (default) raises, ``"highest"``
keeps the highest segment number (highdicom's convention when it skips overlap checks).
Voxels outside every frame are 0. Errors are :class:`SegmentationReadError`; a source
series that is not one regular grid raises :class:`dicom_bridge.seg.SourceSeriesError`.

The frame loop (placement and per-frame checks) is :func:`frames_on_grid`, shared with
:func:`dicom_bridge.seg_annotation.place_segments`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicom_bridge.codes import CodeValue
from dicom_bridge.seg import (
    SegmentationError,
    SourceGrid,
    _functional_item,
    identifying_values,
    read_source_grid,
    redact,
    sanitized_warnings,
)

__all__ = [
    "BACKGROUND",
    "OverlapPolicy",
    "SegLabelMap",
    "SegmentInfo",
    "SegmentationReadError",
    "frames_on_grid",
    "open_seg_on_grid",
    "read_seg_labelmap",
    "segment_info",
]

#: The property type of a label map's background segment.
BACKGROUND: Final = CodeValue("DCM", "125040", "Background")
#: Largest in-plane offset of a frame from the source grid, in pixels.
_IN_PLANE_TOLERANCE: Final = 0.1
#: Largest distance of a frame from a source slice, as a fraction of the slice spacing.
_SLICE_TOLERANCE: Final = 0.1
_ORIENTATION_TOLERANCE: Final = 1e-3


class SegmentationReadError(SegmentationError):
    """A SEG cannot be read, or cannot be placed on the source grid without resampling."""


class OverlapPolicy(StrEnum):
    ERROR = "error"
    HIGHEST = "highest"


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """What a SEG says about one segment (its number is its value in the label map)."""

    number: int
    label: str
    category: CodeValue | None
    property_type: CodeValue | None
    anatomic_region: CodeValue | None
    algorithm_type: str
    algorithm_name: str | None
    algorithm_version: str | None
    algorithm_parameters: str | None


@dataclass(frozen=True, slots=True, eq=False)
class SegLabelMap:
    """The label map (axes and grid of ``load_series_volume``) and the segments in it."""

    labelmap: np.ndarray
    segments: tuple[SegmentInfo, ...]
    segmentation_type: str
    sop_instance_uid: str
    series_instance_uid: str
    content_label: str
    series_description: str
    frames_placed: int

    def segment(self, number: int) -> SegmentInfo:
        for info in self.segments:
            if info.number == number:
                return info
        raise KeyError(number)


def open_seg_on_grid(
    seg_path: Path, grid: SourceGrid
) -> tuple[hd.seg.Segmentation, str, tuple[SegmentInfo, ...], set[int]]:
    """Read the SEG at ``seg_path`` and check it can be placed on ``grid``: a supported
    SegmentationType and the source's Frame of Reference. Returns the SEG, its type, its
    segments and the numbers of the segments that describe background."""
    identifiers = identifying_values(grid.datasets[:1])
    try:
        with sanitized_warnings(identifiers):
            seg = hd.seg.segread(Path(seg_path))
    except Exception as exc:  # highdicom/pydicom raise many types for bad input
        raise SegmentationReadError(
            f"not a readable DICOM SEG ({redact(_short(exc), identifiers)})"
        ) from exc
    seg_type = str(seg.get("SegmentationType", "") or "")
    if seg_type not in ("BINARY", "FRACTIONAL", "LABELMAP"):
        raise SegmentationReadError(f"unsupported SegmentationType {seg_type!r}")
    frame_of_reference = str(seg.get("FrameOfReferenceUID", "") or "")
    if frame_of_reference != grid.frame_of_reference_uid:
        raise SegmentationReadError(
            "the SEG's Frame of Reference differs from the source series'"
            if frame_of_reference
            else "the SEG has no Frame of Reference: its frames cannot be placed"
        )
    infos = tuple(segment_info(item) for item in seg.get("SegmentSequence", []))
    background = {
        i.number for i in infos if i.property_type and BACKGROUND.same_concept(i.property_type)
    }
    return seg, seg_type, infos, background


def read_seg_labelmap(
    seg_path: Path,
    source_paths: Sequence[Path],
    *,
    overlap: OverlapPolicy | str = OverlapPolicy.ERROR,
    fractional_threshold: float = 0.5,
) -> SegLabelMap:
    """Read the SEG at ``seg_path`` onto the grid of the source series (module doc)."""
    policy = OverlapPolicy(overlap)
    grid = read_source_grid(source_paths)
    seg, seg_type, infos, background = open_seg_on_grid(seg_path, grid)
    segments = tuple(i for i in infos if i.number not in background)
    if not segments:
        raise SegmentationReadError("the SEG describes no segment")
    described = {i.number for i in segments}
    padding = seg.get("PixelPaddingValue") if seg_type == "LABELMAP" else None
    if padding is not None and int(padding) not in described:
        background.add(int(padding))
    max_number = max(described)
    dtype = np.uint8 if max_number <= 255 else np.uint16
    labelmap = np.zeros(grid.shape, dtype=dtype)
    placed = 0
    for frame in frames_on_grid(
        seg, seg_type, grid, described, background, fractional_threshold=fractional_threshold
    ):
        _paint(labelmap[frame.slice_index], frame.numbers, policy)
        placed += 1
    return SegLabelMap(
        labelmap=labelmap,
        segments=segments,
        segmentation_type=seg_type,
        sop_instance_uid=str(seg.SOPInstanceUID),
        series_instance_uid=str(seg.SeriesInstanceUID),
        content_label=str(seg.get("ContentLabel", "") or ""),
        series_description=str(seg.get("SeriesDescription", "") or ""),
        frames_placed=placed,
    )


@dataclass(frozen=True, slots=True, eq=False)
class FrameOnGrid:
    """One SEG frame placed on the source grid: its index in the SEG (0-based), the source
    slice it lies on, and the segment number of each of its pixels (0: none)."""

    index: int
    slice_index: int
    numbers: np.ndarray


def frames_on_grid(
    seg: hd.seg.Segmentation,
    seg_type: str,
    grid: SourceGrid,
    described: set[int],
    background: set[int],
    *,
    fractional_threshold: float = 0.5,
) -> Iterator[FrameOnGrid]:
    """The frames of ``seg`` (from :func:`open_seg_on_grid`) that lie on ``grid``, in
    frame order, each checked: its plane is on a source slice (orientation, pixel spacing,
    matrix; not between slices, not shifted in-plane), it decodes, a segmented frame is not
    outside the source series, and every value is a ``described`` segment. An empty frame
    beyond the series is skipped. Raises :class:`SegmentationReadError`."""
    identifiers = identifying_values(grid.datasets[:1])
    n_frames = int(seg.get("NumberOfFrames", 1) or 1)
    inverse = np.linalg.inv(grid.affine)
    for index in range(n_frames):
        k = _slice_of_frame(seg, index, grid, inverse)
        try:
            stored = np.asarray(seg.get_stored_frame(index + 1))
        except Exception as exc:  # decoders raise many types
            raise SegmentationReadError(
                f"frame {index + 1} of the SEG cannot be decoded "
                f"({redact(_short(exc), identifiers)})"
            ) from exc
        numbers = _frame_labels(seg, seg_type, index, stored, fractional_threshold, background)
        present = numbers != 0
        if not 0 <= k < grid.shape[0]:
            if present.any():
                raise SegmentationReadError(
                    f"frame {index + 1} is segmented but lies outside the source series "
                    f"(slice position {k} of 0..{grid.shape[0] - 1})"
                )
            continue  # an empty frame beyond the series: nothing to place
        if present.any():
            undescribed = set(np.unique(numbers[present]).tolist()) - described
            if undescribed:
                raise SegmentationReadError(
                    f"frame {index + 1} has pixel values {sorted(undescribed)[:5]} that no "
                    "segment describes"
                )
        yield FrameOnGrid(index, k, numbers)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _code(item: Dataset, keyword: str) -> CodeValue | None:
    seq = item.get(keyword)
    if not seq:
        return None
    try:
        return CodeValue.from_coded(seq[0])
    except (AttributeError, ValueError):
        return None


def segment_info(item: Dataset) -> SegmentInfo:
    algorithm: Any = (item.get("SegmentationAlgorithmIdentificationSequence") or [None])[0]

    def text(keyword: str) -> str | None:
        value = algorithm.get(keyword) if algorithm is not None else None
        return str(value) if value not in (None, "") else None

    return SegmentInfo(
        number=int(item.SegmentNumber),
        label=str(item.get("SegmentLabel", "") or ""),
        category=_code(item, "SegmentedPropertyCategoryCodeSequence"),
        property_type=_code(item, "SegmentedPropertyTypeCodeSequence"),
        anatomic_region=_code(item, "AnatomicRegionSequence"),
        algorithm_type=str(item.get("SegmentAlgorithmType", "") or ""),
        algorithm_name=text("AlgorithmName"),
        algorithm_version=text("AlgorithmVersion"),
        algorithm_parameters=text("AlgorithmParameters"),
    )


def _slice_of_frame(seg: Dataset, index: int, grid: SourceGrid, inverse: np.ndarray) -> int:
    """The source slice index of a SEG frame's plane (may be outside ``0..slices-1``)."""
    try:
        position = np.array(
            [
                float(v)
                for v in _functional_item(seg, index, "PlanePositionSequence").ImagePositionPatient
            ]
        )
        orientation = np.array(
            [
                float(v)
                for v in _functional_item(
                    seg, index, "PlaneOrientationSequence"
                ).ImageOrientationPatient
            ]
        )
        spacing = np.array(
            [float(v) for v in _functional_item(seg, index, "PixelMeasuresSequence").PixelSpacing]
        )
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise SegmentationReadError(
            f"frame {index + 1} of the SEG has no usable plane position, orientation or "
            f"pixel spacing ({_short(exc)})"
        ) from exc
    if (int(seg.Rows), int(seg.Columns)) != grid.shape[1:]:
        raise SegmentationReadError(
            f"the SEG frames are {seg.Rows}x{seg.Columns}, the source images "
            f"{grid.shape[1]}x{grid.shape[2]}: resampling is not supported"
        )
    if np.abs(orientation - grid.orientation).max() > _ORIENTATION_TOLERANCE:
        raise SegmentationReadError(
            f"frame {index + 1} is oriented differently from the source images"
        )
    if np.abs(spacing - np.array(grid.spacing[1:])).max() > 1e-3 * max(grid.spacing[1:]):
        raise SegmentationReadError(
            f"frame {index + 1} has a different pixel spacing from the source images"
        )
    k, i, j = (inverse @ np.append(position, 1.0))[:3]
    if abs(i) > _IN_PLANE_TOLERANCE or abs(j) > _IN_PLANE_TOLERANCE:
        raise SegmentationReadError(
            f"frame {index + 1} is shifted in-plane by ({i:.2f}, {j:.2f}) pixels from the "
            "source images"
        )
    slice_index = round(float(k))
    if abs(k - slice_index) > _SLICE_TOLERANCE:
        raise SegmentationReadError(
            f"frame {index + 1} lies at slice position {k:.2f}, between source slices"
        )
    return slice_index


def _frame_labels(
    seg: Dataset,
    seg_type: str,
    index: int,
    stored: np.ndarray,
    threshold: float,
    background: set[int],
) -> np.ndarray:
    """The segment number of every pixel of one frame (0: none)."""
    if seg_type == "LABELMAP":
        values = stored.astype(np.int64, copy=True)
        for number in background:
            values[values == number] = 0
        return values
    try:
        item = _functional_item(seg, index, "SegmentIdentificationSequence")
        number = int(item.ReferencedSegmentNumber)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise SegmentationReadError(
            f"frame {index + 1} of the SEG names no segment ({_short(exc)})"
        ) from exc
    if seg_type == "FRACTIONAL":
        maximum = float(seg.get("MaximumFractionalValue", 255) or 255)
        on = stored.astype(np.float64) >= threshold * maximum
    else:
        on = stored != 0
    return np.where(on, number, 0)


def _paint(target: np.ndarray, values: np.ndarray, policy: OverlapPolicy) -> None:
    """Write the non-zero ``values`` into ``target`` (one slice of the label map)."""
    present = values != 0
    if not present.any():
        return
    clash = present & (target != 0) & (target != values)
    if clash.any():
        if policy is OverlapPolicy.ERROR:
            pairs = sorted(
                {(int(a), int(b)) for a, b in zip(target[clash], values[clash], strict=True)}
            )
            raise SegmentationReadError(
                f"segments overlap (segment pairs {pairs[:5]}); a label map cannot hold "
                "overlapping segments (overlap='highest' keeps the highest number)"
            )
        values = np.where(present, np.maximum(values, target), 0)
    target[present] = values[present]
