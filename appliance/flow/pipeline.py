"""The readable end-to-end processing of one claimed series: :func:`run_claim`.

claim -> route -> volume -> start job -> model -> inference -> DICOM SEG -> TID 1500 SR ->
saved under ``<storage.root>/results/<series>/gen-<n>/`` -> outputs queued -> job done /
failed.

This is also where a volume crosses from ``dicom_bridge`` (DICOM) to ``models``: only a
numpy array ``(slice, row, column)`` and a 4x4 affine to DICOM LPS millimetres go in, and
a uint8 label map on the same grid comes back. Coded concepts cross the same way
(``models.tasks.Code`` -> ``dicom_bridge.codes.CodeValue``, here).

The series' state covers routing and the volume; the segmentation is a job (one per
series, generation and task) whose state, model, per-stage timings, failure reason and
output UIDs the store records. This module owns the job from ``Store.start_job`` to its
end: whatever happens after it started (no active model, a failed stage, an unexpected
error), the job ends DONE or FAILED with a reason, never left RUNNING. The job's result
reaches the outbox only in the same transaction that finds its series generation still
current (``Store.finish_series``).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from appliance.cases.from_seg import annotate_seg_series
from appliance.config import AppConfig, OutputKind
from appliance.flow import study
from appliance.flow.extra_outputs import extra_outputs as _extra_outputs
from appliance.flow.notices import notice_for
from appliance.flow.saving import save_dataset
from appliance.flow.seg_sr import seg_and_sr
from appliance.flow.segmenting import (
    StageFailed,
    describe_exception,
    load_model,
    run_model,
)
from appliance.routing import RouteDecision, route
from appliance.site_models.registry import NetworkCache
from appliance.states import JobState, SeriesState
from appliance.store import Claim, Enqueue, JobRecord, SeriesRecord, Store
from dicom_bridge.codes import CodeValue
from dicom_bridge.errors import VolumeError
from dicom_bridge.seg import AlgorithmInfo, SegmentDescription
from dicom_bridge.sop_classes import SEGMENTATION_CLASSES, VOLUME_CLASSES
from dicom_bridge.uids import short_ref, validate_uid
from dicom_bridge.volume import SeriesVolume, load_series_volume
from models.bundle_pipeline import BundlePipeline, working_spacing
from models.model_card import thaw
from models.tasks import TaskSpec, get_task

LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Finished:
    """What became of one claimed series (and of its job, when it got one)."""

    series_state: SeriesState
    current: bool  # False: the series was re-opened meanwhile; its result was discarded
    reason: str | None = None
    job_id: int | None = None
    job_state: JobState | None = None  # DONE or FAILED; None: the series got no job
    timings: Mapping[str, Any] = field(default_factory=dict)


def run_claim(store: Store, claim: Claim, config: AppConfig, networks: NetworkCache) -> Finished:
    """Take one claimed series from start to finish, and say what became of it.

    Bad input never raises: it ends as a recorded series state or job failure. Once the
    job has started it ends DONE or FAILED with a reason, whatever happens; only a store
    that fails to record that can raise out of here (a restart re-queues the series).
    """
    start = time.perf_counter()
    # route -> volume -> start job
    started = _route_and_start_job(store, claim, config)
    if isinstance(started, NoJob):  # an annotation, skipped, rejected, or an error
        return _finish_without_job(store, claim, config, started, start)
    routed, job = started
    try:
        # active model -> model -> inference -> SEG -> SR -> saved
        produced = _run_stages(store, job, routed, config, networks)
        # outputs queued and job DONE, in one transaction, if the generation is current
        mark = time.perf_counter()
        current = store.finish_series(
            claim,
            SeriesState.DONE,
            result=routed.result,
            job_id=job.id,
            job_outputs=produced.outputs,
            job_timings=routed.timings,
            enqueue=produced.enqueue,
        )
    except StageFailed as exc:  # no active model, or a stage failed: recorded, series DONE
        return _fail_job(store, claim, config, job, routed, exc, SeriesState.DONE, start)
    except Exception as exc:  # anything else: the job fails with it, and so does the series
        LOG.exception("series %s job %d failed", short_ref(claim.series_uid), job.id)
        failure = StageFailed.from_exception("internal_error", exc)
        return _fail_job(store, claim, config, job, routed, failure, SeriesState.FAILED, start)
    if current:  # job done
        if routed.study_inputs is not None:  # the study's other series: inputs of this job
            study.mark_inputs(store, routed.study_inputs, routed.task, job.id, claim.series_uid)
        store.set_job_timing(job.id, "enqueue_s", _since(mark))
        store.set_job_timing(job.id, "total_s", _since(start))
    else:  # superseded by a newer generation: job FAILED, its files go
        discard_result(produced.result_dir)
    return _report(claim, job, routed, SeriesState.DONE, current, None, start)


@dataclass(frozen=True, slots=True)
class NoJob:
    """A series that ends without a job: an annotation, not for inference, unreadable, or
    an unexpected error before its job started."""

    state: SeriesState
    reason: str | None = None
    detail: str | None = None
    result: dict[str, Any] | None = None
    task: str | None = None  # the task the series was routed to, when it was


@dataclass(frozen=True, slots=True)
class Routed:
    """A series routed to a task, its volume built: what its job works on."""

    series: SeriesRecord
    task: str
    volume: SeriesVolume
    image_paths: tuple[Path, ...]
    result: dict[str, Any]  # recorded with the series; holds ``timings`` and the job's id
    timings: dict[str, Any]
    study_inputs: study.StudyInputs | None = None  # a task of several series: all its channels


@dataclass(frozen=True, slots=True)
class _Produced:
    """A job's saved outputs, ready to be queued."""

    outputs: dict[str, Any]
    enqueue: tuple[Enqueue, ...]
    result_dir: Path


