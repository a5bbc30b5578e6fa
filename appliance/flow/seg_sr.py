"""A job's DICOM Segmentation and the TID 1500 SR that measures it (:func:`seg_and_sr`),
with empty frames omitted (every job) or kept (for destinations with ``seg_all_frames``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset

from appliance.config import AppConfig
from appliance.flow.segmenting import StageFailed
from dicom_bridge.seg import AlgorithmInfo, SegmentDescription, SegOptions, write_seg
from dicom_bridge.seg_references import reference_other_series
from dicom_bridge.sr import SrOptions, write_sr

if TYPE_CHECKING:
    from appliance.flow.pipeline import Routed


def seg_and_sr(
    routed: Routed,
    mask: np.ndarray,
    segments: list[SegmentDescription],
    algorithm: AlgorithmInfo,
    config: AppConfig,
    *,
    omit_empty: bool,
) -> tuple[Dataset, Dataset]:
    """The job's SEG (empty frames omitted or not) and the SR that measures it; their
    times go to the job's timings (``seg_s``/``sr_s``, or ``seg_all_frames_s``/
    ``sr_all_frames_s``). Raises :class:`StageFailed`."""
    suffix = "" if omit_empty else "_all_frames"
    volume = routed.volume
    research_only = config.output.research_only
    mark = time.perf_counter()
    try:
        seg = write_seg(
            routed.image_paths,
            mask,
            segments,
            algorithm,
            SegOptions(
                segmentation_type=config.output.seg_type,
                research_only=research_only,
                omit_empty_frames=omit_empty,
            ),
            slice_uids=volume.sop_instance_uids,
            source_headers=volume.source_headers or None,  # the files are not read again
        )
        if routed.study_inputs is not None:  # it also references the study's other inputs
            reference_other_series(seg, routed.study_inputs.other_paths)
    except Exception as exc:
        raise StageFailed.from_exception("seg_failed", exc) from exc
    routed.timings[f"seg{suffix}_s"] = round(time.perf_counter() - mark, 4)
    mark = time.perf_counter()
    try:
        sr = write_sr(
            seg, mask, volume.affine, segments, algorithm, SrOptions(research_only=research_only)
        )
    except Exception as exc:
        raise StageFailed.from_exception("sr_failed", exc) from exc
    routed.timings[f"sr{suffix}_s"] = round(time.perf_counter() - mark, 4)
    return seg, sr
