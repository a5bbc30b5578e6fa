"""Segmentation jobs: one per (series, generation, task), with the model used and its result.

Which job may be retried is the vocabulary's rule (:attr:`JobState.retryable`); the store
adds what only it can check: the job's series has not moved on to a newer generation.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from appliance.errors import NotFoundError, StoreError
from appliance.states import JobState, SeriesState
from appliance.store.audit import AuditEvent
from appliance.store.db import Database
from appliance.store.records import Claim, JobRecord, from_row


def _json_or_null(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(value)


def complete_job(
    db: sqlite3.Connection,
    job_id: int,
    outputs: dict[str, Any],
    timings: dict[str, Any] | None,
    now: float,
) -> None:
    """Inside ``db``'s transaction: job ``job_id`` is DONE with ``outputs``."""
    db.execute(
        """UPDATE jobs SET state = ?, outputs_json = ?,
               timings_json = COALESCE(?, timings_json), finished_at = ?,
               updated_at = ? WHERE id = ?""",
        (JobState.DONE, json.dumps(outputs), _json_or_null(timings), now, now, job_id),
    )


def supersede_job(
    db: sqlite3.Connection, job_id: int, timings: dict[str, Any] | None, now: float
) -> None:
    """Inside ``db``'s transaction: job ``job_id`` is FAILED (``superseded``), its result
    discarded because its series was re-opened while it ran."""
    db.execute(
        """UPDATE jobs SET state = ?, reason = 'superseded', detail = ?,
               timings_json = COALESCE(?, timings_json), finished_at = ?,
               updated_at = ? WHERE id = ?""",
        (
            JobState.FAILED,
            "the series was re-opened while processing; the new generation "
            "supersedes this result, which was discarded",
            _json_or_null(timings),
            now,
            now,
            job_id,
        ),
    )


def requeue_running_jobs(db: sqlite3.Connection, now: float) -> None:
    """Inside ``db``'s transaction, after a restart: RUNNING jobs are QUEUED again."""
    db.execute(
        "UPDATE jobs SET state = ?, updated_at = ? WHERE state = ?",
        (JobState.QUEUED, now, JobState.RUNNING),
    )


def audit_job(store: Database, job_id: int, **extra: Any) -> None:
    """Record in the audit trail how job ``job_id`` ended (model, outputs)."""
    rows = store._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
    if not rows:
        return
    job = from_row(JobRecord, rows[0])
    outputs = {k: v for k, v in job.outputs.items() if k.endswith("_sop_uid")}
    store.audit.record(
        AuditEvent.JOB_FINISHED,
        job=job.id,
        study=store.audit.ref(job.study_uid),
        series=store.audit.ref(job.series_uid),
        generation=job.generation,
        task=job.task,
        state=job.state.value,
        reason=job.reason,
        model=job.model_name,
        model_version=job.model_version,
        model_sha256=job.model_sha256,
        federated_round=job.federated_round,
        outputs={k: store.audit.ref(str(v)) for k, v in sorted(outputs.items())},
        **extra,
    )


