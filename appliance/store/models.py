"""Registered model versions at this site, their lifecycle and activation history.

The rules (which state may become which; which version may be activated) are the model
lifecycle's (:mod:`models.lifecycle`); the store applies them inside its transactions and
keeps at most one ACTIVE version per task (a unique index).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from appliance.errors import NotFoundError, StoreError
from appliance.store.audit import AuditEvent
from appliance.store.db import Database
from appliance.store.records import ActivationRecord, ModelRecord, from_row
from models.lifecycle import ModelState, activation_refusal


class ModelStore(Database):
    """Model versions: registered, moved through their lifecycle, activated, rolled back."""

    def register_model(
        self,
        *,
        task: str,
        version: str,
        name: str,
        weights_sha256: str,
        federated_round: int | None,
        path: Path,
        origin: str,
        state: ModelState = ModelState.CANDIDATE,
    ) -> ModelRecord:
        """Record a registry bundle (CANDIDATE unless told). A version is recorded once."""
        now = self._clock()
        with self._tx() as db:
            exists = db.execute(
                "SELECT 1 FROM models WHERE task = ? AND version = ?", (task, version)
            ).fetchone()
            if exists:
                raise StoreError(f"model {task}/{version} is already registered")
            db.execute(
                """INSERT INTO models (task, version, state, name, weights_sha256,
                       federated_round, path, origin, registered_at, updated_at)
                   VALUES (?,?,?,?,?,?,?,?,?,?)""",
                (
                    task,
                    version,
                    ModelState.CANDIDATE,
                    name,
                    weights_sha256,
                    federated_round,
                    str(path),
                    origin,
                    now,
                    now,
                ),
            )
            if state is not ModelState.CANDIDATE:
                # ACTIVE (e.g. shipped bundles on first start) passes through VALIDATED.
                first = ModelState.VALIDATED if state is ModelState.ACTIVE else state
                db.execute(
                    "UPDATE models SET state = ? WHERE task = ? AND version = ?",
                    (first, task, version),
                )
            if state is ModelState.ACTIVE:
                self._activate(db, task, version, action="activate", forced=False)
        self.audit.record(
            AuditEvent.MODEL_REGISTERED,
            task=task,
            version=version,
            model=name,
            model_sha256=weights_sha256,
            federated_round=federated_round,
            origin=origin,
            state=state.value,
        )
        return self.get_model(task, version)

    def get_model(self, task: str, version: str) -> ModelRecord:
        rows = self._query("SELECT * FROM models WHERE task = ? AND version = ?", (task, version))
        if not rows:
            raise NotFoundError(f"no model {task}/{version} is registered")
        return from_row(ModelRecord, rows[0])

    def list_models(self, task: str | None = None) -> list[ModelRecord]:
        if task is None:
            rows = self._query("SELECT * FROM models ORDER BY task, registered_at, version")
        else:
            rows = self._query(
                "SELECT * FROM models WHERE task = ? ORDER BY registered_at, version", (task,)
            )
        return [from_row(ModelRecord, r) for r in rows]

    def active_model(self, task: str) -> ModelRecord | None:
        rows = self._query("SELECT * FROM models WHERE task = ? AND state = ?", (task, "active"))
        return from_row(ModelRecord, rows[0]) if rows else None

    def set_model_state(self, task: str, version: str, state: ModelState) -> ModelRecord:
        """Move a version to VALIDATED, REJECTED or RETIRED (activation: :meth:`activate`)."""
        if state is ModelState.ACTIVE:
            raise StoreError("use activate() to make a model active")
        with self._tx() as db:
            row = db.execute(
                "SELECT state FROM models WHERE task = ? AND version = ?", (task, version)
            ).fetchone()
            if row is None:
                raise NotFoundError(f"no model {task}/{version} is registered")
            current = ModelState(row[0])
            if not current.can_become(state):
                raise StoreError(f"model {task}/{version} is {current}; it cannot become {state}")
            db.execute(
                "UPDATE models SET state = ?, updated_at = ? WHERE task = ? AND version = ?",
                (state, self._clock(), task, version),
            )
        record = self.get_model(task, version)
        self.audit.record(
            AuditEvent.MODEL_STATE,
            task=task,
            version=version,
            model_sha256=record.weights_sha256,
            previous=current.value,
            state=state.value,
        )
        return record

    def activate(self, task: str, version: str, *, force: bool = False) -> ModelRecord:
        """Make ``task/version`` the active model; the previous one becomes RETIRED.

        Allowed from VALIDATED and RETIRED; a CANDIDATE only with ``force`` (the validation
        gate is bypassed); never from REJECTED.
        """
        with self._tx() as db:
            previous = self._activate(db, task, version, action="activate", forced=force)
        return self._audit_activation(task, version, previous, "activate", force)

    def _audit_activation(
        self, task: str, version: str, previous: str | None, action: str, forced: bool
    ) -> ModelRecord:
        record = self.get_model(task, version)
        self.audit.record(
            AuditEvent.MODEL_ACTIVATED,
            task=task,
            version=version,
            model=record.name,
            model_sha256=record.weights_sha256,
            federated_round=record.federated_round,
            previous=previous,
            action=action,
            forced=forced,
        )
        return record

    def rollback(self, task: str) -> ModelRecord:
        """Re-activate the model that was active before the current one (history-wise:
        repeated rollbacks walk further back). Returns the now active model."""
        with self._tx() as db:
            current = db.execute(
                "SELECT version FROM models WHERE task = ? AND state = 'active'", (task,)
            ).fetchone()
            if current is None:
                raise StoreError(f"no model is active for {task}; nothing to roll back")
            row = db.execute(
                """SELECT previous_version FROM model_activations WHERE task = ? AND version = ?
                   ORDER BY id DESC LIMIT 1""",
                (task, current[0]),
            ).fetchone()
            target = row[0] if row else None
            if target is None:
                raise StoreError(
                    f"{task}/{current[0]} has no previous active model to roll back to"
                )
            self._activate(db, task, target, action="rollback", forced=False)
        return self._audit_activation(task, target, current[0], "rollback", False)

    def _activate(
        self, db: sqlite3.Connection, task: str, version: str, *, action: str, forced: bool
    ) -> str | None:
        """Activate inside ``db``'s transaction; returns the version active before."""
        row = db.execute(
            "SELECT state FROM models WHERE task = ? AND version = ?", (task, version)
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no model {task}/{version} is registered")
        refusal = activation_refusal(ModelState(row[0]), forced=forced)
        if refusal is not None:
            raise StoreError(f"model {task}/{version}: {refusal}")
        now = self._clock()
        current = db.execute(
            "SELECT version FROM models WHERE task = ? AND state = 'active'", (task,)
        ).fetchone()
        previous: str | None = current[0] if current else None
        replaced = previous
        if action == "rollback":
            # The rolled-back-to version's own predecessor, so a second rollback goes further.
            back = db.execute(
                """SELECT previous_version FROM model_activations WHERE task = ? AND version = ?
                   ORDER BY id DESC LIMIT 1""",
                (task, version),
            ).fetchone()
            previous = back[0] if back else None
        if current is not None:
            db.execute(
                "UPDATE models SET state = ?, updated_at = ? WHERE task = ? AND version = ?",
                (ModelState.RETIRED, now, task, current[0]),
            )
        db.execute(
            "UPDATE models SET state = ?, updated_at = ? WHERE task = ? AND version = ?",
            (ModelState.ACTIVE, now, task, version),
        )
        db.execute(
            """INSERT INTO model_activations (task, version, previous_version, action, forced, at)
               VALUES (?,?,?,?,?,?)""",
            (task, version, previous, action, int(forced), now),
        )
        return replaced

    def activation_history(self, task: str, limit: int = 50) -> list[ActivationRecord]:
        rows = self._query(
            "SELECT * FROM model_activations WHERE task = ? ORDER BY id DESC LIMIT ?", (task, limit)
        )
        return [from_row(ActivationRecord, r) for r in rows]
