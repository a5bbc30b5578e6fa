"""The series of one study, for tasks that take several series by role (``flow/study.py``).

A study's job runs on its reference series only. The other role series end SKIPPED
(``study_input``); a reference whose roles are missing ends SKIPPED (``waiting_for_roles``,
later ``missing_roles``) and is put back to COMPLETE, in one conditional transaction, when
the missing series arrive: a series is claimed by one worker at a time, so only one
worker ever runs a study's job.
"""

from __future__ import annotations

from collections.abc import Sequence

from appliance.states import SeriesState, StudyReason
from appliance.store.audit import AuditEvent
from appliance.store.db import Database
from appliance.store.records import Claim, SeriesRecord, from_row

_WAITING = (StudyReason.WAITING_FOR_ROLES.value, StudyReason.MISSING_ROLES.value)


class StudyStore(Database):
    """A study's series; waiting reference series re-queued or given up on."""

    def study_series(self, study_uid: str) -> list[SeriesRecord]:
        """Every series of the study, oldest first."""
        rows = self._query(
            "SELECT * FROM series WHERE study_uid = ? ORDER BY first_instance_at, series_uid",
            (study_uid,),
        )
        return [from_row(SeriesRecord, r) for r in rows]

    def requeue_study_reference(self, series_uid: str) -> bool:
        """A reference series waiting for roles (``waiting_for_roles`` or ``missing_roles``)
        becomes COMPLETE again, so the worker claims it and runs the study's job. False
        when it was not waiting (already re-queued, processing or processed)."""
        with self._tx() as db:
            row = db.execute(
                """UPDATE series SET state = ?, reason = NULL, detail = NULL, updated_at = ?
                   WHERE series_uid = ? AND state = ? AND reason IN (?, ?)
                   RETURNING generation""",
                (SeriesState.COMPLETE, self._clock(), series_uid, SeriesState.SKIPPED, *_WAITING),
            ).fetchone()
        if row is not None:
            self.audit.record(
                AuditEvent.SERIES_REQUEUED,
                series=self.audit.ref(series_uid),
                generation=int(row[0]),
                reason="study_roles_arrived",
            )
        return row is not None

    def waiting_references(self, waited_seconds: float) -> list[SeriesRecord]:
        """Reference series that have waited for roles (``waiting_for_roles``) for at
        least ``waited_seconds``."""
        rows = self._query(
            "SELECT * FROM series WHERE state = ? AND reason = ? AND updated_at <= ?",
            (
                SeriesState.SKIPPED,
                StudyReason.WAITING_FOR_ROLES,
                self._clock() - waited_seconds,
            ),
        )
        return [from_row(SeriesRecord, r) for r in rows]

    def give_up_waiting(self, claim: Claim, detail: str) -> bool:
        """A waiting reference series (this generation) ends ``missing_roles`` with
        ``detail``. False when it was no longer waiting."""
        with self._tx() as db:
            cur = db.execute(
                """UPDATE series SET reason = ?, detail = ?, updated_at = ?
                   WHERE series_uid = ? AND generation = ? AND state = ? AND reason = ?""",
                (
                    StudyReason.MISSING_ROLES,
                    detail,
                    self._clock(),
                    claim.series_uid,
                    claim.generation,
                    SeriesState.SKIPPED,
                    StudyReason.WAITING_FOR_ROLES,
                ),
            )
        if cur.rowcount == 1:
            self.audit.record(
                AuditEvent.SERIES_FINISHED,
                series=self.audit.ref(claim.series_uid),
                generation=claim.generation,
                state=SeriesState.SKIPPED.value,
                reason=StudyReason.MISSING_ROLES.value,
                current=True,
            )
        return cur.rowcount == 1

    def mark_study_inputs(self, inputs: Sequence[Claim], detail: str) -> int:
        """After a study's job: its other role series (these generations) end SKIPPED
        ``study_input`` with ``detail`` (naming the reference series and the job), whether
        they were still COMPLETE or already skipped as inputs. A series being processed
        is left to its worker, which skips it the same way. The number changed."""
        changed = 0
        with self._tx() as db:
            for item in inputs:
                cur = db.execute(
                    """UPDATE series SET state = ?, reason = ?, detail = ?, updated_at = ?
                       WHERE series_uid = ? AND generation = ?
                         AND (state = ? OR (state = ? AND reason = ?))""",
                    (
                        SeriesState.SKIPPED,
                        StudyReason.STUDY_INPUT,
                        detail,
                        self._clock(),
                        item.series_uid,
                        item.generation,
                        SeriesState.COMPLETE,
                        SeriesState.SKIPPED,
                        StudyReason.STUDY_INPUT,
                    ),
                )
                changed += cur.rowcount
        return changed