def _since(mark: float) -> float:
    return round(time.perf_counter() - mark, 4)


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


def _route_and_start_job(
    store: Store, claim: Claim, config: AppConfig
) -> NoJob | tuple[Routed, JobRecord]:
    """claim -> route -> volume -> start job; or why the series gets no job."""
    try:
        routed = prepare_series(store, claim, config)
        if isinstance(routed, NoJob):
            return routed
        job = store.start_job(claim, routed.series.study_uid, routed.task)
    except Exception as exc:  # a bug, or the store: recorded; the worker goes on
        LOG.exception("series %s failed", short_ref(claim.series_uid))
        return NoJob(SeriesState.FAILED, "internal_error", describe_exception(exc))
    routed.result["job_id"] = job.id
    return routed, job


def prepare_series(
    store: Store, claim: Claim, config: AppConfig, *, task: str | None = None
) -> NoJob | Routed:
    """The task of a series (by the routing rules) and its volume, or why it has none.

    ``task`` (``appliance segment --task``) replaces the routing decision for a task of one
    series; a task of several series still takes its roles from the routing rules, and the
    series must be routed to it."""
    series = store.get_series(claim.series_uid)
    instances = store.series_instances(claim.series_uid)
    seg_paths = [i.path for i in instances if i.sop_class_uid in SEGMENTATION_CLASSES]
    if seg_paths and len(seg_paths) == len(instances):
        # A SEG series (a viewer's or the PACS'): an annotation, not an inference input.
        note = annotate_seg_series(store, config, seg_paths)
        return NoJob(note.state, note.reason, note.detail, result=note.result)
    image_paths = tuple(i.path for i in instances if i.sop_class_uid in VOLUME_CLASSES)
    if not image_paths:
        classes = sorted({i.sop_class_uid for i in instances})
        return NoJob(
            SeriesState.SKIPPED,
            "not_an_image_series",
            f"no CT/MR image instances (SOP classes: {', '.join(classes)})",
        )
    decision = route(study.facts_of(series, instances), config.routing)
    if task is not None and not study.task_roles(task):
        wanted = str(get_task(task).channels[0].modality)
        if series.modality.upper() != wanted:
            return NoJob(
                SeriesState.SKIPPED,
                "wrong_modality",
                f"{task} takes a {wanted} series; this series is {series.modality or '(none)'}",
            )
        decision = RouteDecision(task, None, f"task {task} was given")
    elif task is not None and decision.task != task:
        return NoJob(
            SeriesState.SKIPPED,
            "no_matching_rule",
            f"{task} takes several series, by role, and no routing rule gives this series "
            f"a role of {task} ({decision.reason})",
        )
    if decision.task is None:
        return NoJob(SeriesState.SKIPPED, "no_matching_rule", decision.reason)
    roles = (
        study.gather(store, claim, decision, config) if study.task_roles(decision.task) else None
    )
    if isinstance(roles, study.NotRun):  # an input of its study's job, or waiting for roles
        return NoJob(roles.state, roles.reason, roles.detail)
    timings: dict[str, Any] = {}
    start = time.perf_counter()
    try:
        volume = load_series_volume(image_paths, config.limits.sizes)
    except VolumeError as exc:
        return NoJob(SeriesState.REJECTED, exc.reason, exc.detail, task=decision.task)
    inputs = None if roles is None else study.load_inputs(roles, volume, config)
    if isinstance(inputs, study.NotRun):
        return NoJob(inputs.state, inputs.reason, inputs.detail)
    timings["volume_s"] = _since(start)
    result = volume_summary(volume)
    if inputs is not None:
        result["inputs"] = inputs.inputs
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
    return Routed(series, decision.task, volume, image_paths, result, timings, inputs)


