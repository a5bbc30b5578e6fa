"""Real MONAI model-zoo bundles in, through ``appliance models import`` and ``serve``.

The configs are the real ones (``../shared/data/monai_model_zoo``); the weights are built
here from each config's ``network_def`` (real weights cannot be downloaded), so these
tests check what the appliance does with a bundle, not how well its weights segment:

- spleen for liver_ct is refused with a message that says what the bundle segments and
  what the task needs;
- wholeBody (105 channels, liver = channel 5) imports for liver_ct, becomes active, and
  its job on a CT series pushed over DICOM runs the bundle's OWN pre-processing (1.5 mm
  isotropic, NormalizeIntensity over the non-zero voxels, then ScaleIntensity to [-1, 1])
  and returns a SEG that passes ``dciodvfy``;
- brats imports for glioma_brats (sigmoid, three overlapping outputs), becomes active,
  and a four-sequence phantom study (T1C, T1, T2, FLAIR) pushed over DICOM gives one job
  that runs the bundle's own pipeline (native grid, channel-wise z-score) and a SEG with
  three segments referencing all four series that passes ``dciodvfy``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread

from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from tests.interop.test_roundtrip_seg import dciodvfy_errors
from tests.interop.test_study_roles import RULES, write_study
from tests.models.zoo import NONCOMMERCIAL_ZOO, zoo_bundle, zoo_configs
from tests.peers import ApplianceProcess, require_program, storescu

STUDY_CONFIG = '[models]\ndevice = "cpu"\n\n[routing]\nstudy_wait_minutes = 5\n\n' + RULES

pytestmark = pytest.mark.interop


def _card(app: ApplianceProcess, task: str, version: str) -> dict[str, Any]:
    path = app.root / "models" / task / version / "model_card.json"
    return dict(json.loads(path.read_text(encoding="utf-8")))


def test_spleen_is_refused_for_liver_with_what_it_segments(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    app = appliance_factory(start=False)
    src = zoo_bundle(tmp_path, "spleen_ct_segmentation")
    result = app.cli("models", "import", str(src), "--task", "liver_ct", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "spleen_ct_segmentation segments background, spleen" in result.stderr
    assert "task liver_ct needs Liver" in result.stderr
    assert "--label-map" in result.stderr
    assert not (app.root / "models" / "liver_ct" / "0.5.9").exists()


def test_the_yaml_multi_organ_bundle_is_read_and_refused_with_the_reason(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    # Non-commercial configs: read from the shared data, copied only into tmp_path.
    app = appliance_factory(start=False)
    src = tmp_path / "multi_organ_segmentation"
    shutil.copytree(zoo_configs("multi_organ_segmentation", NONCOMMERCIAL_ZOO), src / "configs")
    (src / "models").mkdir()
    (src / "models" / "model.pt").write_bytes(b"")  # never reached: the network is refused
    result = app.cli("models", "import", str(src), "--task", "liver_ct", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "configs/inference.yaml: network_def._target_" in result.stderr
    assert "'monai.networks.nets.DiNTS' is not allowed" in result.stderr


def test_wholebody_runs_its_own_pipeline_for_liver(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    require_program("dciodvfy")
    app = appliance_factory(quiet=0.5, start=False)
    src = zoo_bundle(tmp_path, "wholeBody_ct_segmentation")
    imported = app.cli("models", "import", str(src), "--task", "liver_ct")
    assert "Liver tumour" in imported.stderr  # warned: the bundle has no tumour channel
    app.cli("models", "activate", "liver_ct", "0.2.5", "--force")
    card = _card(app, "liver_ct", "0.2.5")
    assert card["preprocessing"]["bundle"]["channel_labels"] == {"5": 1}
    assert card["preprocessing"]["bundle"]["out_channels"] == 105
    assert card["preprocessing"]["bundle_pipeline"]["inferer"]["params"]["roi_size"] == [96] * 3
    app.start()

    identity = SeriesIdentity()
    files = write_series(
        tmp_path / "ct",
        SeriesGeometry(slices=24, rows=48, columns=48, pixel_spacing=(3.0, 3.0), slice_spacing=3.0),
        identity=identity,
    )
    stored = storescu(app.port, files, timeout=60)
    assert stored.returncode == 0, stored.stdout + stored.stderr

    # the job's own state: the series' may read "done" a moment before its job's record
    # does (a race seen in CI)
    report = app.wait_series(
        lambda r: any(
            j["series_uid"] == identity.series_uid and j["state"] in ("done", "failed")
            for j in r["jobs"]
        ),
        timeout=240,
    )
    (job,) = [j for j in report["jobs"] if j["series_uid"] == identity.series_uid]
    assert job["state"] == "done", job
    assert job["model"]["version"] == "0.2.5"
    pre = job["outputs"]["preprocessing"]
    assert pre["source"] == "bundle"
    assert pre["working_spacing_mm"] == [1.5, 1.5, 1.5]
    ops = [(step["op"], step["params"]) for step in pre["steps"]]
    names = [op for op, _ in ops]
    assert names[:4] == ["Orientation", "Spacing", "NormalizeIntensity", "ScaleIntensity"]
    assert ops[1][1]["pixdim"] == [1.5, 1.5, 1.5]
    assert ops[2][1]["nonzero"] is True
    assert (ops[3][1]["minv"], ops[3][1]["maxv"]) == (-1.0, 1.0)
    assert "ScaleIntensityRange" not in names  # not the task's CT window
    assert "SlidingWindowInferer" in names

    seg_path = app.root / "results" / identity.series_uid / "gen-1" / "seg.dcm"
    assert dciodvfy_errors(seg_path) == []


def test_brats_runs_end_to_end_on_a_four_sequence_study(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    require_program("dciodvfy")
    app = appliance_factory(quiet=0.5, extra=STUDY_CONFIG, start=False)
    src = zoo_bundle(tmp_path, "brats_mri_segmentation")
    app.cli("models", "import", str(src), "--task", "glioma_brats")
    card = _card(app, "glioma_brats", "0.5.2")
    bundle_entry = card["preprocessing"]["bundle"]
    assert bundle_entry["activation"] == "sigmoid"
    # channel_def 0 Tumor core, 1 Whole tumor, 2 Enhancing tumor -> labels 2, 3, 1
    assert bundle_entry["channel_labels"] == {"0": 2, "1": 3, "2": 1}
    post = card["preprocessing"]["bundle_pipeline"]["postprocessing"]
    assert [s["action"] for s in post if s["op"] == "Lambda"] == ["ignored"]
    app.cli("models", "activate", "glioma_brats", "0.5.2", "--force")
    app.start()

    study = write_study(tmp_path / "study", ("T1C", "T1", "T2", "FLAIR"), seed=3)
    uid = {name: str(dcmread(files[0]).SeriesInstanceUID) for name, files in study.items()}
    stored = storescu(app.port, [p for files in study.values() for p in files], timeout=120)
    assert stored.returncode == 0, stored.stdout + stored.stderr

    report = app.wait_series(
        lambda r: any(
            s["series_uid"] == uid["T1C"] and s["state"] in ("done", "failed", "rejected")
            for s in r["series"]
        ),
        timeout=420,
    )
    (job,) = [j for j in report["jobs"] if j["series_uid"] == uid["T1C"]]
    assert job["state"] == "done", job
    assert job["model"]["version"] == "0.5.2"
    pre = job["outputs"]["preprocessing"]
    assert pre["source"] == "bundle" and pre["working_spacing_mm"] is None  # native grid
    normalize = next(s for s in pre["steps"] if s["op"] == "NormalizeIntensity")
    assert normalize["params"]["nonzero"] is True and normalize["params"]["channel_wise"] is True

    seg_path = app.root / "results" / uid["T1C"] / "gen-1" / "seg.dcm"
    assert dciodvfy_errors(seg_path) == []
    seg = hd.seg.segread(seg_path)
    assert [str(s.SegmentLabel) for s in seg.SegmentSequence] == [
        "Enhancing tumour",
        "Tumour core",
        "Whole tumour",
    ]
    assert {str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence} == set(uid.values())
    # Three segments, each with its own frames: overlap is representable (and the masks
    # read back are the job's own, segment by segment).
    saved = np.load(app.root / "results" / uid["T1C"] / "gen-1" / "mask.npz")["mask"]
    assert saved.shape[0] == 3 and saved.dtype == np.bool_
