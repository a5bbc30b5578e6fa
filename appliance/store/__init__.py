"""The SQLite store: the only module with SQL in it.

One database file in WAL mode. Every write is its own short transaction; the listener
calls :meth:`Store.record_instance` before it acknowledges a C-STORE, so an acknowledged
instance is always both in the spool and in this table. ``synchronous=NORMAL`` is enough
for process crashes (WAL frames reach the OS before commit returns); after a power loss,
:meth:`Store.reconcile_spool` re-indexes any fsync'd spool file whose row was lost.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import NotFoundError, StoreError
from appliance.states import CaseOrigin, CaseSplit, CaseState, JobState, OutboxState, SeriesState
from appliance.store.audit import AuditEvent, AuditLog, audit_path
from models.lifecycle import ModelState, activation_refusal

SCHEMA_VERSION = 4  # 2: models, activations, jobs; 3: cases, refusals; 4: purges, counters

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    calling_ae TEXT NOT NULL,
    instance_number INTEGER,
    number_of_frames INTEGER NOT NULL DEFAULT 1,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    modality TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    series_description TEXT NOT NULL DEFAULT '',
    body_part_examined TEXT NOT NULL DEFAULT '',
    image_type TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    generation INTEGER NOT NULL DEFAULT 1,
    instances INTEGER NOT NULL DEFAULT 0,
    first_instance_at REAL NOT NULL,
    last_instance_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    reason TEXT,
    detail TEXT,
    result_generation INTEGER,
    result_json TEXT
);
CREATE INDEX IF NOT EXISTS series_state ON series(state, last_instance_at);
CREATE TABLE IF NOT EXISTS rejections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    scope TEXT NOT NULL,
    reason TEXT NOT NULL,
    status INTEGER,
    calling_ae TEXT NOT NULL DEFAULT '',
    peer_host TEXT NOT NULL DEFAULT '',
    ref TEXT
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    path TEXT NOT NULL,
    sop_uid TEXT NOT NULL,
    series_uid TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    last_status INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, next_attempt_at);
CREATE TABLE IF NOT EXISTS models (
    task TEXT NOT NULL,
    version TEXT NOT NULL,
    state TEXT NOT NULL,
    name TEXT NOT NULL,
    weights_sha256 TEXT NOT NULL,
    federated_round INTEGER,
    path TEXT NOT NULL,
    origin TEXT NOT NULL,
    registered_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (task, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS models_one_active ON models(task) WHERE state = 'active';
CREATE TABLE IF NOT EXISTS model_activations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL,
    version TEXT NOT NULL,
    previous_version TEXT,
    action TEXT NOT NULL,
    forced INTEGER NOT NULL DEFAULT 0,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    generation INTEGER NOT NULL,
    task TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    model_name TEXT,
    model_version TEXT,
    model_sha256 TEXT,
    federated_round INTEGER,
    reason TEXT,
    detail TEXT,
    timings_json TEXT NOT NULL DEFAULT '{}',
    outputs_json TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    updated_at REAL NOT NULL,
    UNIQUE (series_uid, generation, task)
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
"""


#: Schema steps by the version that introduced them. Each runs once, in order, on a
#: database whose recorded version is older (``_migrate``); a new database gets them all.
@dataclass(frozen=True, slots=True)
class _Migration:
    """One schema step: columns to add (skipped where present) and idempotent DDL."""

    version: int
    script: str
    columns: tuple[tuple[str, str, str], ...] = ()  # (table, column, declaration)


_MIGRATIONS: tuple[_Migration, ...] = (
    _Migration(
        3,
        """
CREATE TABLE IF NOT EXISTS cases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task TEXT NOT NULL,
    source_series_uid TEXT NOT NULL,
    study_uid TEXT NOT NULL,
    study_ref TEXT NOT NULL,
    annotation_ref TEXT NOT NULL UNIQUE,
    seg_sop_uid TEXT,
    origin TEXT NOT NULL,
    state TEXT NOT NULL,
    split TEXT NOT NULL,
    labels_path TEXT NOT NULL,
    labels_json TEXT NOT NULL DEFAULT '{}',
    segments_json TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cases_task ON cases(task, state, split);
CREATE INDEX IF NOT EXISTS cases_source ON cases(source_series_uid, task);
CREATE TABLE IF NOT EXISTS case_refusals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    origin TEXT NOT NULL,
    annotation_ref TEXT,
    seg_series_uid TEXT,
    source_series_uid TEXT,
    study_ref TEXT,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL
);
""",
    ),
    _Migration(
        4,
        """
CREATE TABLE IF NOT EXISTS counters (
    name TEXT NOT NULL,
    label TEXT NOT NULL DEFAULT '',
    value INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (name, label)
);
""",
        columns=(
            ("series", "purged_at", "REAL"),
            ("jobs", "results_purged_at", "REAL"),
            ("cases", "purged_at", "REAL"),
        ),
    ),
)


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    sop_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path
    size: int
    calling_ae: str
    instance_number: int | None
    number_of_frames: int
    received_at: float


