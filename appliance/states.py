"""The states that series, jobs and outbox items move through (stored as text in SQLite).

A series' state covers ingest, routing and the volume: DONE means it was routed, its volume
was built and a segmentation job was recorded for it. How the segmentation went is the
job's state (:class:`JobState`), shown next to the series by ``appliance status``.
"""

from __future__ import annotations

from enum import StrEnum


class SeriesState(StrEnum):
    RECEIVING = "receiving"  # instances arriving; not quiet for series_quiet_seconds yet
    COMPLETE = "complete"  # quiet: waiting for the worker
    PROCESSING = "processing"  # the worker has it
    DONE = "done"  # routed, volume built, job recorded; its result is the current one
    REJECTED = "rejected"  # cannot be processed (reason recorded), e.g. missing slices
    FAILED = "failed"  # processing raised an unexpected error (reason recorded)
    SKIPPED = "skipped"  # not for processing (e.g. a SEG or SR series); reason recorded


class OutboxState(StrEnum):
    PENDING = "pending"  # waiting for its next attempt
    SENDING = "sending"  # an attempt is in flight
    SENT = "sent"  # the destination acknowledged it
    DEAD = "dead"  # gave up after outbox.max_attempts; `appliance outbox retry ID` revives it


class JobState(StrEnum):
    """One segmentation job: a (series, generation, task) through model -> SEG + SR -> outbox."""

    QUEUED = "queued"  # waiting for the worker (e.g. after `appliance jobs retry ID`)
    RUNNING = "running"  # the worker has it
    DONE = "done"  # SEG and SR written and queued to the output destinations
    FAILED = "failed"  # reason recorded (incl. no_active_model, superseded); retryable


class ModelState(StrEnum):
    """Lifecycle of a registered model version at this site: the vocabulary of
    ``models.registry.BundleState`` (kept here so the store needs no torch import; a test
    keeps the two in step)."""

    CANDIDATE = "candidate"  # imported or new; not yet through the validation gate
    VALIDATED = "validated"  # passed the gate on local hold-out cases
    ACTIVE = "active"  # used for inference; exactly one per task
    REJECTED = "rejected"  # failed the gate
    RETIRED = "retired"  # was active, replaced; rollback can make it active again
