"""The connection, its transactions, the schema and its migrations, meta, counters, clock.

:class:`Database` is what every part of the store stands on: one SQLite connection in WAL
mode behind one lock. Every write is its own short transaction (:meth:`Database._tx`); a
read is :meth:`Database._query`. The concerns (series, jobs, outbox, models, cases,
retention) are mixins over it, composed into :class:`appliance.store.Store`.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import StoreError
from appliance.store.audit import AuditLog, audit_path

SCHEMA_VERSION = 7  # 2: models, activations, jobs; 3: cases, refusals; 4: purges, counters;
# 5: instances.sha256 (what was acknowledged, to tell identical repeats from conflicts);
# 6: cases.calling_ae, cases.review_json, case_refusals.calling_ae (annotation trust);
# 7: series.contrast_bolus_agent, scanning_sequence, echo/repetition/inversion_time_ms
# (MR sequence attributes for routing)

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
    # sha256 of the encoded dataset as received; NULL for rows recorded before version 5.
    _Migration(5, "", columns=(("instances", "sha256", "TEXT"),)),
    # Who sent an annotation (NULL: a CLI import, or a row recorded before version 6) and
    # why a case waits for review (JSON list of reasons; empty for a case in use).
    _Migration(
        6,
        "",
        columns=(
            ("cases", "calling_ae", "TEXT"),
            ("cases", "review_json", "TEXT NOT NULL DEFAULT '[]'"),
            ("case_refusals", "calling_ae", "TEXT"),
        ),
    ),
    # MR sequence attributes of a series (its first instance), for routing: empty / NULL
    # for a series recorded before version 7 (it no longer matches a rule that sets them).
    _Migration(
        7,
        "",
        columns=(
            ("series", "contrast_bolus_agent", "TEXT NOT NULL DEFAULT ''"),
            ("series", "scanning_sequence", "TEXT NOT NULL DEFAULT ''"),
            ("series", "echo_time_ms", "REAL"),
            ("series", "repetition_time_ms", "REAL"),
            ("series", "inversion_time_ms", "REAL"),
        ),
    ),
)


class Database:
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
