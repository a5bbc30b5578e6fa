"""The status report shown by ``appliance status`` (a plain dict, JSON-able)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from appliance.states import OutboxState, SeriesState
from appliance.store import JobRecord, Store
from models.lifecycle import ModelState

STATUS_FORMAT_VERSION = 3  # 2: jobs, job_states, models; 3: cases


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat(timespec="seconds")


def job_entry(job: JobRecord) -> dict[str, Any]:
    """One job as JSON: state, task, model, per-stage timings (seconds), outputs."""
    return {
        "id": job.id,
        "series_uid": job.series_uid,
        "generation": job.generation,
        "task": job.task,
        "state": job.state.value,
        "attempts": job.attempts,
        "model": None
        if job.model_version is None
        else {
            "name": job.model_name,
            "version": job.model_version,
            "weights_sha256": job.model_sha256,
            "federated_round": job.federated_round,
        },
        "timings": job.timings,
        "reason": job.reason,
        "detail": job.detail,
        "outputs": {
            k: job.outputs[k]
            for k in (
                "seg_sop_uid",
                "sr_sop_uid",
                "rtstruct_sop_uid",
                "sc_overlay_series_uid",
                "sc_overlay_images",
                "destinations",
                "outputs",
                "voxels",
                "preprocessing",
            )
            if k in job.outputs
        },
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def build_status(
    store: Store, *, series_limit: int = 200, rejection_limit: int = 20, job_limit: int = 50
) -> dict[str, Any]:
    series_counts = store.series_counts()
    job_counts = store.job_counts()
    outbox_counts = store.outbox_counts()
    return {
        "format": STATUS_FORMAT_VERSION,
        "generated_at": _iso(store.now()),
        "instances": store.instance_count(),
        "series_states": series_counts,
        "queues": {
            "series_waiting": series_counts[SeriesState.COMPLETE],
            "series_processing": series_counts[SeriesState.PROCESSING],
            "outbox_pending": outbox_counts[OutboxState.PENDING]
            + outbox_counts[OutboxState.SENDING],
            "outbox_dead": outbox_counts[OutboxState.DEAD],
        },
        "outbox": outbox_counts,
        "job_states": job_counts,
        "models": {
            m.task: {"version": m.version, "name": m.name, "weights_sha256": m.weights_sha256}
            for m in store.list_models()
            if m.state is ModelState.ACTIVE
        },
        "cases": store.case_counts(),
        "jobs": [job_entry(j) for j in store.list_jobs(limit=job_limit)],
        "series": [
            {
                "series_uid": s.series_uid,
                "study_uid": s.study_uid,
                "modality": s.modality,
                "state": s.state.value,
                "instances": s.instances,
                "generation": s.generation,
                "first_instance_at": _iso(s.first_instance_at),
                "last_instance_at": _iso(s.last_instance_at),
                "reason": s.reason,
                "detail": s.detail,
                "result": s.result,
            }
            for s in store.list_series(limit=series_limit)
        ],
        "rejections": [
            {
                "at": _iso(r.at),
                "scope": r.scope,
                "reason": r.reason,
                "status": None if r.status is None else f"0x{r.status:04X}",
                "calling_ae": r.calling_ae,
                "peer_host": r.peer_host,
                "ref": r.ref,
            }
            for r in store.recent_rejections(rejection_limit)
        ],
    }
