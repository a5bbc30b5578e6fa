"""Mask -> Secondary Capture overlay series: the source slices with each segment's outline
burned in, for PACS viewers that show neither SEG nor RTSTRUCT.

:func:`write_sc_overlays` returns one single-frame Secondary Capture image (highdicom
``SCImage``, RGB, 8 bits) per slice that carries a segment, all in one new series of the
source study. Each image is the source slice, windowed to grey (CT: the source's first
WindowCenter/WindowWidth, else an abdominal window of 40/400 HU; MR and others: the 1st
to 99th percentile of the slice's own values), with:

- each segment's outline (the segment's pixels that touch a pixel outside it, thickened
  to about 1/256 of the image width) in the segment's colour;
- a banner at the top: ``RESEARCH USE ONLY - NOT FOR DIAGNOSIS`` (unless the site
  configured clinical use), the model name and version, and a legend (a colour swatch
  and the label of each segment present on the slice).

No patient data is drawn (BurnedInAnnotation ``NO``). Each image references its source
image (SourceImageSequence, with the frame number for a multi-frame source), is
``DERIVED\\SECONDARY``, carries the provenance sentence in ImageComments and the
ContributingEquipmentSequence, and is numbered by its slice (InstanceNumber = slice index
+ 1, along the volume's slice axis). Patient and study come from the source (invalid
values fixed or dropped, as for the SEG).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from dicom_bridge.patient import sanitized_sources
from dicom_bridge.seg import (
    RESEARCH_MARKER,
    AlgorithmInfo,
    SegmentationWriteError,
    SegmentDescription,
    SourceGrid,
    processing_equipment,
    provenance_sentence,
    series_description,
)

#: The CT window when the source names none (abdomen: level 40 HU, width 400 HU).
DEFAULT_CT_WINDOW: Final = (40.0, 400.0)
#: Outline colour of a segment that has no recommended display colour.
DEFAULT_COLOUR: Final = (255, 64, 64)
#: The largest slice drawn (rows x columns); larger images are refused, not resampled.
MAX_PIXELS: Final = 4096 * 4096


@dataclass(frozen=True, slots=True)
class OverlayOptions:
    """What the overlay series says about itself."""

    research_only: bool = True
    manufacturer: str = "SegAppliance"
    series_number: int = 9904
    series_instance_uid: str | None = None


def outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The pixels of the 2-D ``mask`` within ``width`` pixels (4-neighbour steps) of a
    pixel outside it (the image border counts as outside)."""
    inner = np.asarray(mask, dtype=bool)
    region = inner.copy()
    for _ in range(max(1, width)):
        padded = np.pad(inner, 1)
        inner = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~inner


def to_grey(plane: np.ndarray, modality: str, source: Dataset) -> np.ndarray:
    """``plane`` (modality values) as uint8 grey: CT through the source's window (or
    :data:`DEFAULT_CT_WINDOW`), anything else between its 1st and 99th percentile."""
    values = np.asarray(plane, dtype=np.float32)
    if modality == "CT":
        level, width = _window(source) or DEFAULT_CT_WINDOW
        low, high = level - width / 2.0, level + width / 2.0
    else:
        finite = values[np.isfinite(values)]
        low, high = (
            (float(np.percentile(finite, 1)), float(np.percentile(finite, 99)))
            if finite.size
            else (0.0, 1.0)
        )
    if high <= low:
        high = low + 1.0
    scaled = (np.nan_to_num(values, nan=low) - low) * (255.0 / (high - low))
    return np.clip(scaled, 0.0, 255.0).astype(np.uint8)


def _window(ds: Dataset) -> tuple[float, float] | None:
    try:
        centre, width = ds.get("WindowCenter"), ds.get("WindowWidth")
        if centre is None or width is None:
            return None
        level = float(centre[0] if isinstance(centre, Sequence) else centre)
        span = float(width[0] if isinstance(width, Sequence) else width)
    except (TypeError, ValueError, IndexError):
        return None
    return (level, span) if np.isfinite(level) and np.isfinite(span) and span > 1 else None


