"""Coded-concept matching: which task label, if any, each segment of a SEG is.

A segment maps to a task label by its coded concepts, never by its number. It maps when

- its Segmented Property Type is the label's, a retired SNOMED-RT code counting as its
  SNOMED CT equivalent (dcmqi writes ``(T-62000, SRT, "Liver")`` for SCT 10200004), or one
  of the narrower types listed in :data:`PROPERTY_TYPE_ALTERNATIVES`;
- its Segmented Property Category is compatible with the label's
  (:data:`CATEGORY_ALTERNATIVES`: dcmqi and Slicer put organs under "Tissue", others
  under SCT 123037004 "Body structure");
- where both the label and the segment give an Anatomic Region, they agree (a neoplasm of
  the brain is not a liver tumour); a neoplasm without a region belongs to the task of
  the source modality.

The task is the one, among the tasks of the source series' modality, to which most
segments map (:func:`map_segments`). Segments that map to nothing (a spleen in a
multi-organ SEG) are left out as background and listed with the case.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from appliance.errors import CaseRefused
from appliance.states import Refusal
from dicom_bridge.codes import (
    ANATOMICAL_STRUCTURE,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    NEOPLASM,
    CodeValue,
)
from dicom_bridge.seg_annotation import codes_equivalent
from dicom_bridge.seg_reader import SegmentInfo
from models.tasks import TASKS, LabelSpec, TaskSpec

__all__ = [
    "CATEGORY_ALTERNATIVES",
    "PROPERTY_TYPE_ALTERNATIVES",
    "SegmentMapping",
    "TaskMapping",
    "describe_code",
    "label_matches",
    "map_segments",
]

#: Categories accepted for a label's category (besides the label's own).
CATEGORY_ALTERNATIVES: Final[Mapping[CodeValue, tuple[CodeValue, ...]]] = {
    ANATOMICAL_STRUCTURE: (
        CodeValue("SCT", "85756007", "Tissue"),  # dcmqi, Slicer (SRT T-D0050)
        CodeValue("SCT", "123037004", "Body structure"),  # TotalSegmentator and others
    ),
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE: (),
}

#: Narrower property types accepted for a label's type (in the label's anatomic context).
PROPERTY_TYPE_ALTERNATIVES: Final[Mapping[CodeValue, tuple[CodeValue, ...]]] = {
    NEOPLASM: (
        CodeValue("SCT", "86049000", "Malignant neoplasm"),  # SRT M-80003
        CodeValue("SCT", "393564001", "Glioma"),
        CodeValue("SCT", "63634009", "Glioblastoma"),
        CodeValue("SCT", "4147007", "Mass"),
    ),
}


def _code(code: Any) -> CodeValue:
    return code if isinstance(code, CodeValue) else CodeValue.from_coded(code)


def describe_code(code: CodeValue | None) -> str:
    return "(none)" if code is None else str(code)


def label_matches(label: LabelSpec, segment: SegmentInfo) -> bool:
    """Whether ``segment``'s coded concepts say it is ``label`` (module doc)."""
    wanted_type = _code(label.property_type)
    types = (wanted_type, *PROPERTY_TYPE_ALTERNATIVES.get(wanted_type, ()))
    if not any(codes_equivalent(segment.property_type, t) for t in types):
        return False
    wanted_category = _code(label.category)
    categories = (wanted_category, *CATEGORY_ALTERNATIVES.get(wanted_category, ()))
    if not any(codes_equivalent(segment.category, c) for c in categories):
        return False
    if label.anatomic_region is not None and segment.anatomic_region is not None:
        return codes_equivalent(segment.anatomic_region, _code(label.anatomic_region))
    return True


@dataclass(frozen=True, slots=True)
class SegmentMapping:
    """How one segment of an annotation was read: its number, label and codes, and the
    task label it became (None: left out as background)."""

    number: int
    segment_label: str
    property_type: str
    category: str
    anatomic_region: str | None
    label: str | None
    label_index: int | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "segment_label": self.segment_label,
            "property_type": self.property_type,
            "category": self.category,
            "anatomic_region": self.anatomic_region,
            "label": self.label,
            "label_index": self.label_index,
        }


@dataclass(frozen=True, slots=True)
class TaskMapping:
    task: str
    values: Mapping[int, int]  # segment number -> task label index
    segments: tuple[SegmentMapping, ...]


def _segment_mapping(segment: SegmentInfo, label: LabelSpec | None) -> SegmentMapping:
    return SegmentMapping(
        number=segment.number,
        segment_label=segment.label,
        property_type=describe_code(segment.property_type),
        category=describe_code(segment.category),
        anatomic_region=(
            None if segment.anatomic_region is None else describe_code(segment.anatomic_region)
        ),
        label=None if label is None else label.name,
        label_index=None if label is None else label.index,
    )


def map_segments(
    segments: Sequence[SegmentInfo], modality: str, tasks: Sequence[TaskSpec] | None = None
) -> TaskMapping:
    """Choose the task and map each segment to one of its labels by coded concepts.

    Raises :class:`CaseRefused` (``no_matching_segments``) when no segment maps to a label
    of any task for ``modality``; the message lists the codes found."""
    # Region tasks (sigmoid, overlapping outputs such as glioma_brats) are trained on a map
    # of disjoint tissue classes; a SEG's overlapping regions are not converted into one
    # yet, so a SEG never becomes a case of such a task.
    candidates = [
        t
        for t in (tasks if tasks is not None else TASKS.values())
        if t.modality == modality and not t.is_sigmoid
    ]
    best: TaskMapping | None = None
    for spec in candidates:
        values: dict[int, int] = {}
        described: list[SegmentMapping] = []
        for segment in segments:
            label = next((lb for lb in spec.labels if label_matches(lb, segment)), None)
            described.append(_segment_mapping(segment, label))
            if label is not None:
                values[segment.number] = label.index
        if values and (best is None or len(values) > len(best.values)):
            best = TaskMapping(str(spec.name), values, tuple(described))
    if best is None:
        found = "; ".join(
            f"segment {s.number} {s.label!r}: type {describe_code(s.property_type)}, "
            f"category {describe_code(s.category)}"
            for s in segments
        )
        names = ", ".join(str(t.name) for t in candidates)
        where = (
            f"task {names}"
            if len(candidates) == 1
            else f"any {modality or '(no modality)'} task ({names or 'none known'})"
        )
        raise CaseRefused(
            Refusal.NO_MATCHING_SEGMENTS,
            f"no segment codes match {where}: found {found or 'no segments'}"[:1000],
        )
    return best