@dataclass(frozen=True, slots=True)
class NewInstance:
    """What the listener hands over for one durable instance."""

    sop_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path
    size: int
    calling_ae: str
    modality: str = ""
    series_description: str = ""
    body_part_examined: str = ""
    image_type: tuple[str, ...] = ()
    instance_number: int | None = None
    number_of_frames: int = 1


@dataclass(frozen=True, slots=True)
class SeriesRecord:
    series_uid: str
    study_uid: str
    modality: str
    sop_class_uid: str
    series_description: str
    body_part_examined: str
    image_type: tuple[str, ...]
    state: SeriesState
    generation: int
    instances: int
    first_instance_at: float
    last_instance_at: float
    updated_at: float
    reason: str | None
    detail: str | None
    result_generation: int | None
    result: dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class RetentionSeries:
    """A series with stored instances, as retention sees it (:meth:`Store.retention_series`)."""

    series_uid: str
    study_uid: str
    modality: str
    state: SeriesState
    generation: int
    updated_at: float
    files: int
    bytes: int
    sends: int  # outbox items of the series (its SEG/SR to destinations)
    unsent: int  # of which not yet acknowledged (pending, sending or dead)
    delivered_at: float | None  # the last acknowledgement
    open_jobs: int  # queued or running
    job_finished_at: float | None  # the current generation's job, when it has finished
    job_state: JobState | None
    in_training_set: bool  # the source (or the SEG) of an active case


@dataclass(frozen=True, slots=True)
class RetentionJob:
    job_id: int
    series_uid: str
    generation: int
    state: JobState
    finished_at: float
    sends: int
    unsent: int
    delivered_at: float | None


@dataclass(frozen=True, slots=True)
class RejectionRecord:
    id: int
    at: float
    scope: str
    reason: str
    status: int | None
    calling_ae: str
    peer_host: str
    ref: str | None


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    destination: str
    path: Path
    sop_uid: str
    series_uid: str | None
    state: OutboxState
    attempts: int
    next_attempt_at: float
    last_error: str | None
    last_status: int | None
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """One registered model version and its lifecycle state at this site."""

    task: str
    version: str
    state: ModelState
    name: str
    weights_sha256: str
    federated_round: int | None
    path: Path
    origin: str  # "shipped", "monai_bundle", "registry_bundle", ...
    registered_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class ActivationRecord:
    id: int
    task: str
    version: str
    previous_version: str | None
    action: str  # "activate" or "rollback"
    forced: bool
    at: float


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One segmentation job: a (series, generation, task)."""

    id: int
    series_uid: str
    study_uid: str
    generation: int
    task: str
    state: JobState
    attempts: int
    model_name: str | None
    model_version: str | None
    model_sha256: str | None
    federated_round: int | None
    reason: str | None
    detail: str | None
    timings: dict[str, Any]
    outputs: dict[str, Any]
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class NewCase:
    """An annotated case to record (its label file is already written)."""

    task: str
    source_series_uid: str
    study_uid: str
    study_ref: str
    annotation_ref: str  # the SEG's SOP Instance UID, or "nifti:<sha256 of the file>"
    seg_sop_uid: str | None
    origin: CaseOrigin
    split: CaseSplit
    labels_path: Path
    labels: dict[str, int]  # label name -> voxels, for every label of the task
    segments: list[dict[str, Any]]  # how each source segment/value was mapped


@dataclass(frozen=True, slots=True)
class CaseRecord:
    id: int
    task: str
    source_series_uid: str
    study_uid: str
    study_ref: str
    annotation_ref: str
    seg_sop_uid: str | None
    origin: CaseOrigin
    state: CaseState
    split: CaseSplit
    labels_path: Path
    labels: dict[str, int]
    segments: list[dict[str, Any]]
    created_at: float
    updated_at: float

    @property
    def labels_present(self) -> tuple[str, ...]:
        return tuple(name for name, voxels in self.labels.items() if voxels > 0)


@dataclass(frozen=True, slots=True)
class CaseRefusal:
    id: int
    at: float
    origin: CaseOrigin
    annotation_ref: str | None
    seg_series_uid: str | None
    source_series_uid: str | None
    study_ref: str | None
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Enqueue:
    """An outbox item to create together with a job's result."""

    destination: str
    path: Path
    sop_uid: str


