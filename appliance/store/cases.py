"""Annotated cases (training and hold-out data made from corrected segmentations) and
the annotations refused on the way (:mod:`appliance.cases`).

At most one case per (source series, task) is ACTIVE: the newest annotation wins, the one
it replaces becomes SUPERSEDED.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from appliance.errors import NotFoundError, StoreError
from appliance.states import CaseOrigin, CaseSplit, CaseState
from appliance.store.audit import AuditEvent
from appliance.store.db import Database
from appliance.store.records import CaseRecord, CaseRefusal, NewCase, from_row


class CaseStore(Database):
    """Cases: added (superseding), listed, excluded or re-activated, counted; refusals."""

    def add_case(self, case: NewCase) -> tuple[CaseRecord, tuple[int, ...]]:
        """Record a case (ACTIVE). An ACTIVE case of the same source series and task
        becomes SUPERSEDED: the newest annotation of a series wins. Returns the case and
        the ids it superseded. An ``annotation_ref`` already recorded is a StoreError."""
        now = self._clock()
        with self._tx() as db:
            existing = db.execute(
                "SELECT id FROM cases WHERE annotation_ref = ?", (case.annotation_ref,)
            ).fetchone()
            if existing is not None:
                raise StoreError(f"this annotation is already case {existing[0]}")
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
                       labels_json, segments_json, created_at, updated_at)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING *""",
                (
                    case.task,
                    case.source_series_uid,
                    case.study_uid,
                    case.study_ref,
                    case.annotation_ref,
                    case.seg_sop_uid,
                    case.origin,
                    CaseState.ACTIVE,
                    case.split,
                    str(case.labels_path),
                    json.dumps(case.labels),
                    json.dumps(case.segments),
                    now,
                    now,
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
            split=record.split.value,
            superseded=sorted(int(r[0]) for r in superseded),
        )
        return record, tuple(sorted(int(r[0]) for r in superseded))

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

    def set_case_state(self, case_id: int, state: CaseState) -> CaseRecord:
        """Exclude a case, or make it ACTIVE again; re-activating one supersedes the
        ACTIVE case of the same series and task (at most one is active)."""
        state = CaseState(state)
        if state is CaseState.SUPERSEDED:
            raise StoreError("a case becomes superseded only when a newer one arrives")
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT * FROM cases WHERE id = ?", (case_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no case {case_id}")
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
    ) -> CaseRefusal:
        with self._tx() as db:
            row = db.execute(
                """INSERT INTO case_refusals (at, origin, annotation_ref, seg_series_uid,
                       source_series_uid, study_ref, reason, detail)
                   VALUES (?,?,?,?,?,?,?,?) RETURNING *""",
                (
                    self._clock(),
                    CaseOrigin(origin),
                    annotation_ref,
                    seg_series_uid,
                    source_series_uid,
                    study_ref,
                    reason,
                    detail,
                ),
            ).fetchone()
        return from_row(CaseRefusal, row)

    def list_case_refusals(self, limit: int = 100) -> list[CaseRefusal]:
        rows = self._query("SELECT * FROM case_refusals ORDER BY id DESC LIMIT ?", (limit,))
        return [from_row(CaseRefusal, r) for r in rows]
