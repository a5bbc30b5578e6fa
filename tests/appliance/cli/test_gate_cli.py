"""``appliance models validate`` end to end: a radiologist's SEG of a phantom MR study
(imported with ``appliance cases import``) lands in the held-out split; a candidate made
from new weights goes through the gate on it, becomes active, and the next job's SEG
carries the new version; rollback brings the shipped model back."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from appliance.cases.split import split_for
from appliance.cli import app
from appliance.config import load_config
from appliance.flow.worker import Worker
from appliance.site_models.registry import register_candidate, register_shipped, registry_for
from appliance.states import CaseSplit, JobState
from appliance.store import Store
from dicom_bridge.phantom_series import write_phantom_series
from dicom_bridge.synthetic import SeriesIdentity
from models.lifecycle import ModelState
from models.phantoms import MR_DEFAULT, generate_phantom
from models.tasks import GLIOMA_MR_SPEC, Code

SPLIT_KEY = "gate-cli-test-split-key-0123456789"
SMALL_MR = replace(MR_DEFAULT, spacing_mm=(4.0, 3.0, 3.0), matrix=(48, 80, 80), seed=9410)


def _held_out_identity() -> SeriesIdentity:
    """A study whose UID the site's split puts in the held-out set."""
    for n in range(1, 200):
        study = f"1.2.826.0.1.3680043.8.498.{9410 + n}"
        if split_for(study, SPLIT_KEY.encode(), 0.5) is CaseSplit.HELD_OUT:
            return SeriesIdentity(
                patient_name="PHANTOM^MR", study_uid=study, series_description="Ax T1 POST GAD"
            )
    raise AssertionError("no held-out study UID found")


def _concept(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def _viewer_seg(sources: list[Path], labels: np.ndarray, out: Path) -> Path:
    """A radiologist's BINARY SEG of the glioma, as a viewer would write it."""
    datasets = [dcmread(p) for p in sources]
    glioma = GLIOMA_MR_SPEC.labels[0]
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="tumour",
        segmented_property_category=_concept(glioma.category),
        segmented_property_type=_concept(glioma.property_type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
        anatomic_regions=[codes.SCT.Brain],
    )
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=(labels == glioma.index).astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=generate_uid(),
        series_number=900,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Test Viewer",
        manufacturer_model_name="Viewer",
        software_versions="1",
        device_serial_number="1",
    )
    seg.save_as(out)
    return out


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, Path]:
    cfg = tmp_path / "appliance.toml"
    cfg.write_text(
        f'[storage]\nroot = "{tmp_path / "data"}"\nfsync = false\n'
        '[models]\ndevice = "cpu"\ngate_min_cases = 1\n'
        f'[cases]\nheld_out_fraction = 0.5\nsplit_key = "{SPLIT_KEY}"\n',
        encoding="utf-8",
    )
    phantom = generate_phantom("mr_t1c", SMALL_MR, 0)
    series = tmp_path / "series"
    files = write_phantom_series(
        series, phantom.image, phantom.affine_lps, modality="MR", identity=_held_out_identity()
    )
    seg = _viewer_seg(files, phantom.labels, tmp_path / "viewer_seg.dcm")
    return cfg, seg


def test_validate_promotes_on_held_out_cases_and_rollback_restores(
    site: tuple[Path, Path], tmp_path: Path
) -> None:
    cfg, seg = site
    runner = CliRunner()
    result = runner.invoke(
        app, ["cases", "import", str(seg), "--series", str(tmp_path / "series"), "-c", str(cfg)]
    )
    assert result.exit_code == 0, result.output
    listing = json.loads(runner.invoke(app, ["cases", "list", "--json", "-c", str(cfg)]).output)
    (case,) = listing["cases"]
    assert case["task"] == "glioma_mr" and case["split"] == "held_out"
    status = json.loads(runner.invoke(app, ["status", "--json", "-c", str(cfg)]).output)
    assert status["cases"] == {
        "glioma_mr": {"train": 0, "held_out": 1, "excluded": 0, "superseded": 0}
    }
    text = runner.invoke(app, ["status", "-c", str(cfg)]).output
    assert "annotated cases: glioma_mr train 0, held-out 1, excluded 0" in text

    config = load_config(cfg)
    store = Store(config.storage.database)
    try:
        glioma = [r for r in register_shipped(store, config) if r.task == "glioma_mr"]
        # every shipped version is registered; the newest is active
        (shipped,) = [r for r in glioma if r.state is ModelState.ACTIVE]
        older = {r.version for r in glioma} - {shipped.version}
        registry = registry_for(config)
        weights = registry.load_state_dict(registry.get("glioma_mr", shipped.version))
        register_candidate(
            store,
            config,
            parent=shipped,
            version="0.9.0",
            state_dict=weights,
            training_data="test",
            source={"kind": "federated", "strategy": "fedavg", "run_id": "r1", "rounds": 2},
            federated_round=2,
        )
    finally:
        store.close()

    result = runner.invoke(app, ["models", "validate", "glioma_mr", "0.9.0", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    assert "PROMOTED" in result.output and "1 held-out case" in result.output
    listed = runner.invoke(app, ["models", "list", "--json", "-c", str(cfg)]).output
    states = {m["version"]: m["state"] for m in json.loads(listed) if m["task"] == "glioma_mr"}
    assert states == {shipped.version: "retired", "0.9.0": "active"} | dict.fromkeys(
        older, "validated"
    )
    shown = runner.invoke(app, ["models", "show", "glioma_mr", "0.9.0", "-c", str(cfg)]).output
    assert "gate: promoted" in shown

    # The next job segments with the promoted version, and its SEG says so.
    store = Store(config.storage.database)
    try:
        store.complete_quiet_series(-1.0)
        assert Worker(store, threading.Event(), config).run_once()
        (job,) = [j for j in store.list_jobs() if j.task == "glioma_mr"]
        assert job.state is JobState.DONE and job.model_version == "0.9.0"
        assert job.federated_round == 2
        seg_out = dcmread(job.outputs["seg_path"])
        algorithm = seg_out.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmVersion == "0.9.0"
    finally:
        store.close()

    # Validating it again is refused: it is no longer a candidate.
    again = runner.invoke(app, ["models", "validate", "glioma_mr", "0.9.0", "-c", str(cfg)])
    assert again.exit_code == 1 and "only a candidate" in again.output

    back = runner.invoke(app, ["models", "rollback", "glioma_mr", "-c", str(cfg)])
    assert back.exit_code == 0 and f"rolled back to {shipped.version}" in back.output
