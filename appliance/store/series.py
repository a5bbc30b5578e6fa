"""Instances, series and rejections: what the listener received and what became of it.

The listener calls :meth:`SeriesStore.record_instance` before it acknowledges a C-STORE,
so an acknowledged instance is always both in the spool and in this table. A series is
RECEIVING until quiet, then COMPLETE, taken by the worker (PROCESSING) and finished
(:attr:`SeriesState.finished`); a new instance re-opens it as a new generation.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from appliance.errors import InstanceConflictError, NotFoundError
from appliance.states import SeriesState
from appliance.store.audit import AuditEvent
from appliance.store.db import Database
from appliance.store.jobs import audit_job, complete_job, requeue_running_jobs, supersede_job
from appliance.store.outbox import insert_outbox
from appliance.store.records import (
    Claim,
    Enqueue,
    InstanceRecord,
    NewInstance,
    RejectionRecord,
    SeriesRecord,
    from_row,
    multi_value,
)
from dicom_bridge.uids import short_ref


class SeriesStore(Database):
    """Instances recorded, series completed, claimed, finished and re-queued."""

    def record_instance(
        self, item: NewInstance, publish: Callable[[], object] | None = None
    ) -> bool:
        """Record a durable instance; return True when it is new, False for a repeat with
        identical bytes (nothing is written: no row, no series change).

        What was acknowledged is never replaced: the same SOP Instance UID with other bytes
        (sha256 of the encoded dataset; where either side has none, the size), or under
        another study or series, raises :class:`InstanceConflictError` and leaves the
        recorded instance as it was. ``publish`` (the spool's rename into place) runs
        inside the transaction, only for a new instance, so the decision and the file are
        one atomic step even when two associations send the same UID at once.

        A new instance for a series that is complete, processing or processed re-opens it
        (state RECEIVING, generation + 1): it will be processed again and the new result
        supersedes the old one.
        """
        now = self._clock()
        with self._tx() as db:
            existing = db.execute(
                "SELECT study_uid, series_uid, size, sha256 FROM instances WHERE sop_uid = ?",
                (item.sop_uid,),
            ).fetchone()
            if existing is not None:
                _check_repeat(existing, item)
                self._bump(db, "instances_received", "repeat")
                return False
            db.execute(
                """INSERT INTO instances (sop_uid, series_uid, study_uid, sop_class_uid,
                       transfer_syntax_uid, path, size, calling_ae, instance_number,
                       number_of_frames, received_at, sha256)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?)""",
                (
                    item.sop_uid,
                    item.series_uid,
                    item.study_uid,
                    item.sop_class_uid,
                    item.transfer_syntax_uid,
                    str(item.path),
                    item.size,
                    item.calling_ae,
                    item.instance_number,
                    item.number_of_frames,
                    now,
                    item.sha256,
                ),
            )
            row = db.execute(
                "SELECT state, generation FROM series WHERE series_uid = ?", (item.series_uid,)
            ).fetchone()
            if row is None:
                db.execute(
                    """INSERT INTO series (series_uid, study_uid, modality, sop_class_uid,
                           series_description, body_part_examined, image_type, state,
                           generation, instances, first_instance_at, last_instance_at,
                           updated_at, contrast_bolus_agent, scanning_sequence,
                           echo_time_ms, repetition_time_ms, inversion_time_ms)
                       VALUES (?,?,?,?,?,?,?,?,1,1,?,?,?,?,?,?,?,?)""",
                    (
                        item.series_uid,
                        item.study_uid,
                        item.modality,
                        item.sop_class_uid,
                        item.series_description,
                        item.body_part_examined,
                        multi_value(item.image_type),
                        SeriesState.RECEIVING,
                        now,
                        now,
                        now,
                        item.contrast_bolus_agent,
                        multi_value(item.scanning_sequence),
                        item.echo_time_ms,
                        item.repetition_time_ms,
                        item.inversion_time_ms,
                    ),
                )
            else:
                reopen = row["state"] != SeriesState.RECEIVING
                db.execute(
                    """UPDATE series SET instances = instances + 1, last_instance_at = ?,
                           updated_at = ?, state = ?, generation = generation + ?,
                           purged_at = NULL,
                           reason = CASE WHEN ? THEN NULL ELSE reason END,
                           detail = CASE WHEN ? THEN NULL ELSE detail END
                       WHERE series_uid = ?""",
                    (now, now, SeriesState.RECEIVING, int(reopen), reopen, reopen, item.series_uid),
                )
            if publish is not None:
                publish()  # a failure rolls the row back: nothing acknowledged, nothing kept
            self._bump(db, "instances_received", "new")
        return True

    def has_instance(self, sop_uid: str) -> bool:
        return bool(self._query("SELECT 1 FROM instances WHERE sop_uid = ?", (sop_uid,)))

    def instance_count(self) -> int:
        return int(self._query("SELECT count(*) FROM instances")[0][0])

    def instance_uids(self) -> set[str]:
        return {r[0] for r in self._query("SELECT sop_uid FROM instances")}

    def series_instances(self, series_uid: str) -> list[InstanceRecord]:
        rows = self._query(
            "SELECT * FROM instances WHERE series_uid = ? ORDER BY instance_number, sop_uid",
            (series_uid,),
        )
        return [from_row(InstanceRecord, r) for r in rows]

    def instances_by_sop(self, sop_uids: Iterable[str]) -> list[InstanceRecord]:
        """The recorded instances among ``sop_uids`` (unknown UIDs are left out)."""
        wanted = list(dict.fromkeys(sop_uids))
        found: list[InstanceRecord] = []
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows = self._query(
                f"SELECT * FROM instances WHERE sop_uid IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            found.extend(from_row(InstanceRecord, r) for r in rows)
        return found

    def get_series(self, series_uid: str) -> SeriesRecord:
        rows = self._query("SELECT * FROM series WHERE series_uid = ?", (series_uid,))
        if not rows:
            raise NotFoundError(f"no series {series_uid}")
        return from_row(SeriesRecord, rows[0])

    def list_series(self, *, limit: int = 1000) -> list[SeriesRecord]:
        rows = self._query("SELECT * FROM series ORDER BY last_instance_at DESC LIMIT ?", (limit,))
        return [from_row(SeriesRecord, r) for r in rows]

    def series_counts(self) -> dict[str, int]:
        rows = self._query("SELECT state, count(*) FROM series GROUP BY state")
        counts = {state.value: 0 for state in SeriesState}
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    def complete_quiet_series(self, quiet_seconds: float) -> list[str]:
        """Mark RECEIVING series with no instance for ``quiet_seconds`` as COMPLETE."""
        cutoff = self._clock() - quiet_seconds
        with self._tx() as db:
            rows = db.execute(
                """UPDATE series SET state = ?, updated_at = ?
                   WHERE state = ? AND last_instance_at <= ?
                   RETURNING series_uid, study_uid, modality, instances, generation""",
                (SeriesState.COMPLETE, self._clock(), SeriesState.RECEIVING, cutoff),
            ).fetchall()
        for r in rows:
            callers = self._query(
                "SELECT DISTINCT calling_ae FROM instances WHERE series_uid = ?", (r[0],)
            )
            self.audit.record(
                AuditEvent.SERIES_RECEIVED,
                study=self.audit.ref(r[1]),
                series=self.audit.ref(r[0]),
                modality=r[2],
                instances=int(r[3]),
                generation=int(r[4]),
                calling_ae=sorted(c[0] for c in callers),
            )
        return [r[0] for r in rows]

    def claim_complete_series(self) -> Claim | None:
        """Take the oldest COMPLETE series for processing (state PROCESSING)."""
        with self._tx() as db:
            row = db.execute(
                """UPDATE series SET state = ?, updated_at = ?
                   WHERE series_uid = (SELECT series_uid FROM series WHERE state = ?
                                       ORDER BY last_instance_at LIMIT 1)
                   RETURNING series_uid, generation""",
                (SeriesState.PROCESSING, self._clock(), SeriesState.COMPLETE),
            ).fetchone()
        return from_row(Claim, row) if row else None

    def finish_series(
        self,
        claim: Claim,
        state: SeriesState,
        *,
        reason: str | None = None,
        detail: str | None = None,
        result: dict[str, Any] | None = None,
        job_id: int | None = None,
        job_outputs: dict[str, Any] | None = None,
        job_timings: dict[str, Any] | None = None,
        enqueue: Sequence[Enqueue] = (),
    ) -> bool:
        """Record the outcome of a claim. False when the series was re-opened meanwhile
        (its result is then stale and must be discarded).

        With ``job_outputs``, job ``job_id`` becomes DONE and the ``enqueue`` items enter
        the outbox in the same transaction, so a stale result is never sent: if the series
        was re-opened, the job becomes FAILED with reason ``superseded`` instead. Without
        them, ``enqueue`` (a not-processed notice) enters the outbox only if the series is
        still current.
        """
        if not SeriesState(state).finished:
            raise ValueError(f"a finished series cannot be {state}")
        now = self._clock()
        with self._tx() as db:
            cur = db.execute(
                """UPDATE series SET state = ?, reason = ?, detail = ?, updated_at = ?,
                       result_generation = CASE WHEN ? IS NULL THEN result_generation
                                                ELSE generation END,
                       result_json = COALESCE(?, result_json)
                   WHERE series_uid = ? AND generation = ? AND state = ?""",
                (
                    state,
                    reason,
                    detail,
                    now,
                    None if result is None else 1,
                    None if result is None else json.dumps(result),
                    claim.series_uid,
                    claim.generation,
                    SeriesState.PROCESSING,
                ),
            )
            current = cur.rowcount == 1
            if job_id is not None and job_outputs is not None:
                if current:
                    complete_job(db, job_id, job_outputs, job_timings, now)
                    for item in enqueue:
                        insert_outbox(
                            db, item.destination, item.path, item.sop_uid, claim.series_uid, now
                        )
                else:
                    supersede_job(db, job_id, job_timings, now)
            elif current:  # a series without a job's outputs: its notices, if any
                for item in enqueue:
                    insert_outbox(
                        db, item.destination, item.path, item.sop_uid, claim.series_uid, now
                    )
        if job_id is not None and job_outputs is not None:
            audit_job(self, job_id, queued=len(enqueue) if current else 0)
        else:
            self.audit.record(
                AuditEvent.SERIES_FINISHED,
                series=self.audit.ref(claim.series_uid),
                generation=claim.generation,
                state=state.value,
                reason=reason,
                current=current,
            )
        return current

    def series_uids(self) -> set[str]:
        return {r[0] for r in self._query("SELECT series_uid FROM series")}

    def mark_reindexed(
        self, series_uid: str, state: SeriesState, *, generation: int, detail: str
    ) -> bool:
        """After ``appliance storage reindex``: a series rebuilt from the spool (still
        RECEIVING) is finished with reason ``reindexed``, without a job or an outbox row.
        With a DONE ``state`` its newest result on disk (``generation``) is its current
        one, so a new instance re-opens it as ``generation + 1``. False when the series
        was not RECEIVING (an instance arrived meanwhile or it was not rebuilt)."""
        if not SeriesState(state).finished:
            raise ValueError(f"a finished series cannot be {state}")
        done = state is SeriesState.DONE
        with self._tx() as db:
            cur = db.execute(
                """UPDATE series SET state = ?, reason = 'reindexed', detail = ?,
                       generation = MAX(generation, ?),
                       result_generation = CASE WHEN ? THEN ? ELSE result_generation END,
                       updated_at = ?
                   WHERE series_uid = ? AND state = ?""",
                (
                    state,
                    detail,
                    generation,
                    done,
                    generation,
                    self._clock(),
                    series_uid,
                    SeriesState.RECEIVING,
                ),
            )
        if cur.rowcount == 1:
            self.audit.record(
                AuditEvent.SERIES_FINISHED,
                series=self.audit.ref(series_uid),
                generation=generation,
                state=SeriesState(state).value,
                reason="reindexed",
                current=True,
            )
        return cur.rowcount == 1

    def release_reindexed(self) -> int:
        """Series held by a reindex (SKIPPED, reason ``reindexed``) become COMPLETE: the
        worker processes them and their results are sent."""
        with self._tx() as db:
            cur = db.execute(
                """UPDATE series SET state = ?, reason = NULL, detail = NULL, updated_at = ?
                   WHERE state = ? AND reason = 'reindexed'""",
                (SeriesState.COMPLETE, self._clock(), SeriesState.SKIPPED),
            )
            return cur.rowcount

    def requeue_interrupted(self) -> int:
        """After a restart: series left PROCESSING go back to COMPLETE (their jobs QUEUED)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE series SET state = ?, updated_at = ? WHERE state = ?",
                (SeriesState.COMPLETE, self._clock(), SeriesState.PROCESSING),
            )
            requeue_running_jobs(db, self._clock())
            return cur.rowcount