def _run_stages(
    store: Store, job: JobRecord, routed: Routed, config: AppConfig, networks: NetworkCache
) -> _Produced:
    """The job's active model -> model -> inference -> SEG -> SR -> saved; raises
    :class:`StageFailed` naming the stage that failed."""
    record = store.active_model(routed.task)
    if record is None:
        raise StageFailed(
            "no_active_model",
            f"no active model for {routed.task}; run appliance models import/activate, "
            f"then appliance jobs retry {job.id}",
        )
    store.set_job_model(
        job.id, record.name, record.version, record.weights_sha256, record.federated_round
    )
    timings = routed.timings
    mark = time.perf_counter()
    loaded, spec = load_model(networks, record)
    timings["model_s"] = _since(mark)

    # The boundary: numpy (slice, row, column) + 4x4 LPS affine in, uint8 label map out.
    volume = routed.volume
    image: np.ndarray = volume.array if routed.study_inputs is None else routed.study_inputs.image
    affine_lps: np.ndarray = volume.affine
    mark = time.perf_counter()
    card = loaded.bundle.card
    segmentation = run_model(loaded, spec, image, affine_lps, config)
    timings["inference_s"] = _since(mark)
    timings["inference"] = {k: round(float(v), 4) for k, v in segmentation.timings_s.items()}
    timings["device"] = segmentation.device
    mask = segmentation.mask

    segments = segment_descriptions(spec)
    research_only = config.output.research_only
    try:
        # The card's provenance must fit the SEG's algorithm identification (e.g. a name
        # of at most 64 printable characters): checked here, as the SEG is built.
        algorithm = AlgorithmInfo(
            name=card.name,
            version=card.version,
            weights_sha256=card.weights_sha256,
            federated_round=card.federated_round,
        )
    except Exception as exc:
        raise StageFailed.from_exception("seg_failed", exc) from exc
    seg, sr = seg_and_sr(routed, mask, segments, algorithm, config, omit_empty=True)
    destinations = config.output_destinations
    wanted = {kind for name in destinations for kind in config.destination(name).outputs}
    extra = _extra_outputs(wanted, routed, mask, segments, algorithm, research_only)
    # destinations whose viewers need every frame (e.g. OHIF misplaces a SEG whose empty
    # frames were omitted) get their own SEG, and an SR that references it
    all_frames = [d for d in destinations if config.destination(d).seg_all_frames]
    full = (
        seg_and_sr(routed, mask, segments, algorithm, config, omit_empty=False)
        if all_frames
        else None
    )

    mark = time.perf_counter()
    try:
        out_dir = result_dir_for(config, job.series_uid, job.generation)
        out_dir.mkdir(parents=True, exist_ok=True)
        seg_path, sr_path, mask_path = out_dir / "seg.dcm", out_dir / "sr.dcm", out_dir / "mask.npz"
        save_dataset(seg, seg_path)
        if full is not None:
            save_dataset(full[0], out_dir / "seg_all_frames.dcm")
            save_dataset(full[1], out_dir / "sr_all_frames.dcm")
        save_dataset(sr, sr_path)
        extra_files = extra.save(out_dir, save_dataset)
        tmp_mask = out_dir / ".mask.tmp.npz"
        np.savez_compressed(tmp_mask, mask=mask, affine_lps=affine_lps)
        os.replace(tmp_mask, mask_path)
    except Exception as exc:
        raise StageFailed.from_exception("save_failed", exc) from exc
    timings["save_s"] = _since(mark)

    seg_uid, sr_uid = str(seg.SOPInstanceUID), str(sr.SOPInstanceUID)
    files = {OutputKind.SEG: [(seg_path, seg_uid)], OutputKind.SR: [(sr_path, sr_uid)]}
    files.update(extra_files)
    full_files = dict(files)
    if full is not None:
        full_files[OutputKind.SEG] = [(out_dir / "seg_all_frames.dcm", str(full[0].SOPInstanceUID))]
        full_files[OutputKind.SR] = [(out_dir / "sr_all_frames.dcm", str(full[1].SOPInstanceUID))]
    enqueue = tuple(
        Enqueue(dest, path, uid)
        for dest in destinations
        for kind in config.destination(dest).outputs
        for path, uid in (full_files if dest in all_frames else files)[kind]
    )
    voxels = label_voxels(mask, spec)
    outputs = {
        "seg_sop_uid": seg_uid,
        "seg_series_uid": str(seg.SeriesInstanceUID),
        "sr_sop_uid": sr_uid,
        "sr_series_uid": str(sr.SeriesInstanceUID),
        "seg_path": str(seg_path),
        "sr_path": str(sr_path),
        "mask_path": str(mask_path),
        "destinations": list(destinations),
        "outputs": {d: [str(k) for k in config.destination(d).outputs] for d in destinations},
        "voxels": voxels,
        "preprocessing": preprocessing_summary(card.bundle_pipeline, spec),
    }
    outputs.update(extra.describe(extra_files))
    if full is not None:
        outputs["seg_all_frames_sop_uid"] = str(full[0].SOPInstanceUID)
        outputs["sr_all_frames_sop_uid"] = str(full[1].SOPInstanceUID)
    timings.update(extra.timings)
    if routed.study_inputs is not None:
        outputs["inputs"] = routed.study_inputs.inputs
    routed.result["job_state"] = "done"
    return _Produced(outputs, enqueue, out_dir)


