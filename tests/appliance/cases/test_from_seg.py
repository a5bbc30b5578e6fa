"""A SEG -> a case on the source grid, or a recorded refusal (geometry, codes, sources,
the appliance's own output); overlapping segments."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from appliance.cases.from_seg import annotate_seg_series, case_from_seg
from appliance.cases.recording import read_labels
from appliance.config import AppConfig
from appliance.flow.ingest import ingest_files
from appliance.states import CaseOrigin, CaseState, Refusal, SeriesState
from appliance.store import Store
from dicom_bridge import codes as C
from dicom_bridge.seg_reader import read_seg_labelmap
from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from tests.appliance.cases.support import DCMQI_CT, DCMQI_SEG, PACS, cases_config
from tests.peers import SHARED_DATA, require_data
from tests.seg_variants import seg_variant


def test_received_dcmqi_seg_becomes_a_case_on_the_source_grid(
    dcmqi_store: tuple[AppConfig, Store],
) -> None:
    config, store = dcmqi_store
    outcome = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM, calling_ae=PACS)
    assert outcome.refusal is None and outcome.case is not None
    case = outcome.case
    assert case.task == "liver_ct" and case.state is CaseState.ACTIVE
    assert case.labels_present == ("Liver",) and case.labels["Liver tumour"] == 0
    assert case.seg_sop_uid == dcmread(DCMQI_SEG, stop_before_pixels=True).SOPInstanceUID
    labels, _ = read_labels(case.labels_path)
    reference = read_seg_labelmap(DCMQI_SEG, DCMQI_CT)
    np.testing.assert_array_equal(labels, reference.labelmap)
    assert case.labels["Liver"] == int((reference.labelmap == 1).sum()) > 1000
    # The same SEG again is the same case, not a second one.
    again = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM, calling_ae=PACS)
    assert again.existing and again.case is not None and again.case.id == case.id
    assert len(store.list_cases()) == 1


def test_a_newer_annotation_of_the_series_supersedes_the_older(
    tmp_path: Path, dcmqi_store: tuple[AppConfig, Store]
) -> None:
    config, store = dcmqi_store
    first = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM, calling_ae=PACS).case
    newer = seg_variant(DCMQI_SEG, tmp_path / "newer.dcm")
    outcome = case_from_seg(store, config, newer, CaseOrigin.DICOM, calling_ae=PACS)
    assert first is not None and outcome.case is not None
    assert outcome.superseded == (first.id,)
    assert store.get_case(first.id).state is CaseState.SUPERSEDED
    store.set_case_state(first.id, CaseState.ACTIVE)  # `cases include`
    assert store.get_case(outcome.case.id).state is CaseState.SUPERSEDED


@pytest.mark.parametrize(
    ("change", "reason", "words"),
    [
        ({"shift_frame_mm": 0.5}, Refusal.GEOMETRY_MISMATCH, "between source slices"),
        ({"frame_of_reference_uid": "1.2.3.4"}, Refusal.FRAME_OF_REFERENCE_MISMATCH, "Frame"),
        (
            {"property_type": ("78961009", "SCT", "Spleen")},
            Refusal.NO_MATCHING_SEGMENTS,
            "no segment codes match task liver_ct",
        ),
        ({"drop_references": True}, Refusal.SOURCE_NOT_REFERENCED, "references no source"),
    ],
)
def test_mismatched_segs_are_refused_with_a_recorded_reason(
    tmp_path: Path,
    dcmqi_store: tuple[AppConfig, Store],
    change: dict[str, object],
    reason: Refusal,
    words: str,
) -> None:
    config, store = dcmqi_store
    bad = seg_variant(DCMQI_SEG, tmp_path / "bad.dcm", **change)  # type: ignore[arg-type]
    outcome = case_from_seg(store, config, bad, CaseOrigin.DICOM, calling_ae=PACS)
    assert outcome.case is None and outcome.refusal is not None
    assert outcome.refusal.reason == reason.value
    assert words in outcome.refusal.detail
    (recorded,) = store.list_case_refusals()
    assert recorded.reason == reason.value and recorded.origin is CaseOrigin.DICOM
    assert store.list_cases() == []
    note = annotate_seg_series(store, config, [bad], calling_ae=PACS)
    assert note.state is SeriesState.REJECTED and note.reason == "annotation_refused"
    assert note.detail is not None and note.detail.startswith(reason.value)


def test_real_foreign_seg_whose_codes_match_no_task_is_refused(
    dcmqi_store: tuple[AppConfig, Store],
) -> None:
    """dcmqi's five overlapping segments (tissue, artery, capillary, edema, vein) on the
    same real CT: the geometry fits, but no segment is a liver or a liver tumour."""
    config, store = dcmqi_store
    seg = require_data(SHARED_DATA / "seg_examples" / "dcmqi_partial_overlaps_5seg.dcm")
    outcome = case_from_seg(store, config, seg, CaseOrigin.DICOM, calling_ae=PACS)
    assert outcome.refusal is not None and outcome.refusal.reason == "no_matching_segments"
    assert outcome.refusal.detail.startswith("no segment codes match task liver_ct: found")
    assert '(51114001, SCT, "Artery")' in outcome.refusal.detail
    assert store.list_cases() == []


def test_seg_before_its_source_series_is_refused(tmp_path: Path, store: Store) -> None:
    require_data(DCMQI_SEG)
    outcome = case_from_seg(
        store, cases_config(tmp_path), DCMQI_SEG, CaseOrigin.DICOM, calling_ae=PACS
    )
    assert outcome.refusal is not None
    assert outcome.refusal.reason == Refusal.SOURCE_NOT_STORED.value
    assert "send the source series first" in outcome.refusal.detail


def test_seg_whose_source_images_are_partly_missing_is_refused(
    tmp_path: Path, store: Store
) -> None:
    require_data(DCMQI_SEG)
    config = cases_config(tmp_path)
    ingest_files(store, config, DCMQI_CT[:2])
    outcome = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM, calling_ae=PACS)
    assert outcome.refusal is not None
    assert outcome.refusal.reason == Refusal.SOURCE_INCOMPLETE.value
    assert outcome.refusal.detail.startswith("1 of the 3 source images it references")


def test_the_appliances_own_seg_is_not_a_case(
    tmp_path: Path, dcmqi_store: tuple[AppConfig, Store]
) -> None:
    config, store = dcmqi_store
    ours = seg_variant(DCMQI_SEG, tmp_path / "ours.dcm", manufacturer="SegAppliance")
    note = annotate_seg_series(store, config, [ours], calling_ae=PACS)
    assert note.state is SeriesState.SKIPPED and note.reason == "appliance_output"
    assert store.list_cases() == [] and store.list_case_refusals() == []
    refused = case_from_seg(store, config, ours, CaseOrigin.CLI)
    assert refused.refusal is not None and refused.refusal.reason == "own_output"

    # Recognised by its SOP Instance UID too, whatever its Manufacturer says: the UID of a
    # SEG one of this appliance's jobs wrote.
    echoed = seg_variant(DCMQI_SEG, tmp_path / "echoed.dcm")
    echoed_uid = str(dcmread(echoed, stop_before_pixels=True).SOPInstanceUID)
    ct_series = str(dcmread(DCMQI_CT[0], stop_before_pixels=True).SeriesInstanceUID)
    store.complete_quiet_series(0.0)
    claim = store.claim_complete_series()
    assert claim is not None and claim.series_uid == ct_series
    job = store.start_job(claim, "1.2.3", "liver_ct")
    store.finish_series(
        claim, SeriesState.DONE, job_id=job.id, job_outputs={"seg_sop_uid": echoed_uid}
    )
    note = annotate_seg_series(store, config, [echoed], calling_ae=PACS)
    assert note.state is SeriesState.SKIPPED and store.list_cases() == []


def test_overlapping_binary_segments_keep_the_lesion(tmp_path: Path, store: Store) -> None:
    """A viewer's BINARY SEG whose tumour lies inside the liver segment, numbered the
    other way round from the task (tumour = 1, liver = 2)."""
    geometry = SeriesGeometry(slices=4, rows=16, columns=16, slice_spacing=2.0)
    identity = SeriesIdentity()
    paths = write_series(tmp_path / "ct", geometry, identity=identity)
    config = cases_config(tmp_path)
    ingest_files(store, config, paths)
    liver = np.zeros((4, 16, 16), dtype=bool)
    liver[:, 2:14, 2:14] = True
    tumour = np.zeros_like(liver)
    tumour[1:3, 6:9, 6:9] = True
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=1,
            segment_label="Tumour",
            segmented_property_category=C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE.to_coded_concept(),
            segmented_property_type=C.NEOPLASM.to_coded_concept(),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        ),
        hd.seg.SegmentDescription(
            segment_number=2,
            segment_label="Liver",
            segmented_property_category=C.ANATOMICAL_STRUCTURE.to_coded_concept(),
            segmented_property_type=C.LIVER.to_coded_concept(),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        ),
    ]
    sources = [dcmread(p) for p in paths]
    sources.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=np.stack([tumour, liver], axis=-1).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=50,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Some Viewer",
        manufacturer_model_name="viewer",
        software_versions="1",
        device_serial_number="1",
        omit_empty_frames=False,
    )
    seg_path = tmp_path / "viewer_seg.dcm"
    seg.save_as(seg_path)
    outcome = case_from_seg(store, config, seg_path, CaseOrigin.DICOM, calling_ae=PACS)
    assert outcome.case is not None, outcome.refusal
    labels, _ = read_labels(outcome.case.labels_path)
    expected = np.where(tumour, 2, np.where(liver, 1, 0))
    np.testing.assert_array_equal(labels, expected)
    assert outcome.case.labels == {
        "Liver": int(liver.sum() - tumour.sum()),
        "Liver tumour": int(tumour.sum()),
    }
