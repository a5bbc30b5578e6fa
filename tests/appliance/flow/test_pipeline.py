"""The pipeline end to end in-process: series -> model -> SEG + SR -> outbox, with a tiny
untrained model (tests assert structure, provenance and alignment, not quality)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from appliance.config import AppConfig, parse_config
from appliance.flow.ingest import to_new_instance
from appliance.flow.pipeline import result_dir_for, run_claim
from appliance.ops.status import build_status
from appliance.site_models.registry import LoadedModel, NetworkCache, register_shipped
from appliance.states import JobState, OutboxState, SeriesState
from appliance.store import SCHEMA_VERSION, ModelRecord, NewInstance, Store
from dicom_bridge.instance import describe_spooled_file
from dicom_bridge.seg_reader import read_seg_labelmap
from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from models.lifecycle import ModelState
from models.registry import ModelRegistry
from tests.appliance.flow.helpers import (
    GEOMETRY,
    activate,
    activate_tiny,
    ingest,
    make_config,
    run_worker,
)
from tests.appliance.tiny_models import make_tiny_bundle, make_tiny_cascade_bundle


def test_complete_ct_series_becomes_seg_and_sr_queued_to_the_destination(
    tmp_path: Path, config: AppConfig, app_store: Store
) -> None:
    version = activate_tiny(app_store, config, tmp_path)
    identity = SeriesIdentity()
    files = write_series(tmp_path / "ct", GEOMETRY, identity=identity)
    ingest(app_store, files)
    run_worker(app_store, config)

    series = app_store.get_series(identity.series_uid)
    assert series.state is SeriesState.DONE and series.result is not None
    assert series.result["job_state"] == "done"
    (job,) = app_store.list_jobs()
    assert job.state is JobState.DONE and job.task == "liver_ct" and job.attempts == 1
    assert job.model_version == version and job.federated_round == 2
    sha = ModelRegistry(config.models_root).get("liver_ct", version).card.weights_sha256
    assert job.model_sha256 == sha
    for stage in ("volume_s", "model_s", "inference_s", "seg_s", "sr_s", "save_s", "enqueue_s"):
        assert job.timings[stage] >= 0, stage
    assert set(job.timings["inference"]) >= {"preprocess", "inference", "invert", "postprocess"}

    seg_path, sr_path = Path(job.outputs["seg_path"]), Path(job.outputs["sr_path"])
    assert seg_path.parent == (
        config.storage.root / "results" / identity.series_uid / f"gen-{series.generation}"
    )
    seg = dcmread(seg_path)
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == identity.series_uid
    assert seg.FrameOfReferenceUID == dcmread(files[0]).FrameOfReferenceUID
    assert seg.StudyInstanceUID == identity.study_uid
    assert seg.SeriesDescription.startswith("RESEARCH USE ONLY")
    assert sha in seg.ImageComments and version in seg.ImageComments
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmVersion == version
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Liver", "Liver tumour"]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    sr = dcmread(sr_path)
    assert sr.Modality == "SR"
    evidence = {
        str(sop.ReferencedSOPInstanceUID)
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series_item in study.ReferencedSeriesSequence
        for sop in series_item.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence  # the SR references the SEG
    assert job.outputs["seg_sop_uid"] == seg.SOPInstanceUID
    assert job.outputs["sr_sop_uid"] == sr.SOPInstanceUID

    queued = app_store.list_outbox()
    assert {(i.destination, i.sop_uid) for i in queued} == {
        ("pacs", seg.SOPInstanceUID),
        ("pacs", sr.SOPInstanceUID),
    }  # default: the first destination only
    assert all(i.state is OutboxState.PENDING for i in queued)

    produced = np.load(job.outputs["mask_path"])["mask"]
    assert produced.shape == (24, 64, 64)
    back = read_seg_labelmap(seg_path, files)
    np.testing.assert_array_equal(back.labelmap, produced)
    assert job.outputs["voxels"] == {
        "Liver": int(np.count_nonzero(produced == 1)),
        "Liver tumour": int(np.count_nonzero(produced == 2)),
    }

    report = build_status(app_store)
    (entry,) = report["jobs"]
    assert entry["state"] == "done" and entry["model"]["version"] == version
    assert entry["timings"]["inference_s"] == job.timings["inference_s"]
    assert report["models"]["liver_ct"]["version"] == version


def test_output_destinations_and_labelmap_come_from_config(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, destinations=["pacs", "other"], seg_type="LABELMAP", research_only=False
    )
    store = Store(config.storage.database)
    try:
        activate_tiny(store, config, tmp_path)
        ingest(store, write_series(tmp_path / "ct", GEOMETRY))
        run_worker(store, config)
        (job,) = store.list_jobs()
        assert job.state is JobState.DONE, job
        assert sorted(i.destination for i in store.list_outbox()) == [
            "other",
            "other",
            "pacs",
            "pacs",
        ]
        seg = dcmread(job.outputs["seg_path"])
        assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"  # label map SEG
        assert "RESEARCH" not in seg.SeriesDescription
    finally:
        store.close()


def test_each_destination_gets_the_outputs_it_asks_for(tmp_path: Path) -> None:
    config = make_config(
        tmp_path, other_outputs=["rtstruct", "sc_overlay", "seg"], destinations=["pacs", "other"]
    )
    store = Store(config.storage.database)
    try:
        activate_tiny(store, config, tmp_path)
        files = write_series(tmp_path / "ct", GEOMETRY)
        ingest(store, files)
        run_worker(store, config)
        (job,) = store.list_jobs()
        assert job.state is JobState.DONE, job
        outputs = job.outputs
        rt = dcmread(outputs["rtstruct_path"])
        assert rt.Modality == "RTSTRUCT" and rt.SOPInstanceUID == outputs["rtstruct_sop_uid"]
        assert rt.StudyInstanceUID == dcmread(files[0]).StudyInstanceUID
        assert rt.SeriesDescription.startswith("RESEARCH USE ONLY")
        assert job.model_sha256 in rt.StructureSetDescription
        assert [r.ROIName for r in rt.StructureSetROISequence] == ["Liver", "Liver tumour"]
        assert job.timings["rtstruct_s"] >= 0 and job.timings["sc_overlay_s"] >= 0
        assert outputs["outputs"] == {
            "pacs": ["seg", "sr"],
            "other": ["rtstruct", "sc_overlay", "seg"],
        }
        produced = np.load(outputs["mask_path"])["mask"]
        overlay_dir = Path(outputs["seg_path"]).parent / "overlay"
        overlays = [dcmread(p) for p in sorted(overlay_dir.glob("*.dcm"))]
        carrying = [k for k in range(produced.shape[0]) if produced[k].any()]
        assert [int(o.InstanceNumber) for o in overlays] == [k + 1 for k in carrying]
        assert outputs["sc_overlay_images"] == len(overlays) > 0
        assert {o.SeriesInstanceUID for o in overlays} == {outputs["sc_overlay_series_uid"]}
        queued = {(i.destination, i.sop_uid) for i in store.list_outbox()}
        assert queued == {
            ("pacs", outputs["seg_sop_uid"]),
            ("pacs", outputs["sr_sop_uid"]),
            ("other", outputs["rtstruct_sop_uid"]),
            ("other", outputs["seg_sop_uid"]),
        } | {("other", o.SOPInstanceUID) for o in overlays}
    finally:
        store.close()
    # no destination asks for an RTSTRUCT: none is made
    config = make_config(tmp_path / "plain", destinations=["pacs", "other"])
    store = Store(config.storage.database)
    try:
        activate_tiny(store, config, tmp_path / "plain")
        ingest(store, write_series(tmp_path / "plain" / "ct", GEOMETRY))
        run_worker(store, config)
        (job,) = store.list_jobs()
        assert "rtstruct_path" not in job.outputs and "rtstruct_s" not in job.timings
        assert "sc_overlay_images" not in job.outputs and "sc_overlay_s" not in job.timings
        assert not (Path(job.outputs["seg_path"]).parent / "rtstruct.dcm").exists()
        assert not (Path(job.outputs["seg_path"]).parent / "overlay").exists()
    finally:
        store.close()


def test_a_destination_asking_for_every_frame_gets_its_own_seg_and_sr(tmp_path: Path) -> None:
    config = make_config(tmp_path, other_all_frames=True, destinations=["pacs", "other"])
    store = Store(config.storage.database)
    try:
        activate_tiny(store, config, tmp_path)
        files = write_series(tmp_path / "ct", GEOMETRY)
        ingest(store, files)
        run_worker(store, config)
        (job,) = store.list_jobs()
        assert job.state is JobState.DONE, job
        out = job.outputs
        folder = Path(out["seg_path"]).parent
        omitted, full = dcmread(out["seg_path"]), dcmread(folder / "seg_all_frames.dcm")
        assert int(full.NumberOfFrames) == len(files) * len(full.SegmentSequence)
        produced = np.load(out["mask_path"])["mask"]
        present = sum(
            int((produced[k] == label).any()) for k in range(len(files)) for label in (1, 2)
        )
        assert int(omitted.NumberOfFrames) == present  # the other SEG omits the empty ones
        assert str(full.SOPInstanceUID) == out["seg_all_frames_sop_uid"]
        sr = dcmread(folder / "sr_all_frames.dcm")
        evidence = {
            str(sop.ReferencedSOPInstanceUID)
            for study in sr.CurrentRequestedProcedureEvidenceSequence
            for item in study.ReferencedSeriesSequence
            for sop in item.ReferencedSOPSequence
        }
        assert out["seg_all_frames_sop_uid"] in evidence  # its SR references its SEG
        np.testing.assert_array_equal(
            read_seg_labelmap(folder / "seg_all_frames.dcm", files).labelmap,
            read_seg_labelmap(Path(out["seg_path"]), files).labelmap,
        )
        queued = {(i.destination, i.sop_uid) for i in store.list_outbox()}
        assert queued == {
            ("pacs", out["seg_sop_uid"]),
            ("pacs", out["sr_sop_uid"]),
            ("other", out["seg_all_frames_sop_uid"]),
            ("other", out["sr_all_frames_sop_uid"]),
        }
        assert job.timings["seg_all_frames_s"] >= 0
    finally:
        store.close()


def test_a_rejected_or_failed_routed_series_sends_a_notice_to_who_asks(tmp_path: Path) -> None:
    config = make_config(tmp_path, other_outputs=["seg", "notice"], destinations=["pacs", "other"])
    store = Store(config.storage.database)
    try:
        # a failed job (no active model): the notice says why, to "other" only
        identity = SeriesIdentity()
        ingest(store, write_series(tmp_path / "ct", GEOMETRY, identity=identity))
        run_worker(store, config)
        (job,) = store.list_jobs()
        assert job.state is JobState.FAILED and job.reason == "no_active_model"
        (item,) = store.list_outbox()
        assert item.destination == "other"
        notice = dcmread(item.path)
        assert notice.StudyInstanceUID == identity.study_uid
        assert "no model is active for this task" in notice.ImageComments
        assert "Liver" in notice.ImageComments  # the task's description
        assert Path(item.path).parent == result_dir_for(config, identity.series_uid, 1)

        # a series routed to liver_ct whose slices are tilted: rejected, with a notice
        activate_tiny(store, config, tmp_path)
        tilted = SeriesIdentity()
        files = write_series(tmp_path / "tilted", GEOMETRY, identity=tilted)
        for path in files:
            ds = dcmread(path)
            x, y, z = GEOMETRY.slice_position(int(ds.InstanceNumber) - 1)
            ds.ImagePositionPatient = [x, y + 0.4 * (int(ds.InstanceNumber) - 1), z]
            ds.save_as(path)
        ingest(store, files)
        run_worker(store, config)
        series = store.get_series(tilted.series_uid)
        assert series.state is SeriesState.REJECTED and series.reason == "gantry_tilt"
        notices = [i for i in store.list_outbox() if i.series_uid == tilted.series_uid]
        assert [i.destination for i in notices] == ["other"]
        text = dcmread(notices[0].path).ImageComments
        assert "acquired with gantry tilt" in text and "Detail:" in text
    finally:
        store.close()


def test_no_notice_without_a_route_or_a_destination_asking(tmp_path: Path) -> None:
    config = make_config(tmp_path, other_outputs=["notice"], destinations=["pacs", "other"])
    store = Store(config.storage.database)
    try:  # a CT of 5 slices: no rule routes it (skipped, not rejected)
        short = SeriesIdentity()
        ingest(
            store,
            write_series(
                tmp_path / "short", SeriesGeometry(slices=5, rows=32, columns=32), identity=short
            ),
        )
        run_worker(store, config)
        assert store.get_series(short.series_uid).reason == "no_matching_rule"
        assert store.list_outbox() == []
    finally:
        store.close()
    config = make_config(tmp_path / "plain", destinations=["pacs", "other"])
    store = Store(config.storage.database)
    try:  # a failed job, but nobody asks for notices
        ingest(store, write_series(tmp_path / "plain" / "ct", GEOMETRY))
        run_worker(store, config)
        (job,) = store.list_jobs()
        assert job.state is JobState.FAILED and store.list_outbox() == []
        assert not (result_dir_for(config, job.series_uid, 1) / "notice.dcm").exists()
    finally:
        store.close()


def test_no_active_model_is_recorded_and_retry_runs_it_after_activation(
    tmp_path: Path, config: AppConfig, app_store: Store
) -> None:
    identity = SeriesIdentity()
    ingest(app_store, write_series(tmp_path / "ct", GEOMETRY, identity=identity))
    run_worker(app_store, config)
    (job,) = app_store.list_jobs()
    assert job.state is JobState.FAILED and job.reason == "no_active_model"
    assert "no active model for liver_ct; run appliance models import/activate" in (
        job.detail or ""
    )
    assert app_store.list_outbox() == []
    assert app_store.get_series(identity.series_uid).result["job_state"] == "failed"  # type: ignore[index]

    activate_tiny(app_store, config, tmp_path)
    queued = app_store.retry_job(job.id)
    assert queued.state is JobState.QUEUED
    assert app_store.get_series(identity.series_uid).state is SeriesState.COMPLETE
    run_worker(app_store, config)
    again = app_store.get_job(job.id)
    assert again.state is JobState.DONE and again.attempts == 2 and again.reason is None
    assert len(app_store.list_outbox()) == 2


def test_tampered_weights_fail_the_job_with_the_reason(
    tmp_path: Path, config: AppConfig, app_store: Store
) -> None:
    version = activate_tiny(app_store, config, tmp_path)
    weights = ModelRegistry(config.models_root).get("liver_ct", version).weights_path
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    ingest(app_store, write_series(tmp_path / "ct", GEOMETRY))
    run_worker(app_store, config)
    (job,) = app_store.list_jobs()
    assert job.state is JobState.FAILED and job.reason == "model_load_failed"
    assert "sha256" in (job.detail or "")
    assert app_store.retry_job(job.id).state is JobState.QUEUED
    with pytest.raises(Exception, match="only failed jobs"):
        app_store.retry_job(job.id)


class ArrivesWhileLoading(NetworkCache):
    """A real network cache; while it loads the model, one more instance of the series
    arrives (the series is re-opened as a new generation mid-job)."""

    def __init__(self, config: AppConfig, store: Store, late: Path) -> None:
        super().__init__(config)
        self.store, self.late = store, late

    def get(self, record: ModelRecord) -> LoadedModel:
        self.store.record_instance(to_new_instance(describe_spooled_file(self.late)))
        return super().get(record)


def test_series_reopened_during_processing_discards_the_stale_result(
    tmp_path: Path, config: AppConfig, app_store: Store
) -> None:
    activate_tiny(app_store, config, tmp_path)
    identity = SeriesIdentity()
    files = write_series(tmp_path / "ct", GEOMETRY, identity=identity)
    ingest(app_store, files[:-1])
    claim = app_store.claim_complete_series()
    assert claim is not None
    # The last slice arrives while the job runs: the series is re-opened (generation 2).
    finished = run_claim(
        app_store, claim, config, ArrivesWhileLoading(config, app_store, files[-1])
    )
    assert finished.current is False and finished.job_state is JobState.FAILED
    assert finished.reason == "superseded"
    assert not result_dir_for(config, identity.series_uid, claim.generation).exists()
    stale = app_store.get_job(finished.job_id)  # type: ignore[arg-type]
    assert stale.state is JobState.FAILED and stale.reason == "superseded"
    assert app_store.list_outbox() == []
    with pytest.raises(Exception, match="superseded by generation 2"):
        app_store.retry_job(stale.id)

    app_store.complete_quiet_series(-1.0)
    run_worker(app_store, config)
    newest = app_store.list_jobs()[0]
    assert newest.generation == 2 and newest.state is JobState.DONE
    assert len(app_store.list_outbox()) == 2


def test_shipped_bundles_are_registered_once_and_the_newest_activated(
    tmp_path: Path, app_store: Store
) -> None:
    shipped = tmp_path / "shipped"
    make_tiny_bundle(shipped, version="1.0.0")
    make_tiny_bundle(shipped, version="1.1.0", seed=1)
    config = parse_config(
        {"storage": {"root": str(tmp_path / "data")}, "models": {"shipped": str(shipped)}}
    )
    added = register_shipped(app_store, config)
    assert [(r.version, r.state) for r in added] == [
        ("1.0.0", ModelState.VALIDATED),
        ("1.1.0", ModelState.ACTIVE),
    ]
    active = app_store.active_model("liver_ct")
    assert active is not None and active.path.is_relative_to(config.models_root)
    assert register_shipped(app_store, config) == []  # the task has models now


def test_models_lifecycle_activate_and_rollback(app_store: Store) -> None:
    def add(version: str) -> None:
        app_store.register_model(
            task="liver_ct",
            version=version,
            name="m",
            weights_sha256="0" * 64,
            federated_round=None,
            path=Path("/nowhere"),
            origin="test",
        )

    for v in ("1.0.0", "1.1.0", "1.2.0"):
        add(v)
    with pytest.raises(Exception, match="--force"):
        app_store.activate("liver_ct", "1.0.0")
    app_store.activate("liver_ct", "1.0.0", force=True)
    app_store.set_model_state("liver_ct", "1.1.0", ModelState.VALIDATED)
    app_store.activate("liver_ct", "1.1.0")
    app_store.activate("liver_ct", "1.2.0", force=True)
    states = {m.version: m.state for m in app_store.list_models("liver_ct")}
    assert states == {
        "1.0.0": ModelState.RETIRED,
        "1.1.0": ModelState.RETIRED,
        "1.2.0": ModelState.ACTIVE,
    }
    assert app_store.rollback("liver_ct").version == "1.1.0"
    assert app_store.rollback("liver_ct").version == "1.0.0"
    with pytest.raises(Exception, match="no previous active model"):
        app_store.rollback("liver_ct")
    assert [m.version for m in app_store.list_models() if m.state is ModelState.ACTIVE] == ["1.0.0"]
    add("2.0.0")
    app_store.set_model_state("liver_ct", "2.0.0", ModelState.REJECTED)
    with pytest.raises(Exception, match="rejected"):
        app_store.activate("liver_ct", "2.0.0", force=True)
    history = app_store.activation_history("liver_ct")
    assert [h.action for h in history][:2] == ["rollback", "rollback"]


def test_database_of_schema_1_gains_the_new_tables(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "INSERT INTO meta VALUES ('schema_version', '1');"
    )
    db.commit()
    db.close()
    store = Store(path)
    try:
        assert store.list_models() == [] and store.list_jobs() == []
        assert store.job_counts()["failed"] == 0
    finally:
        store.close()
    db = sqlite3.connect(path)
    version = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    assert version == str(SCHEMA_VERSION)
    db.close()


def test_new_instance_type_is_unchanged() -> None:
    assert "modality" in NewInstance.__dataclass_fields__


def test_a_two_stage_model_runs_both_stages_and_stamps_its_one_weights_hash(
    tmp_path: Path, config: AppConfig, app_store: Store
) -> None:
    bundle = make_tiny_cascade_bundle(tmp_path / "src", locator_finds=True)
    version = activate(app_store, config, bundle)
    identity = SeriesIdentity()
    ingest(app_store, write_series(tmp_path / "ct", GEOMETRY, identity=identity))
    run_worker(app_store, config)
    (job,) = app_store.list_jobs()
    assert job.state is JobState.DONE, job.detail
    assert job.model_version == version and job.model_sha256 == bundle.card.weights_sha256
    assert {"locator_total", "refiner_total"} <= set(job.timings["inference"])
    seg = dcmread(job.outputs["seg_path"])
    assert bundle.card.weights_sha256 in seg.ImageComments
    assert len(app_store.list_outbox()) == 2


def test_a_two_stage_model_that_finds_no_organ_records_it_and_sends_nothing(
    tmp_path: Path, config: AppConfig, app_store: Store
) -> None:
    activate(app_store, config, make_tiny_cascade_bundle(tmp_path / "src", locator_finds=False))
    identity = SeriesIdentity()
    ingest(app_store, write_series(tmp_path / "ct", GEOMETRY, identity=identity))
    run_worker(app_store, config)
    (job,) = app_store.list_jobs()
    assert job.state is JobState.FAILED and job.reason == "nothing_found"
    assert "stage 1 of liver_ct/0.0.1-cascade found no liver" in (job.detail or "")
    assert app_store.list_outbox() == []