def _fail_job(
    store: Store,
    claim: Claim,
    config: AppConfig,
    job: JobRecord,
    routed: Routed,
    failure: StageFailed,
    series_state: SeriesState,
    start: float,
) -> Finished:
    """End the job FAILED with the reason, then its series: DONE for a recorded job
    failure, FAILED (with the reason too) for an unexpected error."""
    routed.result["job_state"] = "failed"
    ref = short_ref(claim.series_uid)
    if failure.reason == "no_active_model":
        LOG.warning("series %s not segmented: %s", ref, failure.detail)
    elif failure.reason != "internal_error":  # that one was logged with its traceback
        LOG.error("series %s job %d failed at %s: %s", ref, job.id, failure.reason, failure.detail)
    store.fail_job(job.id, failure.reason, failure.detail, routed.timings)
    failed = series_state is SeriesState.FAILED
    notices = notice_for(store, config, claim, routed.task, failure.reason, failure.detail)
    current = store.finish_series(
        claim,
        series_state,
        reason=failure.reason if failed else None,
        detail=failure.detail if failed else None,
        result=routed.result,
        enqueue=notices,
    )
    return _report(claim, job, routed, series_state, current, failure.reason, start)


def _report(
    claim: Claim,
    job: JobRecord,
    routed: Routed,
    series_state: SeriesState,
    current: bool,
    failure: str | None,
    start: float,
) -> Finished:
    """The one log line of a job, with its timings."""
    elapsed = time.perf_counter() - start
    timings = routed.timings
    if not current:
        _log_reopened(claim)
    else:
        stages = ", ".join(
            f"{k.removesuffix('_s')} {v:.2f}s"
            for k, v in timings.items()
            if k.endswith("_s") and isinstance(v, int | float)
        )
        LOG.info(
            "job %d series %s generation %d %s -> %s in %.2f s (%s)",
            job.id,
            short_ref(claim.series_uid),
            claim.generation,
            routed.task,
            "failed" if failure else "done",
            elapsed,
            stages,
        )
    done = current and failure is None
    return Finished(
        series_state,
        current,
        reason=failure or (None if current else "superseded"),
        job_id=job.id,
        job_state=JobState.DONE if done else JobState.FAILED,
        timings=timings,
    )


