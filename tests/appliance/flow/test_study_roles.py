"""Tasks of several series by role (glioma_brats: T1c, T1, T2, FLAIR), with the store and
real files: one job per study on the reference (T1c) series, the others its inputs; a
reference that waits for its roles, is re-queued when they come, or gives up."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from appliance.config import AppConfig, parse_config
from appliance.flow.study import sweep_waiting_studies
from appliance.flow.worker import Worker
from appliance.site_models.registry import import_bundle
from appliance.states import JobState, SeriesState, StudyReason
from appliance.store import Store
from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from dicom_bridge.uids import short_ref
from tests.appliance.flow.helpers import ingest
from tests.appliance.tiny_models import make_tiny_bundle

GRID = SeriesGeometry(slices=10, rows=32, columns=32)
ROLES = {"T1C": "t1c", "T1": "t1", "T2": "t2", "FLAIR": "flair"}
RULES = [
    {"task": "glioma_brats", "modality": "MR", "series_description": f"^{d}$", "role": r}
    for d, r in ROLES.items()
]


def brats_config(
    root: Path, wait_minutes: float = 10.0, rules: list[dict[str, Any]] | None = None
) -> AppConfig:
    return parse_config(
        {
            "storage": {"root": str(root / "data"), "fsync": False},
            "models": {"shipped": "", "device": "cpu"},
            "destinations": [
                {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}
            ],
            "routing": {"rules": rules or RULES, "study_wait_minutes": wait_minutes},
        }
    )


def brats_store(config: AppConfig, root: Path) -> Store:
    """The config's store, with a tiny glioma_brats model active."""
    store = Store(config.storage.database)
    bundle = make_tiny_bundle(root / "bundles", task="glioma_brats")
    record = import_bundle(store, config, bundle.path, task="glioma_brats")
    store.activate("glioma_brats", record.version, force=True)
    return store


@pytest.fixture
def brats(tmp_path: Path) -> Iterator[tuple[AppConfig, Store]]:
    config = brats_config(tmp_path, wait_minutes=0.002)  # 0.12 s
    store = brats_store(config, tmp_path)
    yield config, store
    store.close()


def write_study(
    root: Path, descriptions: list[str], *, description: str | None = None
) -> dict[str, tuple[str, list[Path]]]:
    """One series per description (keyed by it; with ``description``, all of them get that
    SeriesDescription instead), of one study and Frame of Reference."""
    study, frame = SeriesIdentity(), SeriesIdentity()
    out = {}
    for number, name in enumerate(descriptions, start=1):
        identity = SeriesIdentity(
            patient_name="PHANTOM^MR",
            study_uid=study.study_uid,
            frame_of_reference_uid=frame.frame_of_reference_uid,
            series_number=number,
            series_description=description or name,
            body_part="BRAIN",
        )
        files = write_series(root / name, GRID, modality="MR", identity=identity)
        out[name] = (identity.series_uid, files)
    return out


def drain(store: Store, config: AppConfig) -> int:
    worker, passes = Worker(store, threading.Event(), config), 0
    while worker.run_once():
        passes += 1
    return passes


def test_four_role_series_make_one_job_on_the_reference(
    tmp_path: Path, brats: tuple[AppConfig, Store]
) -> None:
    config, store = brats
    study = write_study(tmp_path / "dicom", ["FLAIR", "T2", "T1", "T1C"])  # reference last
    ingest(store, [f for _, files in study.values() for f in files])
    drain(store, config)

    (job,) = store.list_jobs()
    reference = study["T1C"][0]
    assert job.state is JobState.DONE and job.series_uid == reference
    assert job.outputs["inputs"] == {ROLES[d]: uid for d, (uid, _) in study.items()}
    assert store.get_series(reference).state is SeriesState.DONE
    for description in ("T1", "T2", "FLAIR"):
        series = store.get_series(study[description][0])
        assert series.state is SeriesState.SKIPPED
        assert series.reason == StudyReason.STUDY_INPUT
        assert f"job {job.id}" in (series.detail or "")
        assert short_ref(reference) in (series.detail or "")
    seg = dcmread(job.outputs["seg_path"])
    assert len(seg.SegmentSequence) == 3
    referenced = {str(item.SeriesInstanceUID) for item in seg.ReferencedSeriesSequence}
    assert referenced == {uid for uid, _ in study.values()}


def test_reference_first_waits_then_is_requeued_when_its_roles_come(
    tmp_path: Path, brats: tuple[AppConfig, Store]
) -> None:
    config, store = brats
    study = write_study(tmp_path / "dicom", ["T1C", "T1", "T2", "FLAIR"])
    reference = study["T1C"][0]
    ingest(store, study["T1C"][1])
    drain(store, config)
    waiting = store.get_series(reference)
    assert waiting.state is SeriesState.SKIPPED
    assert waiting.reason == StudyReason.WAITING_FOR_ROLES
    assert waiting.detail == "glioma_brats needs t1, t2, flair; waiting up to 0.002 min"
    assert store.list_jobs() == []

    ingest(store, [f for d in ("T1", "T2", "FLAIR") for f in study[d][1]])
    drain(store, config)  # the last role's claim re-queues the reference, which runs
    (job,) = store.list_jobs()
    assert job.series_uid == reference and job.state is JobState.DONE
    assert store.get_series(reference).state is SeriesState.DONE
    assert {store.get_series(study[d][0]).reason for d in ("T1", "T2", "FLAIR")} == {
        StudyReason.STUDY_INPUT
    }


