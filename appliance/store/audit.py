"""The audit trail: an append-only, hash-chained JSON-lines file.

Who sent what, and what the model did with it: associations, series received, jobs and
their results (with the model's name, version and weights hash), objects sent and to
whom, federation runs joined, model promotions/rejections/activations/rollbacks,
retention purges and admin CLI commands.

One line per event, appended under an exclusive ``flock`` (the service and CLI
processes share the file) and fsync'd. Each line carries ``seq``, the ``prev`` line's
hash and its own ``hash`` (SHA-256 over ``prev`` and the line without ``hash``), so a
removed, reordered or edited line breaks the chain (``appliance audit verify``).

Studies and series are named by a keyed hash (HMAC-SHA256 with the site's audit key,
kept in the store): never by UIDs or patient data. The same study always gets the same
reference, so the privacy officer can follow it; without the key nobody can test a
guessed UID against it.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from appliance.errors import AuditError

LOG = logging.getLogger(__name__)

GENESIS = "0" * 64
_TAIL = 65536  # bytes read back to find the last line (a line is far shorter)


class AuditEvent(StrEnum):
    ASSOCIATION = "association"  # accepted or refused: calling AE, peer address, TLS
    INSTANCE_REJECTED = "instance_rejected"  # a C-STORE got a failure status
    SERIES_RECEIVED = "series_received"  # a series went quiet: complete
    SERIES_FINISHED = "series_finished"  # processed without a job: rejected, skipped, failed
    SERIES_REQUEUED = "series_requeued"  # a study's reference series, its missing roles came
    JOB_FINISHED = "job_finished"  # a segmentation job ended (model, result)
    OBJECT_SENT = "object_sent"  # a SEG/SR acknowledged by a destination
    SEND_FAILED = "send_failed"  # an outbox item gave up (dead letter)
    CASE_ADDED = "case_added"  # a corrected segmentation became a case (active or pending)
    CASE_REVIEWED = "case_reviewed"  # an admin accepted or rejected a pending case
    FEDERATION_JOINED = "federation_joined"  # a federated run this site took part in
    MODEL_REGISTERED = "model_registered"
    MODEL_STATE = "model_state"  # validated / rejected by the gate, or set by an admin
    MODEL_ACTIVATED = "model_activated"  # promoted, activated (forced or not), rolled back
    GATE_DECISION = "gate_decision"  # the validation gate promoted, rejected or deferred
    PURGED = "purged"  # retention removed files
    ADMIN_COMMAND = "admin_command"  # an `appliance` command run by an operator


def audit_path(database: Path) -> Path:
    """The audit file of the store at ``database``: ``<its folder>/audit/audit.jsonl``."""
    return Path(database).parent / "audit" / "audit.jsonl"


def keyed_ref(key: bytes, uid: str) -> str:
    """HMAC-SHA256 of ``uid`` under the site's audit key, 16 hex digits."""
    return hmac.new(key, uid.encode("ascii", "replace"), hashlib.sha256).hexdigest()[:16]


def _line_hash(prev: str, body: str) -> str:
    return hashlib.sha256(f"{prev}\n{body}".encode()).hexdigest()


def _body(entry: dict[str, Any]) -> str:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


class AuditLog:
    """Appends audit events to ``path``. Thread- and process-safe; ``record`` never raises
    (an audit write that fails is logged as an error and counted in ``failures``)."""

    def __init__(self, path: Path, key: bytes, *, clock: Any = time.time) -> None:
        self.path = Path(path)
        self.key = key
        self._clock = clock
        self._lock = threading.Lock()
        self.failures = 0
        try:
            self.user = getpass.getuser()
        except (KeyError, OSError):
            self.user = str(os.getuid())

    def ref(self, uid: str) -> str:
        return keyed_ref(self.key, uid)

    def record(self, event: AuditEvent, **fields: Any) -> None:
        try:
            self._append(event, fields)
        except (OSError, ValueError, TypeError) as exc:
            self.failures += 1
            LOG.error("audit: could not record %s: %s", event.value, exc)

    def _append(self, event: AuditEvent, fields: dict[str, Any]) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                last = _last_line(fd)
                seq, prev = (0, GENESIS)
                if last is not None:
                    seq, prev = int(last["seq"]), str(last["hash"])
                now = float(self._clock())
                entry = {
                    "seq": seq + 1,
                    "at": datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds"),
                    "ts": round(now, 3),
                    "event": event.value,
                    "user": self.user,
                    "pid": os.getpid(),
                    **{k: v for k, v in fields.items() if v is not None},
                    "prev": prev,
                }
                body = _body(entry)
                entry["hash"] = _line_hash(prev, body)
                os.write(fd, (_body(entry) + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)  # releases the flock


def _last_line(fd: int) -> dict[str, Any] | None:
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    start = max(0, size - _TAIL)
    tail = os.pread(fd, size - start, start)
    lines = tail.rstrip(b"\n").split(b"\n")
    try:
        value = json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        # A torn last line (power loss mid-write): refuse to chain onto it silently.
        raise ValueError(f"the audit file's last line is damaged ({exc.msg})") from exc
    if not isinstance(value, dict) or "seq" not in value or "hash" not in value:
        raise ValueError("the audit file's last line is not an audit entry")
    return value


def read_entries(path: Path) -> Iterator[dict[str, Any]]:
    """Every entry of the audit file, in order (nothing when there is no file yet)."""
    if not path.is_file():
        return
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise AuditError(f"{path}: line {number} is not JSON ({exc.msg})") from exc
    except OSError as exc:
        raise AuditError(f"cannot read {path}: {exc.strerror}") from exc


@dataclass(frozen=True, slots=True)
class Verification:
    entries: int
    ok: bool
    problem: str | None = None  # the first break in the chain, when not ok


def verify(path: Path) -> Verification:
    """Check that the chain is unbroken: sequence numbers, ``prev`` links and hashes."""
    prev, count = GENESIS, 0
    try:
        for entry in read_entries(path):
            count += 1
            claimed = entry.pop("hash", None)
            seq = entry.get("seq")
            if seq != count:
                return Verification(count, False, f"entry {count} has seq {seq!r}")
            if entry.get("prev") != prev:
                return Verification(count, False, f"entry {count}: prev does not match")
            if claimed != _line_hash(prev, _body(entry)):
                return Verification(count, False, f"entry {count}: hash does not match")
            prev = str(claimed)
    except AuditError as exc:
        return Verification(count, False, str(exc))
    return Verification(count, True)


_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, *, now: float | None = None) -> float:
    """``2026-11-01``, ``2026-11-01T08:00``, ``2026-11-01T08:00+01:00`` (no zone: UTC),
    or a span back from now: ``30m``, ``12h``, ``7d``, ``2w``. Returns a POSIX time."""
    value = text.strip()
    match = _RELATIVE.match(value)
    if match:
        span = timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
        return (time.time() if now is None else now) - span.total_seconds()
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise AuditError(
            f"--since {text!r}: use a date (2026-11-01), a date and time "
            "(2026-11-01T08:00, UTC unless a zone is given) or a span (30m, 12h, 7d, 2w)"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def entries_since(path: Path, since: float, until: float | None = None) -> Iterator[dict[str, Any]]:
    for entry in read_entries(path):
        ts = float(entry.get("ts", 0.0))
        if ts >= since and (until is None or ts < until):
            yield entry
