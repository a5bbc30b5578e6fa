"""The database file itself: is it there and usable, who holds it, an online backup.

:func:`check_database` tells a missing, empty or unreadable database from one that holds
the site's records without creating or changing anything; the service refuses to start
on anything but the latter when the spool already holds data (a first start would then
process and send every series again). :class:`ServiceLock` is held by ``appliance serve``
for its lifetime and by ``appliance storage reindex`` while it runs, so the two never
work on one database together. :func:`backup_database` copies a live database with
SQLite's online backup API. Messages name files and SQLite's reason, never a record.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType

from appliance.errors import StoreError

#: Tables whose rows are the site's records; a database with none of them holds no data
#: (``meta`` and ``models`` are written by every start-up, so they do not count).
_RECORD_TABLES = ("instances", "series", "jobs", "outbox", "cases")


class DatabaseCondition(StrEnum):
    MISSING = "missing"  # no file
    EMPTY = "empty"  # zero bytes, no schema, or a schema without any record
    UNREADABLE = "unreadable"  # not an SQLite file, or corrupt
    HOLDS_DATA = "holds_data"  # readable, with records


@dataclass(frozen=True, slots=True)
class DatabaseCheck:
    path: Path
    condition: DatabaseCondition
    detail: str  # why, in a few words (SQLite's reason for an unreadable file)


def check_database(path: Path) -> DatabaseCheck:
    """What the database file at ``path`` is, without creating or changing it."""
    path = Path(path)
    if not path.exists():
        return DatabaseCheck(path, DatabaseCondition.MISSING, "missing")
    if not path.is_file():
        return DatabaseCheck(path, DatabaseCondition.UNREADABLE, "unreadable (not a file)")
    if path.stat().st_size == 0:
        return DatabaseCheck(path, DatabaseCondition.EMPTY, "empty (zero bytes)")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=30.0)
    except sqlite3.Error as exc:
        return DatabaseCheck(path, DatabaseCondition.UNREADABLE, f"unreadable ({exc})")
    try:
        ok = db.execute("PRAGMA quick_check(1)").fetchone()
        if ok is None or ok[0] != "ok":
            reason = "corrupt" if ok is None else str(ok[0]).splitlines()[0][:120]
            return DatabaseCheck(path, DatabaseCondition.UNREADABLE, f"unreadable ({reason})")
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            return DatabaseCheck(path, DatabaseCondition.EMPTY, "empty (no schema)")
        for table in _RECORD_TABLES:
            if table in tables and db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():
                return DatabaseCheck(path, DatabaseCondition.HOLDS_DATA, "holds records")
        return DatabaseCheck(path, DatabaseCondition.EMPTY, "empty (no records)")
    except sqlite3.Error as exc:
        return DatabaseCheck(path, DatabaseCondition.UNREADABLE, f"unreadable ({exc})")
    finally:
        db.close()


def move_aside(path: Path, label: str = "unreadable") -> Path:
    """Rename the database at ``path`` (and its ``-wal``/``-shm`` files) to
    ``<name>.<label>-<UTC time>``, kept for inspection; return the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.{label}-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            os.replace(source, target.with_name(target.name + suffix))
    return target


def lock_path(database: Path) -> Path:
    return Path(database).with_name(Path(database).name + ".lock")


class ServiceLock:
    """An exclusive ``flock`` on ``<database>.lock``: held by ``appliance serve`` while it
    runs and by ``appliance storage reindex``. The kernel drops it when the process ends,
    however it ends, so a crash never leaves a stale lock."""

    def __init__(self, database: Path) -> None:
        self.path = lock_path(database)
        self._fd: int | None = None

    def acquire(self) -> ServiceLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise StoreError(
                f"database {self.path.with_suffix('')} is in use by a running appliance "
                f"(it holds {self.path}); stop `appliance serve` first"
            ) from exc
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> ServiceLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def backup_database(source: Path, target: Path) -> int:
    """Copy the database at ``source`` to the new file ``target`` with SQLite's online
    backup API: a consistent snapshot even while ``appliance serve`` writes (WAL readers
    do not block writers). ``target`` must not exist; the copy is checked
    (``quick_check``) and made self-contained (journal mode DELETE) before it appears under
    its name. Return its size in bytes."""
    source, target = Path(source), Path(target)
    check = check_database(source)
    if check.condition in (DatabaseCondition.MISSING, DatabaseCondition.UNREADABLE):
        raise StoreError(f"cannot back up database {source}: it is {check.detail}")
    if target.exists():
        raise StoreError(f"{target} exists; choose a new file name (a backup never overwrites)")
    if not target.parent.is_dir():
        raise StoreError(f"cannot write backup {target}: its folder does not exist")
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=rw", uri=True, timeout=30.0)
        try:
            dst = sqlite3.connect(partial)
            try:
                src.backup(dst)  # all pages in one step: one consistent read transaction
                dst.execute("PRAGMA journal_mode=DELETE")
                ok = dst.execute("PRAGMA quick_check(1)").fetchone()
                if ok is None or ok[0] != "ok":
                    raise StoreError(f"the backup of {source} did not pass quick_check")
            finally:
                dst.close()
        finally:
            src.close()
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.link(partial, target)  # fails rather than overwrite a file made meanwhile
    except FileExistsError as exc:
        raise StoreError(f"{target} exists; choose a new file name") from exc
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"cannot back up database {source} to {target}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return target.stat().st_size
