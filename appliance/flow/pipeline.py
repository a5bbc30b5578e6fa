"""The readable end-to-end processing of one complete series.

complete series -> route -> volume -> active model of the task -> segment -> DICOM SEG ->
TID 1500 SR -> saved under ``<storage.root>/results/<series>/gen-<n>/`` -> outbox.

This is also where a volume crosses from ``dicom_bridge`` (DICOM) to ``models``: only a
numpy array ``(slice, row, column)`` and a 4x4 affine to DICOM LPS millimetres go in, and
a uint8 label map on the same grid comes back. Coded concepts cross the same way
(``models.tasks.Code`` -> ``dicom_bridge.codes.CodeValue``, here).

The series' state covers routing and the volume; the segmentation is a job (one per
series, generation and task) whose state, model, per-stage timings, failure reason and
output UIDs the store records. The job's result reaches the outbox only in the same
transaction that finds its series generation still current (``Store.finish_series``).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from appliance.cases.from_seg import annotate_seg_series
from appliance.config import AppConfig
from appliance.routing import SeriesFacts, route
from appliance.site_models.registry import NetworkCache
from appliance.states import SeriesState
from appliance.store import Claim, Enqueue, JobRecord, ModelRecord, SeriesRecord, Store
from dicom_bridge.codes import CodeValue
from dicom_bridge.errors import VolumeError
from dicom_bridge.seg import AlgorithmInfo, SegmentDescription, SegOptions, write_seg
from dicom_bridge.sop_classes import SEGMENTATION_CLASSES, VOLUME_CLASSES
from dicom_bridge.sr import SrOptions, write_sr
from dicom_bridge.uids import short_ref, validate_uid
from dicom_bridge.volume import SeriesVolume, load_series_volume
from models.inference import segment
from models.tasks import TaskSpec, get_task

LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    state: SeriesState
    reason: str | None = None
    detail: str | None = None
    result: dict[str, Any] | None = None
    timings: dict[str, Any] = field(default_factory=dict)
    job: JobRecord | None = None
    job_outputs: dict[str, Any] | None = None  # set when the job succeeded
    enqueue: tuple[Enqueue, ...] = ()
    result_dir: Path | None = None


def volume_summary(volume: SeriesVolume) -> dict[str, Any]:
    """The geometry of a volume as JSON-able values (recorded with the series)."""
    return {
        "shape": [int(v) for v in volume.array.shape],
        "spacing_mm": [round(float(v), 6) for v in volume.spacing],
        "affine_lps": [[float(v) for v in row] for row in volume.affine],
        "modality": volume.modality,
        "frame_of_reference_uid": volume.frame_of_reference_uid,
        "instances": len(volume.sop_instance_uids),
    }


def process_series(
    store: Store, claim: Claim, config: AppConfig, networks: NetworkCache
) -> Outcome:
    """Take one complete series as far as the pipeline goes; never raises for bad input."""
    series = store.get_series(claim.series_uid)
    instances = store.series_instances(claim.series_uid)
    seg_paths = [i.path for i in instances if i.sop_class_uid in SEGMENTATION_CLASSES]
    if seg_paths and len(seg_paths) == len(instances):
        # A SEG series (a viewer's or the PACS'): an annotation, not an inference input.
        note = annotate_seg_series(store, config, seg_paths)
        return Outcome(note.state, note.reason, note.detail, result=note.result)
    image_paths = [i.path for i in instances if i.sop_class_uid in VOLUME_CLASSES]
    if not image_paths:
        classes = sorted({i.sop_class_uid for i in instances})
        return Outcome(
            SeriesState.SKIPPED,
            "not_an_image_series",
            f"no CT/MR image instances (SOP classes: {', '.join(classes)})",
        )
    facts = SeriesFacts(
        modality=series.modality,
        body_part_examined=series.body_part_examined,
        series_description=series.series_description,
        image_type=series.image_type,
        slices=sum(i.number_of_frames for i in instances if i.sop_class_uid in VOLUME_CLASSES),
    )
    decision = route(facts, config.routing)
    if decision.task is None:
        return Outcome(SeriesState.SKIPPED, "no_matching_rule", decision.reason)
    timings: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        volume = load_series_volume(image_paths)
    except VolumeError as exc:
        return Outcome(SeriesState.REJECTED, exc.reason, exc.detail)
    timings["volume_s"] = _since(start)
    result = volume_summary(volume)
    result["task"] = decision.task
    result["routing_rule"] = decision.rule
    result["timings"] = timings
    LOG.info(
        "series %s (%s, %d instances): volume %s in %.2f s",
        short_ref(series.series_uid),
        series.modality,
        len(image_paths),
        "x".join(str(v) for v in result["shape"]),
        timings["volume_s"],
    )

    job = store.start_job(claim, series.study_uid, decision.task)
    result["job_id"] = job.id
    record = store.active_model(decision.task)
    if record is None:
        detail = (
            f"no active model for {decision.task}; run appliance models import/activate, "
            f"then appliance jobs retry {job.id}"
        )
        store.fail_job(job.id, "no_active_model", detail, timings)
        result["job_state"] = "failed"
        LOG.warning("series %s not segmented: %s", short_ref(series.series_uid), detail)
        return Outcome(SeriesState.DONE, result=result, timings=timings, job=job)
    store.set_job_model(
        job.id, record.name, record.version, record.weights_sha256, record.federated_round
    )
    try:
        segmented = _segment_series(
            series, claim, volume, image_paths, record, config, networks, timings
        )
    except _StageError as exc:
        store.fail_job(job.id, exc.reason, exc.detail, timings)
        result["job_state"] = "failed"
        LOG.error(
            "series %s job %d failed at %s: %s",
            short_ref(series.series_uid),
            job.id,
            exc.reason,
            exc.detail,
        )
        return Outcome(SeriesState.DONE, result=result, timings=timings, job=job)
    outputs, enqueue, result_dir = segmented
    result["job_state"] = "done"
    return Outcome(
        SeriesState.DONE,
        result=result,
        timings=timings,
        job=job,
        job_outputs=outputs,
        enqueue=enqueue,
        result_dir=result_dir,
    )


class _StageError(Exception):
    """A pipeline stage failed: ``reason`` names the stage, ``detail`` says why."""

    def __init__(self, reason: str, exc: BaseException) -> None:
        self.reason = reason
        self.detail = f"{type(exc).__name__}: {exc}"[:500]
        super().__init__(self.detail)


def _since(mark: float) -> float:
    return round(time.perf_counter() - mark, 4)


def task_spec_for(task: str, record: ModelRecord, card_preprocessing: Any) -> TaskSpec:
    """The task spec, with the patch size and spacing the model card records (a model
    imported from elsewhere may have been trained with others)."""
    spec = get_task(task)
    changes: dict[str, Any] = {}
    if "patch_size" in card_preprocessing:
        changes["patch_size"] = tuple(int(v) for v in card_preprocessing["patch_size"])
    if "target_spacing_mm" in card_preprocessing:
        changes["target_spacing_mm"] = tuple(
            float(v) for v in card_preprocessing["target_spacing_mm"]
        )
    return replace(spec, **changes) if changes else spec


def segment_descriptions(spec: TaskSpec) -> list[SegmentDescription]:
    """The SEG segments of a task: its labels, with ``models`` codes as DICOM codes."""
    return [
        SegmentDescription(
            label_index=label.index,
            label=label.name,
            category=CodeValue.from_coded(label.category),
            property_type=CodeValue.from_coded(label.property_type),
            anatomic_region=(
                None
                if label.anatomic_region is None
                else CodeValue.from_coded(label.anatomic_region)
            ),
            color_rgb=label.color_rgb,
        )
        for label in spec.labels
    ]


def result_dir_for(config: AppConfig, series_uid: str, generation: int) -> Path:
    """``<storage.root>/results/<series uid>/gen-<n>``; the UID is validated first."""
    return (
        config.results_dir
        / validate_uid(series_uid, what="SeriesInstanceUID")
        / (f"gen-{int(generation)}")
    )


def _save_dataset(ds: Dataset, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    ds.save_as(tmp, enforce_file_format=True)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _segment_series(
    series: SeriesRecord,
    claim: Claim,
    volume: SeriesVolume,
    image_paths: Sequence[Path],
    record: ModelRecord,
    config: AppConfig,
    networks: NetworkCache,
    timings: dict[str, Any],
) -> tuple[dict[str, Any], tuple[Enqueue, ...], Path]:
    mark = time.perf_counter()
    try:
        loaded = networks.get(record)
        spec = task_spec_for(record.task, record, loaded.bundle.card.preprocessing)
    except Exception as exc:
        raise _StageError("model_load_failed", exc) from exc
    timings["model_s"] = _since(mark)

    # The boundary: numpy (slice, row, column) + 4x4 LPS affine in, uint8 label map out.
    image: np.ndarray = volume.array
    affine_lps: np.ndarray = volume.affine
    mark = time.perf_counter()
    try:
        segmentation = segment(loaded.network, spec, image, affine_lps, device=loaded.device)
    except Exception as exc:
        raise _StageError("inference_failed", exc) from exc
    timings["inference_s"] = _since(mark)
    timings["inference"] = {k: round(float(v), 4) for k, v in segmentation.timings_s.items()}
    timings["device"] = segmentation.device
    mask = segmentation.mask

    card = loaded.bundle.card
    segments = segment_descriptions(spec)
    algorithm = AlgorithmInfo(
        name=card.name,
        version=card.version,
        weights_sha256=card.weights_sha256,
        federated_round=card.federated_round,
    )
    research_only = config.output.research_only
    mark = time.perf_counter()
    try:
        seg = write_seg(
            image_paths,
            mask,
            segments,
            algorithm,
            SegOptions(segmentation_type=config.output.seg_type, research_only=research_only),
            slice_uids=volume.sop_instance_uids,
        )
    except Exception as exc:
        raise _StageError("seg_failed", exc) from exc
    timings["seg_s"] = _since(mark)

    mark = time.perf_counter()
    try:
        sr = write_sr(
            seg, mask, affine_lps, segments, algorithm, SrOptions(research_only=research_only)
        )
    except Exception as exc:
        raise _StageError("sr_failed", exc) from exc
    timings["sr_s"] = _since(mark)

    mark = time.perf_counter()
    try:
        out_dir = result_dir_for(config, series.series_uid, claim.generation)
        out_dir.mkdir(parents=True, exist_ok=True)
        seg_path, sr_path, mask_path = out_dir / "seg.dcm", out_dir / "sr.dcm", out_dir / "mask.npz"
        _save_dataset(seg, seg_path)
        _save_dataset(sr, sr_path)
        tmp_mask = out_dir / ".mask.tmp.npz"
        np.savez_compressed(tmp_mask, mask=mask, affine_lps=affine_lps)
        os.replace(tmp_mask, mask_path)
    except Exception as exc:
        raise _StageError("save_failed", exc) from exc
    timings["save_s"] = _since(mark)

    seg_uid, sr_uid = str(seg.SOPInstanceUID), str(sr.SOPInstanceUID)
    destinations = config.output_destinations
    enqueue = tuple(
        Enqueue(dest, path, uid)
        for dest in destinations
        for path, uid in ((seg_path, seg_uid), (sr_path, sr_uid))
    )
    counts = np.bincount(mask.ravel(), minlength=spec.num_classes)
    outputs = {
        "seg_sop_uid": seg_uid,
        "seg_series_uid": str(seg.SeriesInstanceUID),
        "sr_sop_uid": sr_uid,
        "sr_series_uid": str(sr.SeriesInstanceUID),
        "seg_path": str(seg_path),
        "sr_path": str(sr_path),
        "mask_path": str(mask_path),
        "destinations": list(destinations),
        "voxels": {label.name: int(counts[label.index]) for label in spec.labels},
    }
    return outputs, enqueue, out_dir


def discard_result(result_dir: Path | None) -> None:
    """Remove a stale generation's output files (its series was re-opened)."""
    if result_dir is not None:
        shutil.rmtree(result_dir, ignore_errors=True)