def draw_slice(
    grey: np.ndarray,
    masks: Sequence[np.ndarray],
    segments: Sequence[SegmentDescription],
    banner: Sequence[str],
) -> np.ndarray:
    """The RGB image ``(rows, columns, 3)`` of one slice: ``grey`` with each segment's
    outline in its colour, and ``banner`` lines plus a legend of the segments drawn."""
    columns = grey.shape[1]
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    width = max(1, round(columns / 256))
    present = []
    for mask, segment in zip(masks, segments, strict=True):
        if not mask.any():
            continue
        rgb[outline(mask, width)] = segment.color_rgb or DEFAULT_COLOUR
        present.append(segment)
    image = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(image)
    size = max(8, round(columns / 40))
    font = ImageFont.load_default(size=size)
    line = size + max(2, size // 4)
    lines = len(banner) + len(present)
    text_width = max(
        [draw.textlength(t, font=font) for t in banner]
        + [size * 1.5 + draw.textlength(s.label, font=font) for s in present]
    )
    draw.rectangle((0, 0, min(columns - 1, text_width + 2 * width + 4), lines * line + 4), fill=0)
    y = 2
    for text in banner:
        draw.text((4, y), text, fill=(255, 255, 255), font=font)
        y += line
    for segment in present:
        colour = tuple(segment.color_rgb or DEFAULT_COLOUR)
        draw.rectangle((4, y + 2, 4 + size - 2, y + size), fill=colour)
        draw.text((4 + size * 1.5, y), segment.label, fill=(255, 255, 255), font=font)
        y += line
    return np.asarray(image, dtype=np.uint8)


def write_sc_overlays(
    grid: SourceGrid,
    volume: np.ndarray,
    modality: str,
    mask: np.ndarray,
    segments: Sequence[SegmentDescription],
    algorithm: AlgorithmInfo,
    options: OverlayOptions | None = None,
) -> list[Dataset]:
    """One Secondary Capture image per slice of ``mask`` (a label map ``(slice, row,
    column)`` on ``grid``) that carries one of ``segments``, drawn over ``volume`` (the
    source's modality values on the same grid). Raises :class:`SegmentationWriteError`."""
    options = options or OverlayOptions()
    labels = np.asarray(mask)
    if labels.shape != grid.shape or np.asarray(volume).shape != grid.shape:
        raise SegmentationWriteError(
            f"mask {labels.shape} and volume {np.asarray(volume).shape} must both be on the "
            f"source grid {grid.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise SegmentationWriteError(f"a label map must hold integers, got {labels.dtype}")
    if grid.shape[1] * grid.shape[2] > MAX_PIXELS:
        raise SegmentationWriteError(
            f"slices of {grid.shape[1]} x {grid.shape[2]} pixels are too large to draw"
        )
    if not segments:
        raise SegmentationWriteError("an overlay needs at least one segment")
    first = sanitized_sources(grid.datasets[:1])[0]
    sentence = provenance_sentence(algorithm, options.research_only)
    banner = [f"{algorithm.name} {algorithm.version}"]
    if options.research_only:
        banner.insert(0, RESEARCH_MARKER)
    equipment = processing_equipment(options.manufacturer, algorithm, sentence)
    series_uid = options.series_instance_uid or generate_uid()
    indices = [s.label_index for s in segments]
    carrying = np.flatnonzero(np.isin(labels, indices).reshape(labels.shape[0], -1).any(axis=1))
    out: list[Dataset] = []
    for k in carrying:
        source = grid.datasets[0] if grid.frame_numbers is not None else grid.datasets[int(k)]
        masks = [labels[k] == i for i in indices]
        pixels = draw_slice(to_grey(volume[k], modality, source), masks, segments, banner)
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=first,
            pixel_array=pixels,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_uid,
            series_number=options.series_number,
            sop_instance_uid=generate_uid(),
            instance_number=int(k) + 1,
            manufacturer=options.manufacturer,
            # highdicom annotates this from_ref_dataset argument as ints; it takes floats
            pixel_spacing=cast(Any, _pixel_spacing(grid)),
            patient_orientation=_orientation(grid),
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            contributing_equipment=[equipment],
        )
        image.SeriesDescription = series_description(
            algorithm, options.research_only, kind="OVERLAY"
        )
        image.ImageType = ["DERIVED", "SECONDARY"]
        image.BurnedInAnnotation = "NO"
        # General Series: Laterality is type 2C (a paired body part); the source's, or empty
        image.Laterality = source.get("Laterality", "")
        image.ImageComments = sentence
        image.DerivationDescription = f"Segment outlines of {algorithm.name} {algorithm.version}"
        image.SourceImageSequence = DicomSequence([_reference(grid, source, int(k))])
        out.append(image)
    return out


def _reference(grid: SourceGrid, source: Dataset, k: int) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if grid.frame_numbers is not None:
        item.ReferencedFrameNumber = grid.frame_numbers[k]
    return item


def _pixel_spacing(grid: SourceGrid) -> tuple[float, float]:
    _, row_spacing, column_spacing = grid.spacing
    # PixelSpacing is (between rows, between columns); the affine's columns 1 and 2 step
    # one row and one column
    return (round(row_spacing, 6), round(column_spacing, 6))


_AXES: Final = (("L", "R"), ("P", "A"), ("H", "F"))


def _orientation(grid: SourceGrid) -> tuple[str, str]:
    """PatientOrientation: the main patient direction of increasing column, then of
    increasing row (the direction cosines' largest LPS component)."""
    names = []
    for column in (2, 1):
        direction = grid.affine[:3, column]
        axis = int(np.argmax(np.abs(direction)))
        names.append(_AXES[axis][0] if direction[axis] > 0 else _AXES[axis][1])
    return (names[0], names[1])
