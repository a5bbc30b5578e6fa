"""The outputs a job makes only when a destination asks for them (``destinations[i].outputs``):
an RT Structure Set (``rtstruct``) and a Secondary Capture overlay series (``sc_overlay``).

The SEG and SR are always made (the SR measures what the SEG holds; results are kept even
with no destination). The others cost time (contours, one drawn image per slice) and are
built here only for the kinds some destination of the job receives; each failure fails
the job with its own reason (``rtstruct_failed``, ``sc_overlay_failed``), like a failed SEG.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset

from appliance.config import OutputKind
from appliance.flow.segmenting import StageFailed
from dicom_bridge.overlay import OverlayOptions, write_sc_overlays
from dicom_bridge.rtstruct import RtStructOptions, write_rtstruct
from dicom_bridge.seg import (
    AlgorithmInfo,
    SegmentDescription,
    SourceGrid,
    read_source_grid,
    source_grid_from_headers,
)

if TYPE_CHECKING:
    from appliance.flow.pipeline import Routed

#: Output files of one kind: (path, SOP Instance UID) per file.
Files = list[tuple[Path, str]]


@dataclass(slots=True)
class ExtraOutputs:
    """The optional outputs built for one job, before they are saved."""

    rtstruct: Dataset | None = None
    overlays: list[Dataset] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def save(self, out_dir: Path, save: Callable[[Dataset, Path], None]) -> dict[OutputKind, Files]:
        """Write them under ``out_dir`` with ``save``; their files per kind."""
        files: dict[OutputKind, Files] = {}
        if self.rtstruct is not None:
            path = out_dir / "rtstruct.dcm"
            save(self.rtstruct, path)
            files[OutputKind.RTSTRUCT] = [(path, str(self.rtstruct.SOPInstanceUID))]
        if self.overlays:
            folder = out_dir / "overlay"
            folder.mkdir(exist_ok=True)
            files[OutputKind.SC_OVERLAY] = []
            for image in self.overlays:
                path = folder / f"{int(image.InstanceNumber):05d}.dcm"
                save(image, path)
                files[OutputKind.SC_OVERLAY].append((path, str(image.SOPInstanceUID)))
        return files

    def describe(self, files: dict[OutputKind, Files]) -> dict[str, Any]:
        """What the job's ``outputs`` record of them."""
        out: dict[str, Any] = {}
        if self.rtstruct is not None:
            path, uid = files[OutputKind.RTSTRUCT][0]
            out["rtstruct_sop_uid"] = uid
            out["rtstruct_series_uid"] = str(self.rtstruct.SeriesInstanceUID)
            out["rtstruct_path"] = str(path)
        if OutputKind.SC_OVERLAY in files:
            out["sc_overlay_series_uid"] = (
                str(self.overlays[0].SeriesInstanceUID) if self.overlays else None
            )
            out["sc_overlay_images"] = len(files[OutputKind.SC_OVERLAY])
        return out


def extra_outputs(
    wanted: Collection[OutputKind],
    routed: Routed,
    mask: np.ndarray,
    segments: Sequence[SegmentDescription],
    algorithm: AlgorithmInfo,
    research_only: bool,
) -> ExtraOutputs:
    """Build the ``wanted`` kinds beyond SEG and SR for the job of ``routed``; raises
    :class:`StageFailed`. An overlay of a mask with nothing in it has no image (the SEG
    and SR say that nothing was found)."""
    extra = ExtraOutputs()
    if not ({OutputKind.RTSTRUCT, OutputKind.SC_OVERLAY} & set(wanted)):
        return extra
    volume = routed.volume
    first = "rtstruct_failed" if OutputKind.RTSTRUCT in wanted else "sc_overlay_failed"
    grid = _grid(routed, first)
    if OutputKind.RTSTRUCT in wanted:
        mark = time.perf_counter()
        try:
            extra.rtstruct = write_rtstruct(
                grid, mask, segments, algorithm, RtStructOptions(research_only=research_only)
            )
        except Exception as exc:
            raise StageFailed.from_exception("rtstruct_failed", exc) from exc
        extra.timings["rtstruct_s"] = round(time.perf_counter() - mark, 4)
    if OutputKind.SC_OVERLAY in wanted:
        mark = time.perf_counter()
        try:
            labels = mask if mask.ndim == 3 else _label_map(mask, segments)
            extra.overlays = write_sc_overlays(
                grid,
                volume.array,
                volume.modality,
                labels,
                segments,
                algorithm,
                OverlayOptions(research_only=research_only),
            )
        except Exception as exc:
            raise StageFailed.from_exception("sc_overlay_failed", exc) from exc
        extra.timings["sc_overlay_s"] = round(time.perf_counter() - mark, 4)
    return extra


def _grid(routed: Routed, reason: str) -> SourceGrid:
    volume = routed.volume
    try:
        if volume.source_headers:
            return source_grid_from_headers(volume.source_headers)
        return read_source_grid(routed.image_paths)
    except Exception as exc:
        raise StageFailed.from_exception(reason, exc) from exc


def _label_map(masks: np.ndarray, segments: Sequence[SegmentDescription]) -> np.ndarray:
    """Overlapping segment masks ``(S, slice, row, column)`` drawn as one label map: where
    segments overlap, the later (inner: enhancing tumour over tumour core) wins."""
    labels = np.zeros(masks.shape[1:], dtype=np.uint16)
    for segment in segments:
        labels[np.asarray(masks[segment.label_index - 1], dtype=bool)] = segment.label_index
    return labels
