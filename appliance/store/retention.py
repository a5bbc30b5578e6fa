"""What retention needs to decide what may go, and the guarded purges themselves.

The rules for *when* something may be purged (ages, categories) are
:mod:`appliance.ops.retention`'s; the store answers the questions only it can answer
atomically: whether a series, a job's results or a case is still needed (see each
``purge``/``mark`` method's docstring for the rule, checked in SQL inside the transaction
that purges).
"""

from __future__ import annotations

from appliance.states import SeriesState
from appliance.store.db import Database
from appliance.store.records import (
    CaseRecord,
    InstanceRecord,
    RetentionJob,
    RetentionSeries,
    from_row,
)

#: A series (``s``) still in a training set: the source, or holding the SEG, of an
#: ACTIVE case. Such a series is never purged.
_IN_TRAINING_SET = """EXISTS (SELECT 1 FROM cases c WHERE c.state = 'active' AND (
                        c.source_series_uid = s.series_uid OR c.seg_sop_uid IN
                        (SELECT sop_uid FROM instances i WHERE i.series_uid = s.series_uid)))"""

#: The states in which a series' instances may be purged.
_FINISHED = tuple(state.value for state in SeriesState if state.finished)


class RetentionStore(Database):
    """Series, jobs' results and cases as retention sees them; purges that re-check."""

    def retention_series(self) -> list[RetentionSeries]:
        """Every series with stored instances, with what retention needs to decide."""
        rows = self._query(
            f"""SELECT s.series_uid, s.study_uid, s.modality, s.state, s.generation,
                   s.updated_at,
                   (SELECT count(*) FROM instances i WHERE i.series_uid = s.series_uid) AS files,
                   (SELECT COALESCE(sum(size), 0) FROM instances i
                        WHERE i.series_uid = s.series_uid) AS bytes,
                   (SELECT count(*) FROM outbox o WHERE o.series_uid = s.series_uid) AS sends,
                   (SELECT count(*) FROM outbox o WHERE o.series_uid = s.series_uid
                        AND o.state != 'sent') AS unsent,
                   (SELECT max(updated_at) FROM outbox o WHERE o.series_uid = s.series_uid
                        AND o.state = 'sent') AS delivered_at,
                   (SELECT count(*) FROM jobs j WHERE j.series_uid = s.series_uid
                        AND j.state IN ('queued', 'running')) AS open_jobs,
                   (SELECT max(finished_at) FROM jobs j WHERE j.series_uid = s.series_uid
                        AND j.generation = s.generation) AS job_finished_at,
                   (SELECT j.state FROM jobs j WHERE j.series_uid = s.series_uid
                        AND j.generation = s.generation ORDER BY j.id DESC LIMIT 1) AS job_state,
                   {_IN_TRAINING_SET} AS in_training_set
               FROM series s
               WHERE EXISTS (SELECT 1 FROM instances i WHERE i.series_uid = s.series_uid)
               ORDER BY s.updated_at"""
        )
        return [from_row(RetentionSeries, r) for r in rows]

    def purge_series_instances(
        self, series_uid: str, generation: int, planned_at: float
    ) -> list[InstanceRecord]:
        """Forget the stored instances of a finished series (for retention) and return them
        so their files can go. Nothing happens (empty list) when the series has moved on
        since ``planned_at``: a new generation, a new instance received (a repeat with
        identical bytes writes nothing, so it changes nothing here), a send not yet
        acknowledged, a job queued, or a training case made from it.

        The rule, checked in SQL in the purging transaction: the series is finished
        (:attr:`SeriesState.finished`) at the planned generation and not touched since,
        has no open job, no unacknowledged send, and is not in a training set."""
        with self._tx() as db:
            row = db.execute(
                f"""SELECT 1 FROM series s WHERE s.series_uid = ? AND s.generation = ?
                       AND s.updated_at <= ?
                       AND s.state IN ({",".join("?" * len(_FINISHED))})
                       AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.series_uid = s.series_uid
                                       AND j.state IN ('queued', 'running'))
                       AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.series_uid = s.series_uid
                                       AND o.state != 'sent')
                       AND NOT {_IN_TRAINING_SET}
                """,
                (series_uid, generation, planned_at, *_FINISHED),
            ).fetchone()
            if row is None:
                return []
            rows = db.execute(
                "DELETE FROM instances WHERE series_uid = ? RETURNING *", (series_uid,)
            ).fetchall()
            db.execute(
                "UPDATE series SET instances = 0, purged_at = ? WHERE series_uid = ?",
                (self._clock(), series_uid),
            )
        return [from_row(InstanceRecord, r) for r in rows]

    def retention_jobs(self) -> list[RetentionJob]:
        """Finished jobs whose result files are still kept."""
        rows = self._query(
            """SELECT j.id, j.series_uid, j.generation, j.state, j.finished_at,
                   (SELECT count(*) FROM outbox o WHERE o.series_uid = j.series_uid
                        AND o.state != 'sent') AS unsent,
                   (SELECT count(*) FROM outbox o WHERE o.series_uid = j.series_uid) AS sends,
                   (SELECT max(updated_at) FROM outbox o WHERE o.series_uid = j.series_uid
                        AND o.state = 'sent') AS delivered_at
               FROM jobs j WHERE j.state IN ('done', 'failed') AND j.results_purged_at IS NULL
                   AND j.finished_at IS NOT NULL
               ORDER BY j.id"""
        )
        return [from_row(RetentionJob, r) for r in rows]

    def mark_results_purged(self, job_id: int) -> bool:
        """Record that a job's result files are gone; False when they still have sends
        waiting (then nothing may be removed). The rule: no outbox item of the job's
        series is unacknowledged."""
        with self._tx() as db:
            cur = db.execute(
                """UPDATE jobs SET results_purged_at = ? WHERE id = ? AND NOT EXISTS
                       (SELECT 1 FROM outbox o WHERE o.series_uid = jobs.series_uid
                        AND o.state != 'sent')""",
                (self._clock(), job_id),
            )
            return cur.rowcount == 1

    def retention_cases(self) -> list[CaseRecord]:
        """Cases out of the training set (excluded, superseded, rejected) whose files are
        kept; a PENDING case is kept for its review."""
        rows = self._query(
            """SELECT * FROM cases WHERE state NOT IN ('active', 'pending')
               AND purged_at IS NULL ORDER BY id"""
        )
        return [from_row(CaseRecord, r) for r in rows]

    def mark_case_purged(self, case_id: int) -> bool:
        """Record that a case's files are gone; False when it is in a training set again.
        The rule: the case is neither ACTIVE nor PENDING."""
        with self._tx() as db:
            cur = db.execute(
                """UPDATE cases SET purged_at = ? WHERE id = ?
                   AND state NOT IN ('active', 'pending')""",
                (self._clock(), case_id),
            )
            return cur.rowcount == 1