def _finish_without_job(
    store: Store, claim: Claim, config: AppConfig, ended: NoJob, start: float
) -> Finished:
    notices: tuple[Enqueue, ...] = ()
    if ended.task is not None and ended.state is SeriesState.REJECTED and ended.reason:
        notices = notice_for(store, config, claim, ended.task, ended.reason, ended.detail)
    current = store.finish_series(
        claim,
        ended.state,
        reason=ended.reason,
        detail=ended.detail,
        result=ended.result,
        enqueue=notices,
    )
    if not current:
        _log_reopened(claim)
    else:
        LOG.info(
            "series %s generation %d -> %s%s in %.2f s",
            short_ref(claim.series_uid),
            claim.generation,
            ended.state.value,
            f" ({ended.reason})" if ended.reason else "",
            time.perf_counter() - start,
        )
    return Finished(ended.state, current, reason=ended.reason)


def _log_reopened(claim: Claim) -> None:
    LOG.info(
        "series %s re-opened while processing; result of generation %d discarded",
        short_ref(claim.series_uid),
        claim.generation,
    )


def preprocessing_summary(pipeline: BundlePipeline | None, spec: TaskSpec) -> dict[str, Any]:
    """What the job's pre-processing was, for the record: the imported bundle's own
    pipeline (the steps it runs, with their parameters) or the task's."""
    if pipeline is not None:
        spacing = working_spacing(pipeline)
        return {
            "source": "bundle",
            "file": pipeline.file,
            "working_spacing_mm": None if spacing is None else [float(v) for v in spacing],
            "steps": [
                {"where": step.where, "op": step.op.value, "params": thaw(step.params)}
                for step in pipeline.steps
                if step.runs
            ],
        }
    return {
        "source": "task",
        "working_spacing_mm": [float(v) for v in spec.target_spacing_mm],
        "intensity": repr(spec.intensity),
    }


def label_voxels(mask: np.ndarray, spec: TaskSpec) -> dict[str, int]:
    """Voxels per label of a 3-D label map or of 4-D per-label masks (which may overlap)."""
    if mask.ndim == 4:
        return {label.name: int(np.count_nonzero(mask[label.index - 1])) for label in spec.labels}
    # one comparison per label: bincount would first copy the map to int64 (8 bytes a voxel)
    return {label.name: int(np.count_nonzero(mask == label.index)) for label in spec.labels}


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


def discard_result(result_dir: Path | None) -> None:
    """Remove a stale generation's output files (its series was re-opened)."""
    if result_dir is not None:
        shutil.rmtree(result_dir, ignore_errors=True)
