"""Retention: what may leave the disk, when, and why (``[retention]`` in the config).

- Received images: ``source_days`` after their results were delivered (every SEG/SR
  acknowledged by its destinations; with no destination, after the job finished), or
  after their series finished without a result (rejected, skipped, failed).
- Result files (SEG, SR, previews): ``results_days`` after delivery.
- Training cases out of the training set (excluded, superseded): ``excluded_cases_days``
  after they left it.

Never purged: anything still in progress or not yet delivered, and annotated cases in a
training set together with the images they were drawn on. :func:`plan` says what would
go and why (``appliance storage purge --dry-run``); :func:`purge` removes it. A purge
never competes with ingest: a series that receives an instance again is a new
generation and is left alone, and a file replaced by a re-sent instance while it is
being purged is put back (compared by inode).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from appliance.config import AppConfig
from appliance.flow.pipeline import result_dir_for
from appliance.states import JobState, SeriesState
from appliance.store import Store
from appliance.store.audit import AuditEvent
from dicom_bridge.uids import short_ref

LOG = logging.getLogger(__name__)

DAY = 86400.0
_IN_PROGRESS = (SeriesState.RECEIVING, SeriesState.COMPLETE, SeriesState.PROCESSING)


class Category(StrEnum):
    SOURCE = "source images"
    RESULTS = "results"
    CASES = "cases"


@dataclass(frozen=True, slots=True)
class Item:
    """One thing retention looked at: due to go (``due``) or kept, with the reason."""

    category: Category
    ref: str  # short hash of the series, or "case N"
    files: int
    bytes: int
    due: bool
    reason: str
    series_uid: str | None = None
    generation: int | None = None
    job_id: int | None = None
    case_id: int | None = None
    path: Path | None = None  # results / case folder


@dataclass(frozen=True, slots=True)
class Plan:
    now: float
    items: tuple[Item, ...]

    @property
    def due(self) -> tuple[Item, ...]:
        return tuple(i for i in self.items if i.due)

    @property
    def kept(self) -> tuple[Item, ...]:
        return tuple(i for i in self.items if not i.due)


@dataclass(frozen=True, slots=True)
class PurgeResult:
    items: int
    files: int
    bytes: int
    skipped: int  # due items that had moved on (re-opened, re-queued) and were left alone


def _date(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _decide(since: float, what: str, days: float | None, key: str, now: float) -> tuple[bool, str]:
    if days is None:
        return False, f"{what} {_date(since)}; kept forever (retention.{key})"
    due_at = since + days * DAY
    age = (now - since) / DAY
    if now >= due_at:
        return True, f"{what} {_date(since)}, {age:.1f} days ago (retention.{key} = {days:g})"
    return False, f"{what} {_date(since)}; due {_date(due_at)} (retention.{key} = {days:g})"


def _tree_size(path: Path) -> tuple[int, int]:
    files = size = 0
    if not path.exists():
        return 0, 0
    for item in path.rglob("*"):
        if item.is_file():
            files += 1
            size += item.stat().st_size
    return files, size


def plan(store: Store, config: AppConfig, now: float | None = None) -> Plan:
    """What retention would remove now, and what it keeps, each with its reason."""
    moment = store.now() if now is None else now
    policy = config.retention
    items: list[Item] = []
    for s in store.retention_series():
        base = Item(
            category=Category.SOURCE,
            ref=short_ref(s.series_uid),
            files=s.files,
            bytes=s.bytes,
            due=False,
            reason="",
            series_uid=s.series_uid,
            generation=s.generation,
        )
        if s.state in _IN_PROGRESS or s.open_jobs:
            items.append(replace(base, due=False, reason=f"in progress ({s.state})"))
        elif s.in_training_set:
            items.append(
                replace(base, due=False, reason="images of an annotated case in a training set")
            )
        elif s.unsent:
            items.append(
                replace(base, due=False, reason=f"{s.unsent} result object(s) not yet delivered")
            )
        else:
            if s.state is SeriesState.DONE and s.sends and s.delivered_at is not None:
                since, what = s.delivered_at, "results delivered"
            elif s.state is SeriesState.DONE and s.job_state is JobState.DONE:
                since, what = s.job_finished_at or s.updated_at, "job finished (no destination)"
            elif s.state is SeriesState.DONE:
                since, what = s.job_finished_at or s.updated_at, "job failed, no result"
            else:
                since, what = s.updated_at, f"series {s.state} without a result"
            due, reason = _decide(since, what, policy.source_days, "source_days", moment)
            items.append(replace(base, due=due, reason=reason))
    for j in store.retention_jobs():
        directory = result_dir_for(config, j.series_uid, j.generation)
        files, size = _tree_size(directory)
        if not files:
            continue
        base = Item(
            category=Category.RESULTS,
            ref=short_ref(j.series_uid),
            files=files,
            bytes=size,
            due=False,
            reason="",
            series_uid=j.series_uid,
            generation=j.generation,
            job_id=j.job_id,
            path=directory,
        )
        if j.unsent:
            items.append(
                replace(base, due=False, reason=f"{j.unsent} result object(s) not yet delivered")
            )
            continue
        if j.sends and j.delivered_at is not None:
            since, what = j.delivered_at, "delivered"
        else:
            since, what = j.finished_at, f"job {j.state}"
        due, reason = _decide(since, what, policy.results_days, "results_days", moment)
        items.append(replace(base, due=due, reason=reason))
    for case in store.retention_cases():
        directory = case.labels_path.parent
        files, size = _tree_size(directory)
        if not files:
            continue
        due, reason = _decide(
            case.updated_at,
            f"case {case.state}",
            policy.excluded_cases_days,
            "excluded_cases_days",
            moment,
        )
        items.append(
            Item(
                category=Category.CASES,
                ref=f"case {case.id}",
                files=files,
                bytes=size,
                due=due,
                reason=reason,
                case_id=case.id,
                path=directory,
            )
        )
    return Plan(moment, tuple(items))


def purge(store: Store, config: AppConfig, todo: Plan) -> PurgeResult:
    """Remove what ``todo`` says is due; each item is re-checked in the store first."""
    done = files = size = skipped = 0
    trash = config.storage.root / ".purge"
    for item in todo.due:
        if item.category is Category.SOURCE:
            assert item.series_uid is not None and item.generation is not None
            started = time.time_ns()
            records = store.purge_series_instances(item.series_uid, item.generation, todo.now)
            if not records:
                skipped += 1
                continue
            for record in records:
                size += _remove_file(record.path, trash, started)
                files += 1
        else:  # a folder: a job's results or a case's files; the store says if it may go
            assert item.path is not None
            allowed = (
                store.mark_results_purged(item.job_id)
                if item.job_id is not None
                else item.case_id is not None and store.mark_case_purged(item.case_id)
            )
            if not allowed:
                skipped += 1
                continue
            files += item.files
            size += item.bytes
            shutil.rmtree(item.path, ignore_errors=True)
        done += 1
        store.audit.record(
            AuditEvent.PURGED,
            category=item.category.value,
            series=None if item.series_uid is None else store.audit.ref(item.series_uid),
            case=item.case_id,
            job=item.job_id,
            files=item.files,
            bytes=item.bytes,
            reason=item.reason,
        )
    if done or skipped:
        LOG.info(
            "retention: purged %d item(s), %d file(s), %.1f MiB; %d left alone (moved on)",
            done,
            files,
            size / 2**20,
            skipped,
        )
    return PurgeResult(done, files, size, skipped)


def _remove_file(path: Path, trash: Path, since_ns: int) -> int:
    """Remove a spool file whose row is gone. It is moved aside first; a file modified
    after the purge began (``since_ns``, less a 2 s margin for coarse file times) is an
    instance re-sent and stored meanwhile under a new row: it is put back. Returns the
    bytes removed."""
    trash.mkdir(parents=True, exist_ok=True)
    aside = trash / f"{uuid.uuid4().hex}.dcm"
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return 0
    moved = aside.stat()
    if moved.st_mtime_ns >= since_ns - 2_000_000_000:
        with contextlib.suppress(FileExistsError):  # unless an even newer copy is there
            os.link(aside, path)
        aside.unlink()
        return 0
    aside.unlink()
    return moved.st_size


def disk_usage(config: AppConfig, todo: Plan) -> dict[str, Any]:
    """Bytes by category (and how many are due for purging), other state, free space."""
    categories: dict[str, dict[str, int]] = {
        c.value: {"files": 0, "bytes": 0, "due_bytes": 0} for c in Category
    }
    for item in todo.items:
        entry = categories[item.category.value]
        entry["files"] += item.files
        entry["bytes"] += item.bytes
        entry["due_bytes"] += item.bytes if item.due else 0
    root = config.storage.root
    other = {
        "database": sum(
            p.stat().st_size for p in root.glob(f"{config.storage.database.name}*") if p.is_file()
        ),
        "audit trail": config.storage.audit_file.stat().st_size
        if config.storage.audit_file.is_file()
        else 0,
        "models": _tree_size(config.models_root)[1],
    }
    free = shutil.disk_usage(root).free
    watermark = config.storage.min_free_mb * 2**20
    return {
        "root": str(root),
        "categories": categories,
        "other": other,
        "free_bytes": free,
        "watermark_bytes": watermark,
        "below_watermark": watermark > 0 and free < watermark,
    }


class RetentionLoop(threading.Thread):
    """Applies the retention policies every ``retention.interval_hours`` in ``serve``."""

    def __init__(self, store: Store, config: AppConfig, stop: threading.Event) -> None:
        super().__init__(name="retention", daemon=True)
        self.store = store
        self.config = config
        self.stop_event = stop
        self.interval = config.retention.interval_hours * 3600.0

    def run(self) -> None:
        # A first pass a minute after start, then every interval.
        wait = min(60.0, self.interval)
        while not self.stop_event.wait(wait):
            try:
                purge(self.store, self.config, plan(self.store, self.config))
            except Exception:
                LOG.exception("retention pass failed; retrying at the next interval")
            wait = self.interval
