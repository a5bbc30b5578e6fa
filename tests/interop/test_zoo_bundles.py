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
- brats imports for glioma_brats (sigmoid, three overlapping outputs); its pipeline on a
  four-sequence phantom study gives three overlapping segments, written into a SEG that
  passes ``dciodvfy``. (Routing a four-series study to one job through ``serve`` is not
  built yet.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest

from dicom_bridge.phantom_series import write_phantom_series
from dicom_bridge.seg import AlgorithmInfo, write_seg
from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from dicom_bridge.volume import load_series_volume
from tests.interop.test_roundtrip_seg import dciodvfy_errors
from tests.models.zoo import zoo_bundle
from tests.peers import ApplianceProcess, require_program, storescu

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

    report = app.wait_series(
        lambda r: any(
            s["series_uid"] == identity.series_uid and s["state"] in ("done", "failed")
            for s in r["series"]
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


def test_brats_imports_for_glioma_brats_and_gives_overlapping_segments(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    require_program("dciodvfy")
    from appliance.flow.pipeline import segment_descriptions
    from models.bundle_run import run_pipeline
    from models.phantoms import BRATS_CHANNELS, MR_BRATS, brats_mr_study
    from models.registry import ModelRegistry
    from models.tasks import get_task

    app = appliance_factory(start=False)
    src = zoo_bundle(tmp_path, "brats_mri_segmentation")
    app.cli("models", "import", str(src), "--task", "glioma_brats")
    card = _card(app, "glioma_brats", "0.5.2")
    bundle_entry = card["preprocessing"]["bundle"]
    assert bundle_entry["activation"] == "sigmoid"
    # channel_def 0 Tumor core, 1 Whole tumor, 2 Enhancing tumor -> labels 2, 3, 1
    assert bundle_entry["channel_labels"] == {"0": 2, "1": 3, "2": 1}
    pipeline_steps = card["preprocessing"]["bundle_pipeline"]["postprocessing"]
    assert [s["action"] for s in pipeline_steps if s["op"] == "Lambda"] == ["ignored"]

    # The four sequences of one phantom study, written as DICOM and read back as volumes.
    study = brats_mr_study(MR_BRATS, np.random.default_rng(3))
    identity = SeriesIdentity(patient_name="PHANTOM^BRATS", body_part="BRAIN")
    series: list[list[Path]] = []
    for index, name in enumerate(BRATS_CHANNELS):
        series.append(
            write_phantom_series(
                tmp_path / name,
                study.image[index],
                study.affine_lps,
                modality="MR",
                identity=SeriesIdentity(
                    patient_name=identity.patient_name,
                    patient_id=identity.patient_id,
                    study_uid=identity.study_uid,
                    frame_of_reference_uid=identity.frame_of_reference_uid,
                    series_number=index + 1,
                    body_part="BRAIN",
                ),
                series_description=name,
            )
        )
    volumes = [load_series_volume(paths) for paths in series]
    assert all(np.allclose(v.affine, volumes[0].affine) for v in volumes)
    image = np.stack([v.array for v in volumes])

    registry = ModelRegistry(app.root / "models")
    bundle = registry.get("glioma_brats", "0.5.2")
    network = registry.load_network(bundle)
    pipeline = bundle.card.bundle_pipeline
    channels = bundle.card.channel_map
    assert pipeline is not None and channels is not None
    result = run_pipeline(
        network,
        pipeline,
        image,
        volumes[0].affine,
        device="cpu",
        channel_labels=channels.channel_labels,
    )
    mask = result.mask
    assert mask.shape == (3, *volumes[0].shape) and mask.dtype == np.bool_

    spec = get_task("glioma_brats")
    seg = write_seg(
        series[0],
        mask,
        segment_descriptions(spec),
        AlgorithmInfo(
            name=bundle.card.name,
            version=bundle.card.version,
            weights_sha256=bundle.card.weights_sha256,
        ),
        slice_uids=volumes[0].sop_instance_uids,
    )
    seg_path = tmp_path / "brats_seg.dcm"
    seg.save_as(seg_path)
    assert dciodvfy_errors(seg_path) == []
    read = hd.seg.segread(seg_path)
    assert [int(s.SegmentNumber) for s in read.SegmentSequence] == [1, 2, 3]
    assert [str(s.SegmentLabel) for s in read.SegmentSequence] == [
        "Enhancing tumour",
        "Tumour core",
        "Whole tumour",
    ]
