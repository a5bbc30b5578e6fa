"""The vocabulary of annotated cases, stored as text in SQLite (see ``appliance.annotations``)."""

from __future__ import annotations

from enum import StrEnum

from appliance.errors import ApplianceError


class CaseState(StrEnum):
    ACTIVE = "active"  # used for training (split train) or validation (split held_out)
    EXCLUDED = "excluded"  # taken out by an admin (`appliance cases exclude ID`)
    SUPERSEDED = "superseded"  # a newer annotation of the same series and task replaced it


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


class CaseRefused(ApplianceError):
    """An annotation was refused; ``reason`` is a :class:`Refusal`, ``detail`` explains."""

    def __init__(self, reason: Refusal, detail: str, *, source_series_uid: str | None = None):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.source_series_uid = source_series_uid