@dataclass(frozen=True, slots=True)
class Claim:
    """A series taken by the worker: process this generation of it."""

    series_uid: str
    generation: int


class Store:
    """Thread-safe access to the appliance database (one connection, one lock)."""

    def __init__(self, path: Path, *, clock: Any = time.time) -> None:
        """Open (or create) the database at ``path``; its audit trail is
        ``<path's folder>/audit/audit.jsonl`` (:mod:`appliance.store.audit`), keyed with the
        site's audit key (generated on first use, kept in ``meta``)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30.0
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            self._migrate()
            # Tables are created IF NOT EXISTS, so a database of an older schema gains the
            # new ones; the recorded version is raised, never lowered.
            self._db.execute(
                """INSERT INTO meta(key, value) VALUES ('schema_version', ?)
                   ON CONFLICT(key) DO UPDATE SET value = excluded.value
                   WHERE CAST(meta.value AS INTEGER) < CAST(excluded.value AS INTEGER)""",
                (str(SCHEMA_VERSION),),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from exc
        key = self.meta_setdefault("audit_key", secrets.token_hex(32))
        self.audit = AuditLog(audit_path(self.path), bytes.fromhex(key), clock=clock)

    def _migrate(self) -> None:
        """Apply the schema steps newer than the recorded version, each in a transaction."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                f"database {self.path} has schema version {current}, newer than this "
                f"software's {SCHEMA_VERSION}; upgrade the software"
            )
        for step in _MIGRATIONS:
            if step.version <= current:
                continue
            # A step may have been half applied by an interrupted upgrade, so every part is
            # idempotent: tables IF NOT EXISTS, and a column only where it is missing.
            alters = [
                f"ALTER TABLE {table} ADD COLUMN {column} {declaration};"
                for table, column, declaration in step.columns
                if column not in self._columns(table)
            ]
            # executescript commits first; the step then runs in one transaction.
            script = "\n".join([step.script, *alters])
            self._db.executescript(f"BEGIN IMMEDIATE;\n{script}\nCOMMIT;")

    def _columns(self, table: str) -> set[str]:
        return {str(row[1]) for row in self._db.execute(f"PRAGMA table_info({table})")}

    @property
    def schema_version(self) -> int:
        rows = self._query("SELECT value FROM meta WHERE key = 'schema_version'")
        return int(rows[0][0]) if rows else 0

    def meta_get(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0][0]) if rows else None

    def meta_setdefault(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless a value is there; return the stored one."""
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", (key, value))
            row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0])

    def now(self) -> float:
        return float(self._clock())

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"database error: {exc}") from exc

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(params)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"database error: {exc}") from exc

    # -- instances and series -------------------------------------------------------------
    def record_instance(self, item: NewInstance) -> bool:
        """Record a durable instance; return True when it is new (a repeat is idempotent).

        A new instance for a series that is complete, processing or processed re-opens it
        (state RECEIVING, generation + 1): it will be processed again and the new result
        supersedes the old one.
        """
        now = self._clock()
        with self._tx() as db:
            existing = db.execute(
                "SELECT series_uid, path FROM instances WHERE sop_uid = ?", (item.sop_uid,)
            ).fetchone()
            db.execute(
                """INSERT INTO instances (sop_uid, series_uid, study_uid, sop_class_uid,
                       transfer_syntax_uid, path, size, calling_ae, instance_number,
                       number_of_frames, received_at)
                   VALUES (?,?,?,?,?,?,?,?,?,?,?)
                   ON CONFLICT(sop_uid) DO UPDATE SET series_uid=excluded.series_uid,
                       study_uid=excluded.study_uid, sop_class_uid=excluded.sop_class_uid,
                       transfer_syntax_uid=excluded.transfer_syntax_uid, path=excluded.path,
                       size=excluded.size, calling_ae=excluded.calling_ae,
                       instance_number=excluded.instance_number,
                       number_of_frames=excluded.number_of_frames""",
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
                ),
            )
            is_new = existing is None
            if existing is not None and existing["series_uid"] != item.series_uid:
                self._recount(db, existing["series_uid"], now)
                is_new = True
            row = db.execute(
                "SELECT state, generation FROM series WHERE series_uid = ?", (item.series_uid,)
            ).fetchone()
            if row is None:
                db.execute(
                    """INSERT INTO series (series_uid, study_uid, modality, sop_class_uid,
                           series_description, body_part_examined, image_type, state,
                           generation, instances, first_instance_at, last_instance_at,
                           updated_at)
                       VALUES (?,?,?,?,?,?,?,?,1,1,?,?,?)""",
                    (
                        item.series_uid,
                        item.study_uid,
                        item.modality,
                        item.sop_class_uid,
                        item.series_description,
                        item.body_part_examined,
                        "\\".join(item.image_type),
                        SeriesState.RECEIVING,
                        now,
                        now,
                        now,
                    ),
                )
            elif is_new:
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
            else:
                db.execute(
                    "UPDATE series SET updated_at = ? WHERE series_uid = ?", (now, item.series_uid)
                )
            self._bump(db, "instances_received", "new" if is_new else "repeat")
        return is_new

    def _recount(self, db: sqlite3.Connection, series_uid: str, now: float) -> None:
        db.execute(
            """UPDATE series SET instances = (SELECT count(*) FROM instances
                   WHERE series_uid = ?), updated_at = ? WHERE series_uid = ?""",
            (series_uid, now, series_uid),
        )

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
        return [_instance(r) for r in rows]

    def get_series(self, series_uid: str) -> SeriesRecord:
        rows = self._query("SELECT * FROM series WHERE series_uid = ?", (series_uid,))
        if not rows:
            raise NotFoundError(f"no series {series_uid}")
        return _series(rows[0])

    def list_series(self, *, limit: int = 1000) -> list[SeriesRecord]:
        rows = self._query("SELECT * FROM series ORDER BY last_instance_at DESC LIMIT ?", (limit,))
        return [_series(r) for r in rows]

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
        return Claim(row[0], int(row[1])) if row else None

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
        was re-opened, the job becomes FAILED with reason ``superseded`` instead.
        """
        if state not in (
            SeriesState.DONE,
            SeriesState.REJECTED,
            SeriesState.FAILED,
            SeriesState.SKIPPED,
        ):
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
                    db.execute(
                        """UPDATE jobs SET state = ?, outputs_json = ?,
                               timings_json = COALESCE(?, timings_json), finished_at = ?,
                               updated_at = ? WHERE id = ?""",
                        (
                            JobState.DONE,
                            json.dumps(job_outputs),
                            None if job_timings is None else json.dumps(job_timings),
                            now,
                            now,
                            job_id,
                        ),
                    )
                    for item in enqueue:
                        db.execute(
                            """INSERT INTO outbox (destination, path, sop_uid, series_uid, state,
                                   attempts, next_attempt_at, created_at, updated_at)
                               VALUES (?,?,?,?,?,0,?,?,?)""",
                            (
                                item.destination,
                                str(item.path),
                                item.sop_uid,
                                claim.series_uid,
                                OutboxState.PENDING,
                                now,
                                now,
                                now,
                            ),
                        )
                else:
                    db.execute(
                        """UPDATE jobs SET state = ?, reason = 'superseded', detail = ?,
                               timings_json = COALESCE(?, timings_json), finished_at = ?,
                               updated_at = ? WHERE id = ?""",
                        (
                            JobState.FAILED,
                            "the series was re-opened while processing; the new generation "
                            "supersedes this result, which was discarded",
                            None if job_timings is None else json.dumps(job_timings),
                            now,
                            now,
                            job_id,
                        ),
                    )
        if job_id is not None and job_outputs is not None:
            self._audit_job(job_id, queued=len(enqueue) if current else 0)
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

    def _audit_job(self, job_id: int, **extra: Any) -> None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if not rows:
            return
        job = _job(rows[0])
        outputs = {k: v for k, v in job.outputs.items() if k.endswith("_sop_uid")}
        self.audit.record(
            AuditEvent.JOB_FINISHED,
            job=job.id,
            study=self.audit.ref(job.study_uid),
            series=self.audit.ref(job.series_uid),
            generation=job.generation,
            task=job.task,
            state=job.state.value,
            reason=job.reason,
            model=job.model_name,
            model_version=job.model_version,
            model_sha256=job.model_sha256,
            federated_round=job.federated_round,
            outputs={k: self.audit.ref(str(v)) for k, v in sorted(outputs.items())},
            **extra,
        )

    def requeue_interrupted(self) -> int:
        """After a restart: series left PROCESSING go back to COMPLETE (their jobs QUEUED)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE series SET state = ?, updated_at = ? WHERE state = ?",
                (SeriesState.COMPLETE, self._clock(), SeriesState.PROCESSING),
            )
            db.execute(
                "UPDATE jobs SET state = ?, updated_at = ? WHERE state = ?",
                (JobState.QUEUED, self._clock(), JobState.RUNNING),
            )
            return cur.rowcount

    # -- counters (for /metrics; kept across restarts and shared by every process) ------
    def _bump(self, db: sqlite3.Connection, name: str, label: str = "", n: int = 1) -> None:
        db.execute(
            """INSERT INTO counters (name, label, value) VALUES (?, ?, ?)
               ON CONFLICT(name, label) DO UPDATE SET value = value + excluded.value""",
            (name, label, n),
        )

    def bump(self, name: str, label: str = "", n: int = 1) -> None:
        """Add ``n`` to the counter ``name{label}``."""
        with self._tx() as db:
            self._bump(db, name, label, n)

    def counters(self) -> dict[tuple[str, str], int]:
        return {
            (r[0], r[1]): int(r[2]) for r in self._query("SELECT name, label, value FROM counters")
        }

    def rejection_counts(self) -> dict[tuple[str, int | None], int]:
        """Refused associations and instances by (scope, DICOM status)."""
        rows = self._query("SELECT scope, status, count(*) FROM rejections GROUP BY scope, status")
        return {(r[0], None if r[1] is None else int(r[1])): int(r[2]) for r in rows}

    def outbox_failed_attempts(self) -> int:
        """Send attempts that failed, over all outbox items (each retry follows one)."""
        rows = self._query(
            "SELECT COALESCE(sum(attempts), 0) - COALESCE(sum(state = 'sent'), 0) FROM outbox"
        )
        return int(rows[0][0])

    def series_counts(self) -> dict[str, int]:
        rows = self._query("SELECT state, count(*) FROM series GROUP BY state")
        counts = {state.value: 0 for state in SeriesState}
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    # -- rejections ---------------------------------------------------------------------
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
        return [
            RejectionRecord(
                r["id"],
                r["at"],
                r["scope"],
                r["reason"],
                r["status"],
                r["calling_ae"],
                r["peer_host"],
                r["ref"],
            )
            for r in rows
        ]

    # -- outbox -------------------------------------------------------------------------
    def enqueue(
        self, destination: str, path: Path, sop_uid: str, series_uid: str | None = None
    ) -> int:
        now = self._clock()
        with self._tx() as db:
            cur = db.execute(
                """INSERT INTO outbox (destination, path, sop_uid, series_uid, state, attempts,
                       next_attempt_at, created_at, updated_at) VALUES (?,?,?,?,?,0,?,?,?)""",
                (destination, str(path), sop_uid, series_uid, OutboxState.PENDING, now, now, now),
            )
            return int(cur.lastrowid or 0)

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
        return sorted((_outbox(r) for r in rows), key=lambda item: item.id)

    def mark_sent(self, item_id: int, status: int | None, *, peer: str | None = None) -> None:
        """``peer``: where it went (``AE@host:port``), for the audit trail."""
        with self._tx() as db:
            row = db.execute(
                """UPDATE outbox SET state = ?, attempts = attempts + 1, last_status = ?,
                       last_error = NULL, updated_at = ? WHERE id = ? RETURNING *""",
                (OutboxState.SENT, status, self._clock(), item_id),
            ).fetchone()
        if row is not None:
            self._audit_outbox(AuditEvent.OBJECT_SENT, _outbox(row), peer=peer, status=status)

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
        return _outbox(row)

    def get_outbox(self, item_id: int) -> OutboxItem:
        rows = self._query("SELECT * FROM outbox WHERE id = ?", (item_id,))
        if not rows:
            raise NotFoundError(f"no outbox item {item_id}")
        return _outbox(rows[0])

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
        return [_outbox(r) for r in rows]

    def outbox_counts(self) -> dict[str, int]:
        rows = self._query("SELECT state, count(*) FROM outbox GROUP BY state")
        counts = {state.value: 0 for state in OutboxState}
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    def requeue_sending(self) -> int:
        """After a restart: items left SENDING are due again (C-STORE is idempotent)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE outbox SET state = ?, updated_at = ? WHERE state = ?",
                (OutboxState.PENDING, self._clock(), OutboxState.SENDING),
            )
            return cur.rowcount

    # -- models -------------------------------------------------------------------------
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
        return _model(rows[0])

    def list_models(self, task: str | None = None) -> list[ModelRecord]:
        if task is None:
            rows = self._query("SELECT * FROM models ORDER BY task, registered_at, version")
        else:
            rows = self._query(
                "SELECT * FROM models WHERE task = ? ORDER BY registered_at, version", (task,)
            )
        return [_model(r) for r in rows]

    def active_model(self, task: str) -> ModelRecord | None:
        rows = self._query("SELECT * FROM models WHERE task = ? AND state = ?", (task, "active"))
        return _model(rows[0]) if rows else None

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
        return [
            ActivationRecord(
                int(r["id"]),
                r["task"],
                r["version"],
                r["previous_version"],
                r["action"],
                bool(r["forced"]),
                float(r["at"]),
            )
            for r in rows
        ]

    # -- jobs ---------------------------------------------------------------------------
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
        return _job(row)

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
                (
                    JobState.FAILED,
                    reason,
                    detail,
                    None if timings is None else json.dumps(timings),
                    now,
                    now,
                    job_id,
                ),
            )
        self._audit_job(job_id)

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
        return _job(rows[0])

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
        return [_job(r) for r in rows]

    def job_counts(self) -> dict[str, int]:
        rows = self._query("SELECT state, count(*) FROM jobs GROUP BY state")
        counts = {state.value: 0 for state in JobState}
        counts.update({r[0]: int(r[1]) for r in rows})
        return counts

    def retry_job(self, job_id: int) -> JobRecord:
        """Re-queue a FAILED job: its series goes back to COMPLETE (same generation), so
        the worker runs the pipeline for it again. Refused when the series has moved on
        to a newer generation (that generation supersedes this job)."""
        now = self._clock()
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"no job {job_id}")
            job = _job(row)
            if job.state is not JobState.FAILED:
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
        return _job(row)

    # -- annotated cases ------------------------------------------------------------------
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
        record = _case(row)
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
        return _case(rows[0])

    def case_by_annotation(self, annotation_ref: str) -> CaseRecord | None:
        rows = self._query("SELECT * FROM cases WHERE annotation_ref = ?", (annotation_ref,))
        return _case(rows[0]) if rows else None

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
        return [_case(r) for r in rows]

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
        return _case(row)

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
        return _case_refusal(row)

    def list_case_refusals(self, limit: int = 100) -> list[CaseRefusal]:
        rows = self._query("SELECT * FROM case_refusals ORDER BY id DESC LIMIT ?", (limit,))
        return [_case_refusal(r) for r in rows]

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
            found.extend(_instance(r) for r in rows)
        return found

    # -- retention ----------------------------------------------------------------------
    def retention_series(self) -> list[RetentionSeries]:
        """Every series with stored instances, with what retention needs to decide."""
        rows = self._query(
            """SELECT s.series_uid, s.study_uid, s.modality, s.state, s.generation,
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
                   EXISTS (SELECT 1 FROM cases c WHERE c.state = 'active' AND (
                        c.source_series_uid = s.series_uid OR c.seg_sop_uid IN
                        (SELECT sop_uid FROM instances i WHERE i.series_uid = s.series_uid)))
                        AS in_training_set
               FROM series s
               WHERE EXISTS (SELECT 1 FROM instances i WHERE i.series_uid = s.series_uid)
               ORDER BY s.updated_at"""
        )
        return [
            RetentionSeries(
                series_uid=r["series_uid"],
                study_uid=r["study_uid"],
                modality=r["modality"],
                state=SeriesState(r["state"]),
                generation=int(r["generation"]),
                updated_at=float(r["updated_at"]),
                files=int(r["files"]),
                bytes=int(r["bytes"]),
                sends=int(r["sends"]),
                unsent=int(r["unsent"]),
                delivered_at=None if r["delivered_at"] is None else float(r["delivered_at"]),
                open_jobs=int(r["open_jobs"]),
                job_finished_at=(
                    None if r["job_finished_at"] is None else float(r["job_finished_at"])
                ),
                job_state=None if r["job_state"] is None else JobState(r["job_state"]),
                in_training_set=bool(r["in_training_set"]),
            )
            for r in rows
        ]

    def purge_series_instances(
        self, series_uid: str, generation: int, planned_at: float
    ) -> list[InstanceRecord]:
        """Forget the stored instances of a finished series (for retention) and return them
        so their files can go. Nothing happens (empty list) when the series has moved on
        since ``planned_at``: a new generation, an instance received (even a repeat), a
        send not yet acknowledged, a job queued, or a training case made from it."""
        with self._tx() as db:
            row = db.execute(
                """SELECT 1 FROM series s WHERE s.series_uid = ? AND s.generation = ?
                       AND s.updated_at <= ?
                       AND s.state IN ('done', 'rejected', 'failed', 'skipped')
                       AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.series_uid = s.series_uid
                                       AND j.state IN ('queued', 'running'))
                       AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.series_uid = s.series_uid
                                       AND o.state != 'sent')
                       AND NOT EXISTS (SELECT 1 FROM cases c WHERE c.state = 'active' AND (
                            c.source_series_uid = s.series_uid OR c.seg_sop_uid IN
                            (SELECT sop_uid FROM instances i WHERE i.series_uid = s.series_uid)))
                """,
                (series_uid, generation, planned_at),
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
        return [_instance(r) for r in rows]

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
        return [
            RetentionJob(
                job_id=int(r["id"]),
                series_uid=r["series_uid"],
                generation=int(r["generation"]),
                state=JobState(r["state"]),
                finished_at=float(r["finished_at"]),
                sends=int(r["sends"]),
                unsent=int(r["unsent"]),
                delivered_at=None if r["delivered_at"] is None else float(r["delivered_at"]),
            )
            for r in rows
        ]

    def mark_results_purged(self, job_id: int) -> bool:
        """Record that a job's result files are gone; False when they still have sends
        waiting (then nothing may be removed)."""
        with self._tx() as db:
            cur = db.execute(
                """UPDATE jobs SET results_purged_at = ? WHERE id = ? AND NOT EXISTS
                       (SELECT 1 FROM outbox o WHERE o.series_uid = jobs.series_uid
                        AND o.state != 'sent')""",
                (self._clock(), job_id),
            )
            return cur.rowcount == 1

    def retention_cases(self) -> list[CaseRecord]:
        """Cases out of the training set (excluded, superseded) whose files are kept."""
        rows = self._query(
            "SELECT * FROM cases WHERE state != 'active' AND purged_at IS NULL ORDER BY id"
        )
        return [_case(r) for r in rows]

    def mark_case_purged(self, case_id: int) -> bool:
        """Record that a case's files are gone; False when it is in a training set again."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE cases SET purged_at = ? WHERE id = ? AND state != 'active'",
                (self._clock(), case_id),
            )
            return cur.rowcount == 1

    def is_own_output(self, sop_uid: str) -> bool:
        """True when a job of this appliance wrote the SEG or SR with this SOP UID."""
        rows = self._query(
            """SELECT 1 FROM jobs WHERE json_extract(outputs_json, '$.seg_sop_uid') = ?
                   OR json_extract(outputs_json, '$.sr_sop_uid') = ? LIMIT 1""",
            (sop_uid, sop_uid),
        )
        return bool(rows)


def _case(r: sqlite3.Row) -> CaseRecord:
    return CaseRecord(
        id=int(r["id"]),
        task=r["task"],
        source_series_uid=r["source_series_uid"],
        study_uid=r["study_uid"],
        study_ref=r["study_ref"],
        annotation_ref=r["annotation_ref"],
        seg_sop_uid=r["seg_sop_uid"],
        origin=CaseOrigin(r["origin"]),
        state=CaseState(r["state"]),
        split=CaseSplit(r["split"]),
        labels_path=Path(r["labels_path"]),
        labels={str(k): int(v) for k, v in json.loads(r["labels_json"] or "{}").items()},
        segments=list(json.loads(r["segments_json"] or "[]")),
        created_at=float(r["created_at"]),
        updated_at=float(r["updated_at"]),
    )


def _case_refusal(r: sqlite3.Row) -> CaseRefusal:
    return CaseRefusal(
        id=int(r["id"]),
        at=float(r["at"]),
        origin=CaseOrigin(r["origin"]),
        annotation_ref=r["annotation_ref"],
        seg_series_uid=r["seg_series_uid"],
        source_series_uid=r["source_series_uid"],
        study_ref=r["study_ref"],
        reason=r["reason"],
        detail=r["detail"],
    )


def _instance(r: sqlite3.Row) -> InstanceRecord:
    return InstanceRecord(
        r["sop_uid"],
        r["series_uid"],
        r["study_uid"],
        r["sop_class_uid"],
        r["transfer_syntax_uid"],
        Path(r["path"]),
        int(r["size"]),
        r["calling_ae"],
        r["instance_number"],
        int(r["number_of_frames"]),
        float(r["received_at"]),
    )


def _series(r: sqlite3.Row) -> SeriesRecord:
    return SeriesRecord(
        series_uid=r["series_uid"],
        study_uid=r["study_uid"],
        modality=r["modality"],
        sop_class_uid=r["sop_class_uid"],
        series_description=r["series_description"],
        body_part_examined=r["body_part_examined"],
        image_type=tuple(v for v in r["image_type"].split("\\") if v),
        state=SeriesState(r["state"]),
        generation=int(r["generation"]),
        instances=int(r["instances"]),
        first_instance_at=float(r["first_instance_at"]),
        last_instance_at=float(r["last_instance_at"]),
        updated_at=float(r["updated_at"]),
        reason=r["reason"],
        detail=r["detail"],
        result_generation=r["result_generation"],
        result=json.loads(r["result_json"]) if r["result_json"] else None,
    )


def _outbox(r: sqlite3.Row) -> OutboxItem:
    return OutboxItem(
        id=int(r["id"]),
        destination=r["destination"],
        path=Path(r["path"]),
        sop_uid=r["sop_uid"],
        series_uid=r["series_uid"],
        state=OutboxState(r["state"]),
        attempts=int(r["attempts"]),
        next_attempt_at=float(r["next_attempt_at"]),
        last_error=r["last_error"],
        last_status=r["last_status"],
        created_at=float(r["created_at"]),
        updated_at=float(r["updated_at"]),
    )


def _model(r: sqlite3.Row) -> ModelRecord:
    return ModelRecord(
        task=r["task"],
        version=r["version"],
        state=ModelState(r["state"]),
        name=r["name"],
        weights_sha256=r["weights_sha256"],
        federated_round=r["federated_round"],
        path=Path(r["path"]),
        origin=r["origin"],
        registered_at=float(r["registered_at"]),
        updated_at=float(r["updated_at"]),
    )


def _job(r: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=int(r["id"]),
        series_uid=r["series_uid"],
        study_uid=r["study_uid"],
        generation=int(r["generation"]),
        task=r["task"],
        state=JobState(r["state"]),
        attempts=int(r["attempts"]),
        model_name=r["model_name"],
        model_version=r["model_version"],
        model_sha256=r["model_sha256"],
        federated_round=r["federated_round"],
        reason=r["reason"],
        detail=r["detail"],
        timings=json.loads(r["timings_json"] or "{}"),
        outputs=json.loads(r["outputs_json"] or "{}"),
        created_at=float(r["created_at"]),
        started_at=None if r["started_at"] is None else float(r["started_at"]),
        finished_at=None if r["finished_at"] is None else float(r["finished_at"]),
        updated_at=float(r["updated_at"]),
    )
