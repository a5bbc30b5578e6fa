"""Annotations are trusted explicitly: only listed callers' SEGs become cases, untrusted or
implausible ones wait for review, and one caller's case never silently replaces
another's; an admin accepts or rejects a pending case (audited)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom import dcmread
from typer.testing import CliRunner

from appliance.cases.from_seg import case_from_seg
from appliance.cli import app
from appliance.config import AppConfig
from appliance.flow.ingest import ingest_files
from appliance.states import CaseOrigin, CaseState, Refusal, SeriesState
from appliance.store import Store
from appliance.store.audit import audit_path
from tests.appliance.cases.support import DCMQI_CT, DCMQI_SEG, PACS, cases_config
from tests.peers import require_data
from tests.seg_variants import seg_variant


def _store(tmp_path: Path, store: Store, **cases: object) -> AppConfig:
    require_data(DCMQI_SEG)
    config = cases_config(tmp_path, **cases)
    ingest_files(store, config, DCMQI_CT)
    return config


#: The voxels the liver segment of DCMQI_SEG labels on its CT (the tumour segment is empty).
LIVER_VOXELS = 107098


def _predicted(store: Store, voxels: dict[str, int], task: str = "liver_ct") -> None:
    """A finished job of this appliance segmented the CT series: its mask had ``voxels``."""
    store.complete_quiet_series(0.0)
    claim = store.claim_complete_series()
    assert claim is not None
    job = store.start_job(claim, "1.2.3", task)
    store.finish_series(claim, SeriesState.DONE, job_id=job.id, job_outputs={"voxels": voxels})


def _audit(store: Store, event: str) -> list[dict[str, object]]:
    lines = audit_path(store.path).read_text().splitlines()
    return [e for e in map(json.loads, lines) if e.get("event") == event]


def test_a_seg_from_a_caller_not_listed_is_refused_with_its_caller(
    tmp_path: Path, store: Store
) -> None:
    config = _store(tmp_path, store)
    outcome = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM, calling_ae="INTRUDER")
    assert outcome.case is None and outcome.refusal is not None
    assert outcome.refusal.reason == Refusal.CALLER_NOT_TRUSTED.value
    assert outcome.refusal.calling_ae == "INTRUDER"
    assert "INTRUDER" in outcome.refusal.detail
    assert store.list_cases() == []
    # Empty annotation_callers (the default): no DICOM caller may submit annotations.
    none = cases_config(tmp_path, annotation_callers=(), trusted_callers=())
    refused = case_from_seg(store, none, DCMQI_SEG, CaseOrigin.DICOM, calling_ae=PACS).refusal
    assert refused is not None and refused.reason == Refusal.CALLER_NOT_TRUSTED.value


def test_a_listed_but_untrusted_caller_gives_a_pending_case(tmp_path: Path, store: Store) -> None:
    config = _store(tmp_path, store, annotation_callers=("VIEWER",), trusted_callers=())
    case = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM, calling_ae="VIEWER").case
    assert case is not None and case.state is CaseState.PENDING
    assert case.calling_ae == "VIEWER"
    assert case.review[0].startswith("caller_needs_review")
    assert store.list_cases(states=[CaseState.ACTIVE]) == []
    added = _audit(store, "case_added")[-1]
    assert added["calling_ae"] == "VIEWER" and added["state"] == "pending"


def test_an_implausible_seg_from_a_trusted_caller_goes_to_review(
    tmp_path: Path, store: Store
) -> None:
    config = _store(tmp_path, store)
    full = seg_variant(DCMQI_SEG, tmp_path / "full.dcm", fill=True)
    case = case_from_seg(store, config, full, CaseOrigin.DICOM, calling_ae=PACS).case
    assert case is not None and case.state is CaseState.PENDING
    assert any(r.startswith("label_fraction: 1.00") for r in case.review), case.review
    # 100 % of a CT volume includes the air around the body.
    assert any(r.startswith("outside_body") for r in case.review), case.review


def test_the_real_annotation_is_plausible(tmp_path: Path, store: Store) -> None:
    config = _store(tmp_path, store)
    case = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM, calling_ae=PACS).case
    assert case is not None and case.state is CaseState.ACTIVE and case.review == []


def test_another_callers_annotation_does_not_supersede_the_radiologists(
    tmp_path: Path, store: Store
) -> None:
    config = _store(
        tmp_path, store, annotation_callers=(PACS, "OTHER"), trusted_callers=(PACS, "OTHER")
    )
    first = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM, calling_ae=PACS).case
    other = seg_variant(DCMQI_SEG, tmp_path / "other.dcm")
    outcome = case_from_seg(store, config, other, CaseOrigin.DICOM, calling_ae="OTHER")
    assert first is not None and outcome.case is not None
    assert outcome.superseded == ()
    assert store.get_case(first.id).state is CaseState.ACTIVE
    assert outcome.case.state is CaseState.PENDING
    assert outcome.case.review == [f"conflicts_with_case {first.id}"]
    # The same caller's newer annotation supersedes as before.
    newer = seg_variant(DCMQI_SEG, tmp_path / "newer.dcm")
    again = case_from_seg(store, config, newer, CaseOrigin.DICOM, calling_ae=PACS)
    assert again.superseded == (first.id,)


def test_review_accept_and_reject_from_the_cli(tmp_path: Path) -> None:
    require_data(DCMQI_SEG)
    config = cases_config(tmp_path, annotation_callers=(PACS, "OTHER"), trusted_callers=(PACS,))
    store = Store(config.storage.database)
    ingest_files(store, config, DCMQI_CT)
    first = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM, calling_ae=PACS).case
    a = case_from_seg(
        store,
        config,
        seg_variant(DCMQI_SEG, tmp_path / "a.dcm"),
        CaseOrigin.DICOM,
        calling_ae="OTHER",
    ).case
    b = case_from_seg(
        store,
        config,
        seg_variant(DCMQI_SEG, tmp_path / "b.dcm"),
        CaseOrigin.DICOM,
        calling_ae="OTHER",
    ).case
    assert first is not None and a is not None and b is not None
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(f'[storage]\nroot = "{config.storage.root}"\nfsync = false\n')
    store.close()
    runner = CliRunner()

    listed = runner.invoke(app, ["cases", "review", "-c", str(cfg), "--json"])
    assert listed.exit_code == 0, listed.output
    pending = json.loads(listed.output)["pending"]
    assert [p["id"] for p in pending] == [a.id, b.id]
    assert "caller_needs_review: OTHER is not in cases.trusted_callers" in pending[0]["review"]

    # exclude/include cannot bypass the review
    bypass = runner.invoke(app, ["cases", "include", str(a.id), "-c", str(cfg)])
    assert bypass.exit_code != 0 and "pending review" in bypass.output

    accepted = runner.invoke(app, ["cases", "accept", str(a.id), "-c", str(cfg)])
    assert accepted.exit_code == 0, accepted.output
    rejected = runner.invoke(app, ["cases", "reject", str(b.id), "-c", str(cfg)])
    assert rejected.exit_code == 0, rejected.output
    twice = runner.invoke(app, ["cases", "reject", str(b.id), "-c", str(cfg)])
    assert twice.exit_code != 0 and "not pending" in twice.output

    again = Store(config.storage.database)
    try:
        assert again.get_case(a.id).state is CaseState.ACTIVE
        assert again.get_case(first.id).state is CaseState.SUPERSEDED
        assert again.get_case(b.id).state is CaseState.REJECTED
        reviewed = _audit(again, "case_reviewed")
    finally:
        again.close()
    assert [(e["case"], e["decision"]) for e in reviewed] == [
        (a.id, "accepted"),
        (b.id, "rejected"),
    ]


@pytest.mark.parametrize("model", [LIVER_VOXELS, LIVER_VOXELS // 4, LIVER_VOXELS * 4])
def test_a_seg_near_the_models_prediction_is_plausible(
    tmp_path: Path, store: Store, model: int
) -> None:
    config = _store(tmp_path, store)
    # All labels of the model's mask count together against all labelled voxels.
    _predicted(store, {"Liver": model - model // 10, "Liver tumour": model // 10})
    case = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM, calling_ae=PACS).case
    assert case is not None and sum(case.labels.values()) == LIVER_VOXELS
    assert case.state is CaseState.ACTIVE and case.review == []


@pytest.mark.parametrize(
    ("model", "ratio"), [(LIVER_VOXELS // 10, "10.00x"), (LIVER_VOXELS * 20, "0.05x")]
)
def test_a_seg_far_from_the_models_prediction_goes_to_review(
    tmp_path: Path, store: Store, model: int, ratio: str
) -> None:
    config = _store(tmp_path, store)
    _predicted(store, {"Liver": model, "Liver tumour": 0})
    case = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM, calling_ae=PACS).case
    assert case is not None and case.state is CaseState.PENDING
    assert case.review == [
        f"prediction_ratio: {LIVER_VOXELS} labelled voxels against the model's {model} "
        f"({ratio}, outside 0.2x to 5x)"
    ]
    assert store.list_cases(states=[CaseState.ACTIVE]) == []
    added = _audit(store, "case_added")[-1]
    assert added["state"] == "pending" and added["review"] == case.review
    # The admin's import is checked too.
    imported = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.CLI).case
    assert imported is not None and imported.state is CaseState.PENDING
    assert imported.review[0].startswith("prediction_ratio:")


def test_the_prediction_ratio_is_configurable(tmp_path: Path, store: Store) -> None:
    config = _store(tmp_path, store, prediction_ratio=(0.05, 20.0))
    _predicted(store, {"Liver": LIVER_VOXELS // 10})
    case = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM, calling_ae=PACS).case
    assert case is not None and case.state is CaseState.ACTIVE and case.review == []


def test_without_a_prediction_of_the_task_the_ratio_does_not_apply(
    tmp_path: Path, store: Store
) -> None:
    config = _store(tmp_path, store)
    series = str(dcmread(DCMQI_CT[0], stop_before_pixels=True).SeriesInstanceUID)
    assert store.prediction_voxels(series, "liver_ct") is None
    # A job of another task for the series is no prediction of this one either.
    _predicted(store, {"Spleen": 1}, task="spleen_ct")
    assert store.prediction_voxels(series, "liver_ct") is None
    case = case_from_seg(store, config, DCMQI_SEG, CaseOrigin.DICOM, calling_ae=PACS).case
    assert case is not None and sum(case.labels.values()) == LIVER_VOXELS
    assert case.state is CaseState.ACTIVE and case.review == []