def test_a_study_without_flair_waits_then_is_reported_missing_roles(
    tmp_path: Path, brats: tuple[AppConfig, Store]
) -> None:
    config, store = brats
    study = write_study(tmp_path / "dicom", ["T1C", "T1", "T2"])
    ingest(store, [f for _, files in study.values() for f in files])
    drain(store, config)
    reference = study["T1C"][0]
    series = store.get_series(reference)
    assert series.reason == StudyReason.WAITING_FOR_ROLES
    assert "needs flair" in (series.detail or "")
    sweep_waiting_studies(store, config)  # not yet waited long enough
    assert store.get_series(reference).reason == StudyReason.WAITING_FOR_ROLES
    time.sleep(0.2)
    sweep_waiting_studies(store, config)
    series = store.get_series(reference)
    assert series.state is SeriesState.SKIPPED and series.reason == StudyReason.MISSING_ROLES
    assert series.detail == "no FLAIR series after 0.002 minutes"
    assert store.list_jobs() == []

    # FLAIR arrives late: its claim re-queues the reference, which runs the study's job
    flair = write_study(tmp_path / "late", ["FLAIR"])["FLAIR"]
    late = [_same_study(path, reference, store) for path in flair[1]]
    ingest(store, late)
    drain(store, config)
    (job,) = store.list_jobs()
    assert job.series_uid == reference and job.state is JobState.DONE


def _same_study(path: Path, reference: str, store: Store) -> Path:
    """``path`` rewritten into the study and Frame of Reference of series ``reference``."""
    ref = dcmread(store.series_instances(reference)[0].path, stop_before_pixels=True)
    ds = dcmread(path)
    ds.StudyInstanceUID = ref.StudyInstanceUID
    ds.FrameOfReferenceUID = ref.FrameOfReferenceUID
    ds.save_as(path)
    return path


def test_another_frame_of_reference_is_refused(
    tmp_path: Path, brats: tuple[AppConfig, Store]
) -> None:
    config, store = brats
    study = write_study(tmp_path / "dicom", ["T1", "T2", "FLAIR"])
    t1c = write_study(tmp_path / "other", ["T1C"])["T1C"]
    first = study["T1"][0]
    for path in t1c[1]:  # same study, its own Frame of Reference
        ds = dcmread(path)
        ds.StudyInstanceUID = dcmread(study["T1"][1][0]).StudyInstanceUID
        ds.save_as(path)
    ingest(store, [f for _, files in study.values() for f in files] + t1c[1])
    drain(store, config)
    series = store.get_series(t1c[0])
    assert series.state is SeriesState.REJECTED
    assert series.reason == "frame_of_reference_mismatch"
    assert "no registration is attempted" in (series.detail or "")
    assert store.get_series(first).reason == StudyReason.STUDY_INPUT


# -- roles told apart by MR sequence attributes, not by Series Description -----------------

#: The README's glioma_brats rules by attributes (FLAIR first: its long TE fits T2 too).
ATTRIBUTE_RULES: list[dict[str, Any]] = [
    {
        "task": "glioma_brats",
        "modality": "MR",
        "role": "flair",
        "scanning_sequence_includes": ["IR"],
        "inversion_time_ms": [1500, 3500],
    },
    {"task": "glioma_brats", "modality": "MR", "role": "t1c", "contrast": True},
    {"task": "glioma_brats", "modality": "MR", "role": "t2", "echo_time_ms": [70, 200]},
    {
        "task": "glioma_brats",
        "modality": "MR",
        "role": "t1",
        "contrast": False,
        "echo_time_ms": [0, 30],
    },
]

#: Header attributes by role: (ContrastBolusAgent, ScanningSequence, TE, TR, TI)
SEQUENCES: dict[str, tuple[str, list[str], float, float, float | None]] = {
    "t1c": ("GADOTERATE", ["SE"], 12.0, 550.0, None),
    "t1": ("", ["SE"], 12.0, 550.0, None),
    "t2": ("", ["SE"], 100.0, 4500.0, None),
    "flair": ("", ["SE", "IR"], 120.0, 9000.0, 2500.0),
}


def _set_sequence(path: Path, role: str) -> None:
    agent, scanning, echo, repetition, inversion = SEQUENCES[role]
    ds = dcmread(path)
    if agent:
        ds.ContrastBolusAgent = agent
    ds.ScanningSequence = scanning
    ds.EchoTime = echo
    ds.RepetitionTime = repetition
    if inversion is not None:
        ds.InversionTime = inversion
    ds.save_as(path)


def test_roles_are_told_apart_by_sequence_attributes_alone(tmp_path: Path) -> None:
    config = brats_config(tmp_path, rules=ATTRIBUTE_RULES)
    store = brats_store(config, tmp_path)
    try:
        study = write_study(
            tmp_path / "dicom", ["flair", "t2", "t1", "t1c"], description="AX BRAIN"
        )
        for role, (_, files) in study.items():
            for path in files:
                _set_sequence(path, role)
        ingest(store, [f for _, files in study.values() for f in files])
        flair = store.get_series(study["flair"][0])
        assert flair.series_description == "AX BRAIN"
        assert flair.scanning_sequence == ("SE", "IR") and flair.inversion_time_ms == 2500.0
        assert store.get_series(study["t1c"][0]).contrast_bolus_agent == "GADOTERATE"
        drain(store, config)

        (job,) = store.list_jobs()
        assert job.state is JobState.DONE and job.series_uid == study["t1c"][0]
        assert job.outputs["inputs"] == {role: uid for role, (uid, _) in study.items()}
        for role in ("t1", "t2", "flair"):
            assert store.get_series(study[role][0]).reason == StudyReason.STUDY_INPUT
    finally:
        store.close()