def _check_repeat(existing: sqlite3.Row, item: NewInstance) -> None:
    """Raise :class:`InstanceConflictError` unless ``item`` repeats the recorded instance."""
    ref = short_ref(item.sop_uid)
    if existing["study_uid"] != item.study_uid or existing["series_uid"] != item.series_uid:
        raise InstanceConflictError(
            f"SOP instance {ref} was already acknowledged in series "
            f"{short_ref(existing['series_uid'])}; the repeat names series "
            f"{short_ref(item.series_uid)}"
        )
    if existing["sha256"] is not None and item.sha256 is not None:
        same = existing["sha256"] == item.sha256
    else:  # a row from before schema 5, or a caller without a hash: the size must match
        same = existing["size"] == item.size
    if not same:
        raise InstanceConflictError(
            f"SOP instance {ref} was already acknowledged with different content "
            f"({existing['size']} bytes recorded, {item.size} received)"
        )


class RejectionStore(Database):
    """Refused associations, instances and series, for the operator and the audit trail."""

    def record_rejection(
        self,
        scope: str,
        reason: str,
        *,
        status: int | None = None,
        calling_ae: str = "",
        peer_host: str = "",
        ref: str | None = None,
    ) -> None:
        with self._tx() as db:
            db.execute(
                """INSERT INTO rejections (at, scope, reason, status, calling_ae, peer_host, ref)
                   VALUES (?,?,?,?,?,?,?)""",
                (self._clock(), scope, reason, status, calling_ae, peer_host, ref),
            )
        if scope == "association":
            self.audit.record(
                AuditEvent.ASSOCIATION,
                outcome="refused",
                reason=reason,
                calling_ae=calling_ae,
                peer=peer_host,
            )
        else:
            self.audit.record(
                AuditEvent.INSTANCE_REJECTED,
                reason=reason,
                status=None if status is None else f"0x{status:04X}",
                calling_ae=calling_ae,
                peer=peer_host,
            )

    def recent_rejections(self, limit: int = 20) -> list[RejectionRecord]:
        rows = self._query("SELECT * FROM rejections ORDER BY id DESC LIMIT ?", (limit,))
        return [from_row(RejectionRecord, r) for r in rows]

    def rejection_counts(self) -> dict[tuple[str, int | None], int]:
        """Refused associations and instances by (scope, DICOM status)."""
        rows = self._query("SELECT scope, status, count(*) FROM rejections GROUP BY scope, status")
        return {(r[0], None if r[1] is None else int(r[1])): int(r[2]) for r in rows}
