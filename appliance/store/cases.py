"""Annotated cases (training and hold-out data made from corrected segmentations) and
the annotations refused on the way (:mod:`appliance.cases`).

At most one case per (source series, task) is ACTIVE: the newest annotation wins, the one
it replaces becomes SUPERSEDED, unless it needs review (PENDING: implausible, from a caller
not trusted for direct use, or from another caller than the ACTIVE case's); an admin then
accepts (ACTIVE) or rejects (REJECTED) it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from appliance.errors import NotFoundError, StoreError
from appliance.states import CaseOrigin, CaseSplit, CaseState, JobState
from appliance.store.audit import AuditEvent
from appliance.store.db import Database
from appliance.store.records import CaseRecord, CaseRefusal, NewCase, from_row


class CaseStore(Database):
    """Cases: added (superseding or pending), reviewed, listed, excluded or re-activated,
    counted; refusals."""

    def add_case(self, case: NewCase) -> tuple[CaseRecord, tuple[int, ...]]:
        """Record a case: ACTIVE, superseding the ACTIVE case of the same source series and
        task (the newest annotation of a series wins), or PENDING (superseding nothing)
        when ``case.review`` names reasons, or when that ACTIVE case came from another
        caller (reason ``conflicts_with_case N``; a DICOM annotation never silently
        replaces another caller's, a CLI import is an admin's and does). Returns the case
        and the ids it superseded. An ``annotation_ref`` already recorded is a StoreError."""
        now = self._clock()
        review = list(case.review)
        with self._tx() as db:
            existing = db.execute(
                "SELECT id FROM cases WHERE annotation_ref = ?", (case.annotation_ref,)
            ).fetchone()
            if existing is not None:
                raise StoreError(f"this annotation is already case {existing[0]}")
            if CaseOrigin(case.origin) is CaseOrigin.DICOM:
                review += [
                    f"conflicts_with_case {int(r[0])}"
                    for r in db.execute(
                        """SELECT id FROM cases WHERE source_series_uid = ? AND task = ?
                           AND state = ? AND calling_ae IS NOT ?""",
                        (case.source_series_uid, case.task, CaseState.ACTIVE, case.calling_ae),
                    ).fetchall()
                ]
            superseded = []
            if not review:
                superseded = db.execute(
                    """UPDATE cases SET state = ?, updated_at = ?
                       WHERE source_series_uid = ? AND task = ? AND state = ? RETURNING id""",
                    (
                        CaseState.SUPERSEDED,
                        now,
                        case.source_series_uid,
                        case.task,
                        CaseState.ACTIVE,
                    ),
                ).fetchall()
            row = db.execute(
                """INSERT INTO cases (task, source_series_uid, study_uid, study_ref,
                       annotation_ref, seg_sop_uid, origin, state, split, labels_path,
                       labels_json, segments_json, created_at, updated_at, calling_ae,
                       review_json)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING *""",
                (
                    case.task,
                    case.source_series_uid,
                    case.study_uid,
                    case.study_ref,
                    case.annotation_ref,
                    case.seg_sop_uid,
                    case.origin,
                    CaseState.PENDING if review else CaseState.ACTIVE,
                    case.split,
                    str(case.labels_path),
                    json.dumps(case.labels),
                    json.dumps(case.segments),
                    now,
                    now,
                    case.calling_ae,
                    json.dumps(review),
                ),
            ).fetchone()
        record = from_row(CaseRecord, row)
        self.audit.record(
            AuditEvent.CASE_ADDED,
            case=record.id,
            task=record.task,
            study=self.audit.ref(record.study_uid),
            series=self.audit.ref(record.source_series_uid),
            origin=record.origin.value,
            calling_ae=record.calling_ae,
            state=record.state.value,
            review=record.review,
            split=record.split.value,
            superseded=sorted(int(r[0]) for r in superseded),
        )
        return record, tuple(sorted(int(r[0]) for r in superseded))

    def prediction_voxels(self, series_uid: str, task: str) -> dict[str, int] | None:
        """The voxels per label of the newest finished job's mask of a series and task
        (the active model's own prediction), or None when there is none."""
        rows = self._query(
            """SELECT json_extract(outputs_json, '$.voxels') FROM jobs
               WHERE series_uid = ? AND task = ? AND state = ?
               AND json_extract(outputs_json, '$.voxels') IS NOT NULL
               ORDER BY generation DESC, id DESC LIMIT 1""",
            (series_uid, task, JobState.DONE),
        )
        if not rows or rows[0][0] is None:
            return None
        return {str(k): int(v) for k, v in json.loads(rows[0][0]).items()}

    def review_case(self, case_id: int, accept: bool, *, by: str = "admin") -> CaseRecord:
        """An admin's decision on a PENDING case: accepted, it becomes ACTIVE (superseding
        the series' ACTIVE case of the task); rejected, it becomes REJECTED. Audited
        (``case_reviewed``). A case that is not PENDING is a StoreError."""
        case = self.get_case(case_id)
        if case.state is not CaseState.PENDING:
            raise StoreError(f"case {case_id} is {case.state.value}, not pending review")
        record = self.set_case_state(
            case_id, CaseState.ACTIVE if accept else CaseState.REJECTED, _reviewing=True
        )
        self.audit.record(
            AuditEvent.CASE_REVIEWED,
            case=record.id,
            task=record.task,
            series=self.audit.ref(record.source_series_uid),
            calling_ae=record.calling_ae,
            decision="accepted" if accept else "rejected",
            review=record.review,
            state=record.state.value,
            by=by,
        )
        return record

    def get_case(self, case_id: int) -> CaseRecord:
        rows = self._query("SELECT * FROM cases WHERE id = ?", (case_id,))
        if not rows:
            raise NotFoundError(f"no case {case_id}")
        return from_row(CaseRecord, rows[0])

    def case_by_annotation(self, annotation_ref: str) -> CaseRecord | None:
        rows = self._query("SELECT * FROM cases WHERE annotation_ref = ?", (annotation_ref,))
        return from_row(CaseRecord, rows[0]) if rows else None

    def list_cases(
        self,
        *,
        task: str | None = None,
        states: Iterable[CaseState] | None = None,
        split: CaseSplit | None = None,
        limit: int = 10000,
    ) -> list[CaseRecord]:
        """Cases, oldest first (a stable order for training and evaluation)."""
        where: list[str] = []
        params: list[Any] = []
        if task is not None:
            where.append("task = ?")
            params.append(task)
        if states is not None:
            wanted = [CaseState(s).value for s in states]
            where.append(f"state IN ({','.join('?' * len(wanted))})")
            params.extend(wanted)
        if split is not None:
            where.append("split = ?")
            params.append(CaseSplit(split).value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._query(f"SELECT * FROM cases {clause} ORDER BY id LIMIT ?", (*params, limit))
        return [from_row(CaseRecord, r) for r in rows]

    def set_case_state(
        self, case_id: int, state: CaseState, *, _reviewing: bool = False
    ) -> CaseRecord:
        """Exclude a case, or make it ACTIVE again; re-activating one supersedes the
        ACTIVE case of the same series and task (at most one is active). A PENDING case
        leaves review only by :meth:`review_case` (accept or reject)."""
        state = CaseState(state)
        if state is CaseState.SUPERSEDED:
            raise StoreError("a case becomes superseded only when a newer one arrives")
        if not _reviewing and state in (CaseState.PENDING, CaseState.REJECTED):
            raise StoreError(f"a case becomes {state.value} only by review")
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT * FROM cases WHERE id = ?", (case_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no case {case_id}")
            if row["state"] == CaseState.PENDING and not _reviewing:
                raise StoreError(
                    f"case {case_id} is pending review: appliance cases accept|reject {case_id}"
                )
            if state is CaseState.ACTIVE and row["state"] != CaseState.ACTIVE:
                db.execute(
                    """UPDATE cases SET state = ?, updated_at = ?
                       WHERE source_series_uid = ? AND task = ? AND state = ? AND id != ?""",
                    (
                        CaseState.SUPERSEDED,
                        now,
                        row["source_series_uid"],
                        row["task"],
                        CaseState.ACTIVE,
                        case_id,
                    ),
                )
            row = db.execute(
                "UPDATE cases SET state = ?, updated_at = ? WHERE id = ? RETURNING *",
                (state, now, case_id),
            ).fetchone()
        return from_row(CaseRecord, row)

    def case_counts(self) -> dict[str, dict[str, int]]:
        """``{task: {"train": n, "held_out": n, "excluded": n, "superseded": n}}``; the
        split counts are of ACTIVE cases."""
        rows = self._query("SELECT task, state, split, count(*) FROM cases GROUP BY 1, 2, 3")
        counts: dict[str, dict[str, int]] = {}
        for task, state, split, n in rows:
            entry = counts.setdefault(
                task, {"train": 0, "held_out": 0, "excluded": 0, "superseded": 0}
            )
            key = split if state == CaseState.ACTIVE else state
            entry[key] = entry.get(key, 0) + int(n)
        return counts

    def record_case_refusal(
        self,
        origin: CaseOrigin,
        reason: str,
        detail: str,
        *,
        annotation_ref: str | None = None,
        seg_series_uid: str | None = None,
        source_series_uid: str | None = None,
        study_ref: str | None = None,
        calling_ae: str | None = None,
    ) -> CaseRefusal:
        with self._tx() as db:
            row = db.execute(
                """INSERT INTO case_refusals (at, origin, annotation_ref, seg_series_uid,
                       source_series_uid, study_ref, reason, detail, calling_ae)
                   VALUES (?,?,?,?,?,?,?,?,?) RETURNING *""",
                (
                    self._clock(),
                    CaseOrigin(origin),
                    annotation_ref,
                    seg_series_uid,
                    source_series_uid,
                    study_ref,
                    reason,
                    detail,
                    calling_ae,
                ),
            ).fetchone()
        return from_row(CaseRefusal, row)

    def list_case_refusals(self, limit: int = 100) -> list[CaseRefusal]:
        rows = self._query("SELECT * FROM case_refusals ORDER BY id DESC LIMIT ?", (limit,))
        return [from_row(CaseRefusal, r) for r in rows]
