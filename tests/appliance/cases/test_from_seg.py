"""Annotated cases: concept mapping, geometry checks, refusals, the held-out split, the
store's cases table, the trainers' API and the ``appliance cases`` CLI."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from appliance.cases.from_seg import (
    Refusal,
    annotate_seg_series,
    case_from_nifti,
    case_from_seg,
    ingest_files,
    label_matches,
    map_segments,
    parse_label_map,
    read_labels,
    split_for,
    split_key,
    split_position,
)
from appliance.cases.loading import load_cases
from appliance.cli import app
from appliance.config import AppConfig, CasesConfig, StorageConfig, parse_config
from appliance.errors import ConfigError
from appliance.states import CaseOrigin, CaseSplit, CaseState, SeriesState
from appliance.store import SCHEMA_VERSION, Store
from dicom_bridge import codes as C
from dicom_bridge.seg_annotation import codes_equivalent, read_seg_header
from dicom_bridge.seg_reader import SegmentInfo, read_seg_labelmap
from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from models.tasks import GLIOMA_MR_SPEC, LIVER_CT_SPEC
from tests.peers import SHARED_DATA, require_data
from tests.seg_variants import seg_variant

DCMQI = SHARED_DATA / "ct_abdomen_dcmqi_3slice"
DCMQI_CT = [DCMQI / f"0{i}.dcm" for i in (1, 2, 3)]
DCMQI_SEG = DCMQI / "liver_SEG_dcmqi.dcm"
TOTALSEG = SHARED_DATA / "ct_abdomen_totalseg_j2k"


def _config(tmp_path: Path, **cases: object) -> AppConfig:
    return AppConfig(
        storage=StorageConfig(root=tmp_path / "data", fsync=False),
        cases=CasesConfig(**cases),  # type: ignore[arg-type]
    )


def _segment(
    number: int,
    property_type: C.CodeValue,
    category: C.CodeValue,
    region: C.CodeValue | None = None,
) -> SegmentInfo:
    return SegmentInfo(
        number, property_type.meaning, category, property_type, region, "MANUAL", None, None, None
    )


# --- coded concepts ------------------------------------------------------------------------


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


def test_label_map_option_parsing() -> None:
    assert parse_label_map("5=liver", LIVER_CT_SPEC) == {5: 1}
    assert parse_label_map("5=Liver, 9=liver_tumour", LIVER_CT_SPEC) == {5: 1, 9: 2}
    assert parse_label_map("3=2", LIVER_CT_SPEC) == {3: 2}
    for bad in ("5", "x=liver", "5=spleen", "5=liver,5=liver tumour", ""):
        with pytest.raises(ValueError):
            parse_label_map(bad, LIVER_CT_SPEC)


# --- the held-out split ----------------------------------------------------------------------


def test_split_is_deterministic_keyed_and_near_the_fraction() -> None:
    key = b"k" * 32
    uids = [f"1.2.826.0.1.3680043.8.498.{i}" for i in range(4000)]
    splits = [split_for(u, key, 0.2) for u in uids]
    share = splits.count(CaseSplit.HELD_OUT) / len(uids)
    assert 0.17 < share < 0.23
    assert splits == [split_for(u, key, 0.2) for u in uids]  # deterministic
    other = [split_for(u, b"another site key", 0.2) for u in uids]
    assert other != splits  # another site holds out other studies
    assert all(split_for(u, key, 0.0) is CaseSplit.TRAIN for u in uids[:200])
    # Raising the fraction only moves studies into the hold-out, never out of it.
    assert all(
        split_for(u, key, 0.3) is CaseSplit.HELD_OUT
        for u, s in zip(uids, splits, strict=True)
        if s is CaseSplit.HELD_OUT
    )
    assert 0.0 <= split_position(uids[0], key) < 1.0


def test_generated_split_key_is_kept_in_the_store(tmp_path: Path, store: Store) -> None:
    config = _config(tmp_path)
    first = split_key(store, config)
    assert len(first) >= 32 and split_key(store, config) == first
    assert split_key(store, _config(tmp_path, split_key="s" * 16)) == b"s" * 16


def test_cases_config_is_validated() -> None:
    cfg = parse_config({"cases": {"held_out_fraction": 0.25, "split_key": "x" * 20}})
    assert cfg.cases.held_out_fraction == 0.25 and cfg.cases.split_key == "x" * 20
    assert parse_config({}).cases.held_out_fraction == 0.2
    with pytest.raises(ConfigError) as info:
        parse_config({"cases": {"held_out_fraction": 1.5, "split_key": "short", "x": 1}})
    text = str(info.value)
    assert "cases.held_out_fraction: must be a number from 0 to 0.9" in text
    assert "cases.split_key: must be a secret string of at least 16 characters" in text
    assert "cases.x: unknown key" in text


# --- the store -------------------------------------------------------------------------------


def _downgrade_to_version_2(path: Path) -> None:
    """Turn a current database into what version 2 of the software left behind."""
    db = sqlite3.connect(path)
    db.executescript(
        """DROP TABLE cases; DROP TABLE case_refusals; DROP TABLE counters;
           ALTER TABLE series DROP COLUMN purged_at;
           ALTER TABLE jobs DROP COLUMN results_purged_at;
           UPDATE meta SET value = '2' WHERE key = 'schema_version';
           INSERT INTO rejections (at, scope, reason) VALUES (1.0, 'association', 'kept');"""
    )
    db.commit()
    db.close()


def _check_current(store: Store) -> None:
    assert store.schema_version == SCHEMA_VERSION
    assert store.list_cases() == [] and store.list_case_refusals() == []
    assert store.recent_rejections()[0].reason == "kept"
    # The columns the retention purge needs are there.
    assert store.retention_series() == [] and store.retention_jobs() == []
    assert store.retention_cases() == []


def test_a_version_2_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    Store(path).close()
    _downgrade_to_version_2(path)
    store = Store(path)
    try:
        _check_current(store)
    finally:
        store.close()


def test_a_half_applied_upgrade_is_finished(tmp_path: Path) -> None:
    """An upgrade cut off after some columns were added still completes on the next start."""
    path = tmp_path / "db.sqlite3"
    Store(path).close()
    _downgrade_to_version_2(path)
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE series ADD COLUMN purged_at REAL")
    db.commit()
    db.close()
    store = Store(path)
    try:
        _check_current(store)
    finally:
        store.close()
    Store(path).close()  # and opening it again changes nothing


# --- SEG -> case ---------------------------------------------------------------------------


@pytest.fixture
def dcmqi_store(tmp_path: Path, store: Store) -> tuple[AppConfig, Store]:
    require_data(DCMQI_SEG)
    config = _config(tmp_path)
    ingest_files(store, config, DCMQI_CT)
    return config, store


def test_received_dcmqi_seg_becomes_a_case_on_the_source_grid(
    dcmqi_store: tuple[AppConfig, Store],
) -> None:
    config, store = dcmqi_store
    outcome = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM)
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
    again = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM)
    assert again.existing and again.case is not None and again.case.id == case.id
    assert len(store.list_cases()) == 1


def test_trainers_get_only_active_cases_of_their_split(
    tmp_path: Path, dcmqi_store: tuple[AppConfig, Store]
) -> None:
    config, store = dcmqi_store
    case = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM).case
    assert case is not None
    other = CaseSplit.TRAIN if case.split is CaseSplit.HELD_OUT else CaseSplit.HELD_OUT
    assert load_cases(store, "liver_ct", other) == []
    (loaded,) = load_cases(store, "liver_ct", case.split)
    assert loaded.case_id == case.id
    assert loaded.case.image.shape == loaded.case.labels.shape == (3, 512, 512)
    assert loaded.case.labels.dtype == np.uint8
    liver_hu = float(loaded.case.image[loaded.case.labels == 1].mean())
    assert 0.0 < liver_hu < 200.0  # soft tissue: the labels lie on the right voxels
    store.set_case_state(case.id, CaseState.EXCLUDED)
    assert load_cases(store, "liver_ct", case.split) == []
    store.set_case_state(case.id, CaseState.ACTIVE)
    assert [c.case_id for c in load_cases(store, "liver_ct", case.split)] == [case.id]


def test_held_out_cases_never_reach_training(tmp_path: Path, store: Store) -> None:
    require_data(DCMQI_SEG)
    config = _config(tmp_path, held_out_fraction=0.9)
    ingest_files(store, config, DCMQI_CT)
    study = str(dcmread(DCMQI_CT[0], stop_before_pixels=True).StudyInstanceUID)
    expected = split_for(study, split_key(store, config), 0.9)
    case = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM).case
    assert case is not None and case.split is expected
    train_ids = [c.case_id for c in load_cases(store, "liver_ct", CaseSplit.TRAIN)]
    assert (case.id in train_ids) == (expected is CaseSplit.TRAIN)


def test_a_newer_annotation_of_the_series_supersedes_the_older(
    tmp_path: Path, dcmqi_store: tuple[AppConfig, Store]
) -> None:
    config, store = dcmqi_store
    first = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM).case
    newer = seg_variant(DCMQI_SEG, tmp_path / "newer.dcm")
    outcome = case_from_seg(store, config, newer, CaseOrigin.DICOM)
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
    outcome = case_from_seg(store, config, bad, CaseOrigin.DICOM)
    assert outcome.case is None and outcome.refusal is not None
    assert outcome.refusal.reason == reason.value
    assert words in outcome.refusal.detail
    (recorded,) = store.list_case_refusals()
    assert recorded.reason == reason.value and recorded.origin is CaseOrigin.DICOM
    assert store.list_cases() == []
    note = annotate_seg_series(store, config, [bad])
    assert note.state is SeriesState.REJECTED and note.reason == "annotation_refused"
    assert note.detail is not None and note.detail.startswith(reason.value)


def test_real_foreign_seg_whose_codes_match_no_task_is_refused(
    dcmqi_store: tuple[AppConfig, Store],
) -> None:
    """dcmqi's five overlapping segments (tissue, artery, capillary, edema, vein) on the
    same real CT: the geometry fits, but no segment is a liver or a liver tumour."""
    config, store = dcmqi_store
    seg = require_data(SHARED_DATA / "seg_examples" / "dcmqi_partial_overlaps_5seg.dcm")
    outcome = case_from_seg(store, config, seg, CaseOrigin.DICOM)
    assert outcome.refusal is not None and outcome.refusal.reason == "no_matching_segments"
    assert outcome.refusal.detail.startswith("no segment codes match task liver_ct: found")
    assert '(51114001, SCT, "Artery")' in outcome.refusal.detail
    assert store.list_cases() == []


def test_seg_before_its_source_series_is_refused(tmp_path: Path, store: Store) -> None:
    require_data(DCMQI_SEG)
    outcome = case_from_seg(store, _config(tmp_path), DCMQI_SEG, CaseOrigin.DICOM)
    assert outcome.refusal is not None
    assert outcome.refusal.reason == Refusal.SOURCE_NOT_STORED.value
    assert "send the source series first" in outcome.refusal.detail


def test_seg_whose_source_images_are_partly_missing_is_refused(
    tmp_path: Path, store: Store
) -> None:
    require_data(DCMQI_SEG)
    config = _config(tmp_path)
    ingest_files(store, config, DCMQI_CT[:2])
    outcome = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM)
    assert outcome.refusal is not None
    assert outcome.refusal.reason == Refusal.SOURCE_INCOMPLETE.value
    assert outcome.refusal.detail.startswith("1 of the 3 source images it references")


def test_the_appliances_own_seg_is_not_a_case(
    tmp_path: Path, dcmqi_store: tuple[AppConfig, Store]
) -> None:
    config, store = dcmqi_store
    ours = seg_variant(DCMQI_SEG, tmp_path / "ours.dcm", manufacturer="SegAppliance")
    note = annotate_seg_series(store, config, [ours])
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
    note = annotate_seg_series(store, config, [echoed])
    assert note.state is SeriesState.SKIPPED and store.list_cases() == []


def test_overlapping_binary_segments_keep_the_lesion(tmp_path: Path, store: Store) -> None:
    """A viewer's BINARY SEG whose tumour lies inside the liver segment, numbered the
    other way round from the task (tumour = 1, liver = 2)."""
    geometry = SeriesGeometry(slices=4, rows=16, columns=16, slice_spacing=2.0)
    identity = SeriesIdentity()
    paths = write_series(tmp_path / "ct", geometry, identity=identity)
    config = _config(tmp_path)
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
    outcome = case_from_seg(store, config, seg_path, CaseOrigin.DICOM)
    assert outcome.case is not None, outcome.refusal
    labels, _ = read_labels(outcome.case.labels_path)
    expected = np.where(tumour, 2, np.where(liver, 1, 0))
    np.testing.assert_array_equal(labels, expected)
    assert outcome.case.labels == {
        "Liver": int(liver.sum() - tumour.sum()),
        "Liver tumour": int(tumour.sum()),
    }


# --- NIfTI -> case ---------------------------------------------------------------------------


def test_nifti_labels_on_the_real_j2k_ct(tmp_path: Path) -> None:
    nifti = require_data(TOTALSEG / "labels_totalsegmentator_multilabel.nii.gz")
    series_dir = TOTALSEG / "dicom_uids_repaired"
    root = tmp_path / "data"
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[storage]\nroot = "{root}"\nfsync = false\n')
    args = ["cases", "import", "--nifti", str(nifti), "--series", str(series_dir)]
    result = CliRunner().invoke(
        app, [*args, "--task", "liver_ct", "--label-map", "5=liver", "-c", str(cfg)]
    )
    assert result.exit_code == 0, result.output
    assert "imported as case 1: liver_ct" in result.output
    config = _config(tmp_path)
    store = Store(config.storage.database)
    (case,) = store.list_cases()
    assert case.labels_present == ("Liver",) and case.origin is CaseOrigin.CLI
    series_uid = case.source_series_uid
    (loaded,) = load_cases(store, "liver_ct", case.split)
    image, labels = loaded.case.image, loaded.case.labels
    assert labels.shape == image.shape == (20, 512, 512)
    # NIfTI axes (column, reversed row, ascending z) landed on the DICOM grid: the liver
    # is soft tissue, and the same mask flipped top-bottom is not.
    assert 40.0 < float(image[labels == 1].mean()) < 200.0
    assert float(image[np.flip(labels, 1) == 1].mean()) < 0.0

    # The same labels half a voxel off the grid are refused.
    img = nib.load(str(nifti))
    assert isinstance(img, nib.Nifti1Image)
    shifted_affine = img.affine.copy()
    shifted_affine[0, 3] += 0.5 * abs(img.affine[0, 0])
    shifted = tmp_path / "shifted.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), shifted_affine), str(shifted))
    refused = case_from_nifti(store, config, shifted, series_uid, "liver_ct", {5: 1})
    assert refused.refusal is not None and refused.refusal.reason == "geometry_mismatch"
    # Without a label map, values that are no label of the task are refused.
    unmapped = case_from_nifti(store, config, nifti, series_uid, "liver_ct", None)
    assert unmapped.refusal is not None and unmapped.refusal.reason == "bad_label_values"
    wrong_task = case_from_nifti(store, config, nifti, series_uid, "glioma_mr", {5: 1})
    assert wrong_task.refusal is not None and wrong_task.refusal.reason == "modality_mismatch"
    store.close()


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_import_list_exclude_include(tmp_path: Path) -> None:
    require_data(DCMQI_SEG)
    root = tmp_path / "data"
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[storage]\nroot = "{root}"\nfsync = false\n')
    series_dir = tmp_path / "series"
    series_dir.mkdir()
    for f in DCMQI_CT:
        (series_dir / f.name).write_bytes(f.read_bytes())
    runner = CliRunner()
    result = runner.invoke(
        app, ["cases", "import", str(DCMQI_SEG), "--series", str(series_dir), "-c", str(cfg)]
    )
    assert result.exit_code == 0, result.output
    assert "imported as case 1: liver_ct" in result.output
    result = runner.invoke(app, ["cases", "list", "--json", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    (case,) = listing["cases"]
    assert case["labels_present"] == ["Liver"] and case["origin"] == "cli"
    assert case["segments"][0]["property_type"] == '(T-62000, SRT, "Liver")'
    assert runner.invoke(app, ["cases", "exclude", "1", "-c", str(cfg)]).exit_code == 0
    listing = json.loads(runner.invoke(app, ["cases", "list", "--json", "-c", str(cfg)]).output)
    assert listing["cases"][0]["state"] == "excluded"
    assert runner.invoke(app, ["cases", "include", "1", "-c", str(cfg)]).exit_code == 0
    missing = runner.invoke(app, ["cases", "exclude", "7", "-c", str(cfg)])
    assert missing.exit_code == 1 and "no case 7" in missing.output
    # A SEG that matches no task: refused, exit 1, and the reason is listed.
    bad = seg_variant(
        DCMQI_SEG, tmp_path / "spleen.dcm", property_type=("78961009", "SCT", "Spleen")
    )
    result = runner.invoke(app, ["cases", "import", str(bad), "-c", str(cfg)])
    assert result.exit_code == 1 and "no_matching_segments" in result.output
    listing = json.loads(runner.invoke(app, ["cases", "list", "--json", "-c", str(cfg)]).output)
    assert listing["refused"][0]["reason"] == "no_matching_segments"
    usage = runner.invoke(app, ["cases", "import", "-c", str(cfg)])
    assert usage.exit_code == 2
