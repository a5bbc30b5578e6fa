"""The states that series and outbox items move through (stored as text in SQLite)."""

from __future__ import annotations

from enum import StrEnum


class SeriesState(StrEnum):
    RECEIVING = "receiving"  # instances arriving; not quiet for series_quiet_seconds yet
    COMPLETE = "complete"  # quiet: waiting for the worker
    PROCESSING = "processing"  # the worker has it
    DONE = "done"  # processed; its result is the current one
    REJECTED = "rejected"  # cannot be processed (reason recorded), e.g. missing slices
    FAILED = "failed"  # processing raised an unexpected error (reason recorded)
    SKIPPED = "skipped"  # not for processing (e.g. a SEG or SR series); reason recorded


class OutboxState(StrEnum):
    PENDING = "pending"  # waiting for its next attempt
    SENDING = "sending"  # an attempt is in flight
    SENT = "sent"  # the destination acknowledged it
    DEAD = "dead"  # gave up after outbox.max_attempts; `appliance outbox retry ID` revives it
