"""Coded-concept matching: segments -> task labels by their codes, never their numbers."""

from __future__ import annotations

import pytest

from appliance.cases.concepts import label_matches, map_segments
from dicom_bridge import codes as C
from dicom_bridge.seg_annotation import codes_equivalent, read_seg_header
from dicom_bridge.seg_reader import SegmentInfo
from models.tasks import GLIOMA_MR_SPEC, LIVER_CT_SPEC
from tests.appliance.cases.support import DCMQI_SEG
from tests.peers import require_data


def _segment(
    number: int,
    property_type: C.CodeValue,
    category: C.CodeValue,
    region: C.CodeValue | None = None,
) -> SegmentInfo:
    return SegmentInfo(
        number, property_type.meaning, category, property_type, region, "MANUAL", None, None, None
    )


def test_dcmqi_srt_liver_maps_to_the_liver_label() -> None:
    require_data(DCMQI_SEG)
    header = read_seg_header(DCMQI_SEG)
    (segment,) = header.segments
    # The real file says (T-62000, SRT, "Liver") under category (T-D0050, SRT, "Tissue").
    assert segment.property_type is not None and segment.property_type.scheme == "SRT"
    assert codes_equivalent(segment.property_type, C.LIVER)
    assert not codes_equivalent(segment.property_type, C.BRAIN)
    mapping = map_segments(header.segments, "CT")
    assert mapping.task == "liver_ct"
    assert dict(mapping.values) == {1: 1}
    assert mapping.segments[0].label == "Liver"
    assert header.referenced_series_uids and len(header.referenced_instance_uids) == 3


def test_labels_are_chosen_by_concept_not_by_segment_number() -> None:
    segments = [
        _segment(1, C.NEOPLASM, C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, C.LIVER),
        _segment(2, C.CodeValue("SCT", "78961009", "Spleen"), C.ANATOMICAL_STRUCTURE),
        _segment(3, C.LIVER, C.ANATOMICAL_STRUCTURE),
    ]
    mapping = map_segments(segments, "CT")
    assert mapping.task == "liver_ct"
    assert dict(mapping.values) == {1: 2, 3: 1}  # tumour -> 2, liver -> 1, spleen left out
    assert [s.label for s in mapping.segments] == ["Liver tumour", None, "Liver"]


def test_anatomic_region_and_modality_decide_what_a_neoplasm_is() -> None:
    brain_tumour = _segment(1, C.NEOPLASM, C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, C.BRAIN)
    assert map_segments([brain_tumour], "MR").task == "glioma_mr"
    with pytest.raises(Exception) as info:
        map_segments([brain_tumour], "CT")
    assert "no segment codes match task liver_ct" in str(info.value)
    # Without a region, the source modality decides.
    plain = _segment(1, C.NEOPLASM, C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE)
    assert map_segments([plain], "CT").values == {1: 2}
    assert map_segments([plain], "MR").values == {1: 1}
    # A legacy SRT "Malignant neoplasm" (M-80003) is a narrower neoplasm.
    legacy = _segment(
        1,
        C.CodeValue("SRT", "M-80003", "Neoplasm, Malignant"),
        C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    )
    assert label_matches(GLIOMA_MR_SPEC.labels[0], legacy)
    # The category must fit: a "liver" drawn as a morphologic abnormality is not the organ.
    wrong_category = _segment(1, C.LIVER, C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE)
    assert not label_matches(LIVER_CT_SPEC.labels[0], wrong_category)


def test_no_matching_codes_are_refused_with_what_was_found() -> None:
    spleen = _segment(4, C.CodeValue("SCT", "78961009", "Spleen"), C.ANATOMICAL_STRUCTURE)
    with pytest.raises(Exception) as info:
        map_segments([spleen], "CT")
    message = str(info.value)
    assert message.startswith("no_matching_segments: no segment codes match task liver_ct")
    assert '(78961009, SCT, "Spleen")' in message
