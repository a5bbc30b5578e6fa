"""``appliance storage reindex``: rebuild a lost database's index from the spool, sending
nothing twice.

What can be rebuilt: the instances and series (from the spooled files) and, for each
series, whether a result was made (``<storage.root>/results/<series>/gen-<n>/``). What
cannot: jobs, the outbox, cases, the model history, the split and audit keys; restoring a
backup keeps those, so it is the first choice (docs/operations.md, Backup and restore).

A rebuilt series ends in one of three ways, none of which sends anything by itself:

- a result exists on disk: DONE, reason ``reindexed``, its newest ``gen-<n>`` the current
  result. It was processed and (as far as anyone can tell) delivered, so it is neither
  processed nor sent again; a new instance re-opens it as generation ``n + 1``, as usual.
- no result on disk (never processed, rejected or skipped, or its result purged by
  retention: a rebuilt index cannot tell these apart): held, SKIPPED with reason
  ``reindexed``. Nothing of it is processed or sent unless the admin asks:
  ``--process-unfinished`` (at the rebuild, or later with ``--force``) hands held series to
  the worker, whose results are then sent as new ones.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from appliance.config import AppConfig
from appliance.errors import StoreError
from appliance.flow.ingest import index_spool
from appliance.states import SeriesState
from appliance.store import Store
from appliance.store.integrity import (
    DatabaseCondition,
    ServiceLock,
    check_database,
    move_aside,
)
from dicom_bridge.errors import DicomBridgeError
from dicom_bridge.spool import Spool
from dicom_bridge.uids import validate_uid

LOG = logging.getLogger(__name__)

_GEN: Final = re.compile(r"^gen-(\d{1,9})$")

DONE_DETAIL: Final = (
    "rebuilt from the spool by `appliance storage reindex`; its result (generation {n}) "
    "was made before the database was lost and is not processed or sent again"
)
HELD_DETAIL: Final = (
    "rebuilt from the spool by `appliance storage reindex`; no result on disk, so it may "
    "never have been processed or its result was purged: held, not processed or sent "
    "(`appliance storage reindex --force --process-unfinished` processes held series)"
)


@dataclass(frozen=True, slots=True)
class ReindexResult:
    database: Path
    condition: DatabaseCondition  # what the database was before the rebuild
    moved_aside: Path | None  # where an unreadable database was kept
    instances: int  # spool files indexed
    series_done: int  # with a result on disk: DONE (reindexed), not sent again
    series_held: int  # without one: SKIPPED (reindexed)
    series_to_process: int  # without one, handed to the worker (--process-unfinished)
    released: int  # held by an earlier reindex, now handed to the worker


def newest_result_generation(results_dir: Path, series_uid: str) -> int | None:
    """The highest ``n`` of ``results/<series>/gen-<n>/`` holding at least one file."""
    try:
        folder = results_dir / validate_uid(series_uid, what="SeriesInstanceUID")
    except DicomBridgeError:
        return None
    if not folder.is_dir():
        return None
    found = [
        int(match.group(1))
        for entry in folder.iterdir()
        if (match := _GEN.match(entry.name)) and entry.is_dir() and any(entry.iterdir())
    ]
    return max(found, default=None)


def reindex(
    config: AppConfig, *, force: bool = False, process_unfinished: bool = False
) -> ReindexResult:
    """Rebuild the index of ``config``'s storage from its spool (see the module text).

    Refuses (:class:`StoreError`) while ``appliance serve`` runs on this storage, and on a
    readable database that holds records unless ``force``: then only spool files without
    a row are added, and series already in the database keep their state. An unreadable
    database is renamed aside (kept), never deleted."""
    storage = config.storage
    with ServiceLock(storage.database):
        check = check_database(storage.database)
        if check.condition is DatabaseCondition.HOLDS_DATA and not force:
            raise StoreError(
                f"database {storage.database} is readable and holds records; reindex adds "
                "what the spool has beyond them only with --force (or restore a backup)"
            )
        moved = None
        if check.condition is DatabaseCondition.UNREADABLE:
            moved = move_aside(storage.database)
            LOG.warning("unreadable database kept as %s", moved)
        elif check.condition is DatabaseCondition.EMPTY and check.detail.endswith("bytes)"):
            storage.database.unlink()  # a zero-byte file: SQLite would open it as new anyway
        store = Store(storage.database)
        try:
            return _rebuild(store, config, check.condition, moved, process_unfinished)
        finally:
            store.close()


def _rebuild(
    store: Store,
    config: AppConfig,
    condition: DatabaseCondition,
    moved: Path | None,
    process_unfinished: bool,
) -> ReindexResult:
    known = store.series_uids()
    spool = Spool(config.storage.spool_dir, fsync=config.storage.fsync)
    added = index_spool(store, spool)
    done = held = to_process = 0
    for series_uid in sorted(store.series_uids() - known):
        generation = newest_result_generation(config.results_dir, series_uid)
        if generation is not None:
            done += store.mark_reindexed(
                series_uid,
                SeriesState.DONE,
                generation=generation,
                detail=DONE_DETAIL.format(n=generation),
            )
        elif process_unfinished:
            to_process += 1  # left RECEIVING: the scheduler completes it, the worker runs it
        else:
            held += store.mark_reindexed(
                series_uid, SeriesState.SKIPPED, generation=1, detail=HELD_DETAIL
            )
    released = store.release_reindexed() if process_unfinished else 0
    LOG.warning(
        "reindexed %d spool files: %d series with a result (done, not sent again), %d held, "
        "%d to process",
        added,
        done,
        held,
        to_process + released,
    )
    return ReindexResult(
        database=store.path,
        condition=condition,
        moved_aside=moved,
        instances=added,
        series_done=done,
        series_held=held,
        series_to_process=to_process,
        released=released,
    )