class JobStore(Database):
    """Jobs: started, given their model, failed, timed, listed and retried."""

    def start_job(self, claim: Claim, study_uid: str, task: str) -> JobRecord:
        """The job of this (series, generation, task), now RUNNING (created if new; a
        retried or re-run job counts one more attempt and loses its old outcome)."""
        now = self._clock()
        with self._tx() as db:
            row = db.execute(
                """INSERT INTO jobs (series_uid, study_uid, generation, task, state, attempts,
                       created_at, started_at, updated_at) VALUES (?,?,?,?,?,1,?,?,?)
                   ON CONFLICT(series_uid, generation, task) DO UPDATE SET
                       state = excluded.state, attempts = attempts + 1, reason = NULL,
                       detail = NULL, timings_json = '{}', outputs_json = '{}',
                       started_at = excluded.started_at, finished_at = NULL,
                       updated_at = excluded.updated_at
                   RETURNING *""",
                (
                    claim.series_uid,
                    study_uid,
                    claim.generation,
                    task,
                    JobState.RUNNING,
                    now,
                    now,
                    now,
                ),
            ).fetchone()
        return from_row(JobRecord, row)

    def set_job_model(
        self, job_id: int, name: str, version: str, sha256: str, federated_round: int | None
    ) -> None:
        with self._tx() as db:
            db.execute(
                """UPDATE jobs SET model_name = ?, model_version = ?, model_sha256 = ?,
                       federated_round = ?, updated_at = ? WHERE id = ?""",
                (name, version, sha256, federated_round, self._clock(), job_id),
            )

    def fail_job(
        self, job_id: int, reason: str, detail: str | None, timings: dict[str, Any] | None = None
    ) -> None:
        now = self._clock()
        with self._tx() as db:
            db.execute(
                """UPDATE jobs SET state = ?, reason = ?, detail = ?,
                       timings_json = COALESCE(?, timings_json), finished_at = ?, updated_at = ?
                   WHERE id = ?""",
                (JobState.FAILED, reason, detail, _json_or_null(timings), now, now, job_id),
            )
        audit_job(self, job_id)

    def set_job_timing(self, job_id: int, key: str, seconds: float) -> None:
        with self._tx() as db:
            row = db.execute("SELECT timings_json FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no job {job_id}")
            timings = json.loads(row[0])
            timings[key] = seconds
            db.execute(
                "UPDATE jobs SET timings_json = ?, updated_at = ? WHERE id = ?",
                (json.dumps(timings), self._clock(), job_id),
            )

    def get_job(self, job_id: int) -> JobRecord:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            raise NotFoundError(f"no job {job_id}")
        return from_row(JobRecord, rows[0])

    def list_jobs(
        self,
        *,
        states: Iterable[JobState] | None = None,
        series_uid: str | None = None,
        limit: int = 200,
    ) -> list[JobRecord]:
        where: list[str] = []
        params: list[Any] = []
        if states is not None:
            wanted = [s.value for s in states]
            where.append(f"state IN ({','.join('?' * len(wanted))})")
            params.extend(wanted)
        if series_uid is not None:
            where.append("series_uid = ?")
            params.append(series_uid)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._query(
            f"SELECT * FROM jobs {clause} ORDER BY id DESC LIMIT ?", (*params, limit)
        )
        return [from_row(JobRecord, r) for r in rows]

    def job_counts(self) -> dict[str, int]:
        rows = self._query("SELECT state, count(*) FROM jobs GROUP BY state")
        counts = {state.value: 0 for state in JobState}
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    def retry_job(self, job_id: int) -> JobRecord:
        """Re-queue a retryable (FAILED) job: its series goes back to COMPLETE (same
        generation), so the worker runs the pipeline for it again. Refused when the series
        has moved on to a newer generation (that generation supersedes this job)."""
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no job {job_id}")
            job = from_row(JobRecord, row)
            if not job.state.retryable:
                raise StoreError(f"job {job_id} is {job.state}; only failed jobs can be retried")
            series = db.execute(
                "SELECT generation, state FROM series WHERE series_uid = ?", (job.series_uid,)
            ).fetchone()
            if series is None:
                raise NotFoundError(f"the series of job {job_id} is no longer recorded")
            if int(series[0]) != job.generation:
                raise StoreError(
                    f"job {job_id} is for generation {job.generation} of its series, which has "
                    f"been superseded by generation {series[0]}"
                )
            if series[1] in (SeriesState.RECEIVING, SeriesState.PROCESSING):
                raise StoreError(f"the series of job {job_id} is {series[1]}; try again later")
            db.execute(
                """UPDATE series SET state = ?, reason = NULL, detail = NULL, updated_at = ?
                   WHERE series_uid = ?""",
                (SeriesState.COMPLETE, now, job.series_uid),
            )
            row = db.execute(
                "UPDATE jobs SET state = ?, updated_at = ? WHERE id = ? RETURNING *",
                (JobState.QUEUED, now, job_id),
            ).fetchone()
        return from_row(JobRecord, row)

    def is_own_output(self, sop_uid: str) -> bool:
        """True when a job of this appliance wrote the SEG, SR or RTSTRUCT with this SOP
        UID (either SEG and SR of a job that made an all-frames pair)."""
        keys = (
            "seg_sop_uid",
            "sr_sop_uid",
            "seg_all_frames_sop_uid",
            "sr_all_frames_sop_uid",
            "rtstruct_sop_uid",
        )
        where = " OR ".join(f"json_extract(outputs_json, '$.{key}') = ?" for key in keys)
        rows = self._query(f"SELECT 1 FROM jobs WHERE {where} LIMIT 1", (sop_uid,) * len(keys))
        return bool(rows)
