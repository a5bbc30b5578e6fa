"""The states that series, jobs, outbox items and cases move through (stored as text in SQLite).

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

    @property
    def finished(self) -> bool:
        """Whether processing is over (with or without a result): a claim ends in one of
        these, and only a finished series may have its instances purged."""
        return self in _FINISHED_SERIES


_FINISHED_SERIES = frozenset(
    {SeriesState.DONE, SeriesState.REJECTED, SeriesState.FAILED, SeriesState.SKIPPED}
)


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

    @property
    def retryable(self) -> bool:
        """Whether an admin may re-queue the job (`appliance jobs retry ID`): failed ones."""
        return self is JobState.FAILED


# --- annotated cases (see appliance.cases) ---
class CaseState(StrEnum):
    ACTIVE = "active"  # used for training (split train) or validation (split held_out)
    EXCLUDED = "excluded"  # taken out by an admin (`appliance cases exclude ID`)
    SUPERSEDED = "superseded"  # a newer annotation of the same series and task replaced it
    PENDING = "pending"  # awaiting review (`appliance cases review`): neither trained on nor
    # used by the gate until an admin accepts it (`appliance cases accept ID`)
    REJECTED = "rejected"  # a pending case an admin rejected (`appliance cases reject ID`)


class CaseSplit(StrEnum):
    TRAIN = "train"
    HELD_OUT = "held_out"  # never trained on: the validation gate's local hold-out


class CaseOrigin(StrEnum):
    DICOM = "dicom"  # a SEG received by the listener
    CLI = "cli"  # `appliance cases import`


class Refusal(StrEnum):
    """Why an annotation did not become a case."""

    UNREADABLE = "unreadable"  # not a readable SEG / NIfTI
    OWN_OUTPUT = "own_output"  # made by this appliance (CLI import only)
    SOURCE_NOT_REFERENCED = "source_not_referenced"  # the SEG names no source
    SOURCE_NOT_STORED = "source_not_stored"  # its source series is not stored here
    SOURCE_INCOMPLETE = "source_incomplete"  # referenced source images are missing
    MULTIPLE_SOURCES = "multiple_sources"  # it references several stored series
    SOURCE_NOT_A_VOLUME = "source_not_a_volume"  # the source series is not one grid
    FRAME_OF_REFERENCE_MISMATCH = "frame_of_reference_mismatch"
    GEOMETRY_MISMATCH = "geometry_mismatch"  # frames (or NIfTI voxels) off the source grid
    NO_MATCHING_SEGMENTS = "no_matching_segments"  # no segment's codes match a task label
    MODALITY_MISMATCH = "modality_mismatch"  # NIfTI import: task and series modality differ
    BAD_LABEL_VALUES = "bad_label_values"  # NIfTI import: values that are no label
    EMPTY_LABELS = "empty_labels"  # the mapped segments hold no voxel
    CALLER_NOT_TRUSTED = "caller_not_trusted"  # its calling AE is not in cases.annotation_callers


class StudyReason(StrEnum):
    """Why a series of a task of several series (roles, see ``flow/study.py``) ended
    SKIPPED without a job of its own."""

    STUDY_INPUT = "study_input"  # an input of its study's job, run on the reference series
    WAITING_FOR_ROLES = "waiting_for_roles"  # the reference series waits for missing roles
    MISSING_ROLES = "missing_roles"  # the reference waited routing.study_wait_minutes in vain
