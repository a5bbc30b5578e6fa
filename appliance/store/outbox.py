"""The outbox: objects (SEG, SR) to send to a destination, with retries and dead letters."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from appliance.errors import NotFoundError, StoreError
from appliance.states import OutboxState
from appliance.store.audit import AuditEvent
from appliance.store.db import Database
from appliance.store.records import OutboxItem, from_row


def insert_outbox(
    db: sqlite3.Connection,
    destination: str,
    path: Path,
    sop_uid: str,
    series_uid: str | None,
    now: float,
) -> int:
    """Inside ``db``'s transaction: a new PENDING item, due now; returns its id."""
    cur = db.execute(
        """INSERT INTO outbox (destination, path, sop_uid, series_uid, state, attempts,
               next_attempt_at, created_at, updated_at) VALUES (?,?,?,?,?,0,?,?,?)""",
        (destination, str(path), sop_uid, series_uid, OutboxState.PENDING, now, now, now),
    )
    return int(cur.lastrowid or 0)


class OutboxStore(Database):
    """Outbox items: enqueued, claimed, sent or failed, retried, listed."""

    def enqueue(
        self, destination: str, path: Path, sop_uid: str, series_uid: str | None = None
    ) -> int:
        now = self._clock()
        with self._tx() as db:
            return insert_outbox(db, destination, path, sop_uid, series_uid, now)

    def claim_due(self, limit: int = 100) -> list[OutboxItem]:
        """Take due PENDING items (state SENDING), oldest first."""
        now = self._clock()
        with self._tx() as db:
            rows = db.execute(
                """UPDATE outbox SET state = ?, updated_at = ?
                   WHERE id IN (SELECT id FROM outbox WHERE state = ? AND next_attempt_at <= ?
                                ORDER BY next_attempt_at, id LIMIT ?)
                   RETURNING *""",
                (OutboxState.SENDING, now, OutboxState.PENDING, now, limit),
            ).fetchall()
        return sorted((from_row(OutboxItem, r) for r in rows), key=lambda item: item.id)

    def mark_sent(self, item_id: int, status: int | None, *, peer: str | None = None) -> None:
        """``peer``: where it went (``AE@host:port``), for the audit trail."""
        with self._tx() as db:
            row = db.execute(
                """UPDATE outbox SET state = ?, attempts = attempts + 1, last_status = ?,
                       last_error = NULL, updated_at = ? WHERE id = ? RETURNING *""",
                (OutboxState.SENT, status, self._clock(), item_id),
            ).fetchone()
        if row is not None:
            item = from_row(OutboxItem, row)
            self._audit_outbox(AuditEvent.OBJECT_SENT, item, peer=peer, status=status)

    def _audit_outbox(self, event: AuditEvent, item: OutboxItem, **extra: Any) -> None:
        status = extra.pop("status", None)
        self.audit.record(
            event,
            outbox=item.id,
            object=self.audit.ref(item.sop_uid),
            series=None if item.series_uid is None else self.audit.ref(item.series_uid),
            destination=item.destination,
            status=None if status is None else f"0x{int(status):04X}",
            attempts=item.attempts,
            **extra,
        )

    def mark_send_failed(
        self, item_id: int, error: str, status: int | None, *, retry_at: float | None
    ) -> OutboxState:
        """Record a failed attempt: PENDING until ``retry_at``, or DEAD when it is None."""
        state = OutboxState.DEAD if retry_at is None else OutboxState.PENDING
        with self._tx() as db:
            db.execute(
                """UPDATE outbox SET state = ?, attempts = attempts + 1, last_error = ?,
                       last_status = ?, next_attempt_at = COALESCE(?, next_attempt_at),
                       updated_at = ? WHERE id = ?""",
                (state, error, status, retry_at, self._clock(), item_id),
            )
        if state is OutboxState.DEAD:
            self._audit_outbox(
                AuditEvent.SEND_FAILED, self.get_outbox(item_id), status=status, error=error
            )
        return state

    def retry_outbox(self, item_id: int) -> OutboxItem:
        """Make an item due now with a fresh attempt budget (for DEAD or waiting items)."""
        now = self._clock()
        with self._tx() as db:
            row = db.execute(
                """UPDATE outbox SET state = ?, attempts = 0, next_attempt_at = ?,
                       updated_at = ? WHERE id = ? AND state IN (?, ?) RETURNING *""",
                (OutboxState.PENDING, now, now, item_id, OutboxState.DEAD, OutboxState.PENDING),
            ).fetchone()
            if row is None:
                exists = db.execute("SELECT state FROM outbox WHERE id = ?", (item_id,)).fetchone()
                if exists is None:
                    raise NotFoundError(f"no outbox item {item_id}")
                raise StoreError(
                    f"outbox item {item_id} is {exists[0]}; "
                    "only pending or dead items can be retried"
                )
        return from_row(OutboxItem, row)

    def get_outbox(self, item_id: int) -> OutboxItem:
        rows = self._query("SELECT * FROM outbox WHERE id = ?", (item_id,))
        if not rows:
            raise NotFoundError(f"no outbox item {item_id}")
        return from_row(OutboxItem, rows[0])

    def list_outbox(
        self, *, states: Iterable[OutboxState] | None = None, limit: int = 200
    ) -> list[OutboxItem]:
        if states is None:
            rows = self._query("SELECT * FROM outbox ORDER BY id DESC LIMIT ?", (limit,))
        else:
            wanted = [s.value for s in states]
            marks = ",".join("?" * len(wanted))
            rows = self._query(
                f"SELECT * FROM outbox WHERE state IN ({marks}) ORDER BY id DESC LIMIT ?",
                (*wanted, limit),
            )
        return [from_row(OutboxItem, r) for r in rows]

    def outbox_counts(self) -> dict[str, int]:
        rows = self._query("SELECT state, count(*) FROM outbox GROUP BY state")
        counts = {state.value: 0 for state in OutboxState}
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    def outbox_failed_attempts(self) -> int:
        """Send attempts that failed, over all outbox items (each retry follows one)."""
        rows = self._query(
            "SELECT COALESCE(sum(attempts), 0) - COALESCE(sum(state = 'sent'), 0) FROM outbox"
        )
        return int(rows[0][0])

    def requeue_sending(self) -> int:
        """After a restart: items left SENDING are due again (C-STORE is idempotent)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE outbox SET state = ?, updated_at = ? WHERE state = ?",
                (OutboxState.PENDING, self._clock(), OutboxState.SENDING),
            )
            return cur.rowcount
