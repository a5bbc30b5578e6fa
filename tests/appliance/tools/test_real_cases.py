"""Real labelled cases (evaluation only): orientation proofs on the real data, scoring, and
``appliance evaluate-real`` (the format readers: ``test_real_readers.py``).

The orientation tests use properties of the anatomy that a wrong axis order or flip
breaks: the liver sits on soft-tissue HU on the patient's right (LPS x smaller than the
body's centre), the spleen on the left; a tumour label is brighter than the tissue around
it. Each is also checked to fail for a mirrored label, so that it proves something. No
network runs here except the tiny untrained one of the CLI test.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from appliance.cli import app
from appliance.errors import RealDataError
from appliance.tools.real_cases import DATASETS, RealCase
from appliance.tools.real_evaluation import ModelRef, score_case
from appliance.tools.real_readers import (
    align_to_grid,
    nifti_to_boundary,
    nrrd_to_boundary,
    read_lenient_series,
)
from dicom_bridge.errors import VolumeError
from dicom_bridge.volume import load_series_volume
from models.tasks import TaskName
from tests.appliance.tiny_models import make_tiny_bundle
from tests.morphology import dilate
from tests.peers import SHARED_DATA, require_data

# -- helpers ------------------------------------------------------------------------------------


def _world(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """LPS centroid (mm) of a boolean mask."""
    centre = np.argwhere(mask).mean(axis=0)
    return np.asarray(centre @ affine[:3, :3].T + affine[:3, 3])


def _assert_abdomen_orientation(hu: np.ndarray, affine: np.ndarray, liver: np.ndarray) -> None:
    """Axial abdominal CT in LPS: the liver on the patient's right (x below the body's
    centre), the spine (midline bone) posterior (y above it)."""
    body = _world(hu > -500, affine)
    assert _world(liver, affine)[0] < body[0] - 10.0
    bone = np.argwhere(hu > 250) @ affine[:3, :3].T + affine[:3, 3]
    spine = bone[np.abs(bone[:, 0] - body[0]) < 25.0]
    assert len(spine) > 1000 and spine[:, 1].mean() > body[1] + 30.0


def _rim_contrast(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean inside ``mask`` over the mean of a 3-voxel shell around it."""
    shell = dilate(mask, 3) & ~mask
    return float(image[mask].mean() / image[shell].mean())


def _loader(key: str) -> Callable[[], tuple[RealCase, ...]]:
    def load() -> tuple[RealCase, ...]:
        require_data(SHARED_DATA / DATASETS[key].folder)
        return DATASETS[key].load(SHARED_DATA)

    return load


@pytest.fixture(scope="module")
def totalseg() -> RealCase:
    return _loader("ct_totalseg_j2k")()[0]


@pytest.fixture(scope="module")
def dcmqi() -> RealCase:
    return _loader("ct_dcmqi_3slice")()[0]


@pytest.fixture(scope="module")
def ircadb() -> RealCase:
    return _loader("ct_3dircadb17")()[0]


def test_real_case_refuses_labels_it_is_not_evaluated_on() -> None:
    image = np.zeros((2, 3, 4), dtype=np.float32)
    labels = np.zeros((2, 3, 4), dtype=np.uint8)
    labels[0, 0, 0] = 2  # tumour, but only the liver is evaluated
    kwargs = {
        "dataset": "d",
        "case": "c",
        "task": TaskName.LIVER_CT,
        "image": image,
        "affine": np.eye(4),
        "caveat": "",
        "truth": "",
        "channel": "CT",
    }
    with pytest.raises(RealDataError, match="outside the evaluated labels"):
        RealCase(labels=labels, label_names=("Liver",), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(RealDataError, match="must be labels of liver_ct"):
        RealCase(labels=labels * 0, label_names=("Spleen",), **kwargs)  # type: ignore[arg-type]


def test_score_case_reports_dice_hd95_and_empty_predictions() -> None:
    image = np.zeros((8, 8, 8), dtype=np.float32)
    labels = np.zeros((8, 8, 8), dtype=np.uint8)
    labels[2:6, 2:6, 2:6] = 1
    labels[3:5, 3:5, 3:5] = 2
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    case = RealCase(
        "d", "c", TaskName.LIVER_CT, image, affine, labels, ("Liver", "Liver tumour"), "", "", "CT"
    )
    ref = ModelRef("liver_ct", "m", "1.0.0", "0" * 64, None)
    perfect = score_case(case, labels.copy(), ref, 0.0)
    assert [(lr.dice, lr.hd95_mm) for lr in perfect.labels] == [(1.0, 0.0), (1.0, 0.0)]
    liver_only = np.where(labels > 0, 1, 0).astype(np.uint8)
    scored = score_case(case, liver_only, ref, 0.0)
    tumour = scored.labels[1]
    assert tumour.dice == 0.0 and tumour.hd95_mm is None and tumour.predicted_voxels == 0
    assert scored.labels[0].truth_ml == pytest.approx(56 * 2 / 1000)


# -- orientation on the real data ----------------------------------------------------------------


def test_totalseg_liver_is_soft_tissue_on_the_patients_right(totalseg: RealCase) -> None:
    volume = load_series_volume(
        sorted((SHARED_DATA / "ct_abdomen_totalseg_j2k" / "dicom_uids_repaired").iterdir())
    )
    assert np.array_equal(totalseg.image, volume.array)
    assert np.allclose(totalseg.affine, volume.affine)
    assert totalseg.label_names == ("Liver",)
    liver = totalseg.labels == 1
    hu = totalseg.image
    body = hu > -500
    assert 40.0 < hu[liver].mean() < 200.0
    soft = (hu[liver] > 0) & (hu[liver] < 200)
    assert soft.mean() > 0.95
    # a label left in NIfTI row order (j reversed) or mirrored L-R misses the liver
    for axis in (1, 2):
        mirrored = np.flip(liver, axis=axis)
        assert ((hu[mirrored] > 0) & (hu[mirrored] < 200)).mean() < 0.85
    assert hu[liver].mean() - hu[body & ~liver].mean() > 30.0
    _assert_abdomen_orientation(hu, totalseg.affine, liver)
    body_x = _world(body, totalseg.affine)[0]
    assert _world(liver, totalseg.affine)[0] < body_x - 30.0  # LPS: right is -x
    # TotalSegmentator's spleen (label 1) lies on the left, on the same grid
    raw, raw_affine = nifti_to_boundary(
        SHARED_DATA / "ct_abdomen_totalseg_j2k" / "labels_totalsegmentator_multilabel.nii.gz"
    )
    spleen = align_to_grid(raw, raw_affine, hu.shape, totalseg.affine) == 1
    # the annotation importer's own NIfTI placement agrees voxel for voxel
    from appliance.cases.from_nifti import nifti_onto_grid

    nifti_path = (
        SHARED_DATA / "ct_abdomen_totalseg_j2k" / "labels_totalsegmentator_multilabel.nii.gz"
    )
    assert np.array_equal(nifti_onto_grid(nifti_path, totalseg.affine, hu.shape) == 5, liver)
    assert _world(spleen, totalseg.affine)[0] > body_x + 30.0
    assert 40.0 < hu[spleen].mean() < 200.0


def test_dcmqi_seg_matches_its_nrrd_and_lies_on_the_liver(dcmqi: RealCase) -> None:
    nrrd_path = SHARED_DATA / "ct_abdomen_dcmqi_3slice" / "liver_seg.nrrd"
    raw, raw_affine = nrrd_to_boundary(nrrd_path)
    from_nrrd = align_to_grid(raw, raw_affine, dcmqi.image.shape, dcmqi.affine) > 0
    liver = dcmqi.labels == 1
    assert liver.sum() > 10_000
    assert np.array_equal(from_nrrd, liver)  # two independent encodings, one grid
    hu = dcmqi.image
    assert 20.0 < hu[liver].mean() < 200.0  # non-contrast liver
    _assert_abdomen_orientation(hu, dcmqi.affine, liver)


def test_ircadb_needs_the_lenient_reader_and_its_masks_fit_the_anatomy(ircadb: RealCase) -> None:
    folder = SHARED_DATA / "noncommercial" / "ct_liver_tumor_3dircadb17"
    with pytest.raises(VolumeError, match="Frame of Reference"):
        load_series_volume(sorted((folder / "PATIENT_DICOM").iterdir()))
    assert ircadb.image.shape == (10, 512, 512)
    assert np.allclose(ircadb.spacing_mm, (1.6, 0.743, 0.743), atol=1e-3)
    assert ircadb.label_names == ("Liver", "Liver tumour")
    hu = ircadb.image
    liver, tumour = ircadb.labels == 1, ircadb.labels == 2
    assert 40.0 < hu[liver].mean() < 200.0
    assert tumour.sum() > 1000
    # 3D-IRCADb's liver mask includes the tumours, which are hypodense to the parenchyma
    raw_liver = read_lenient_series(sorted((folder / "MASKS_DICOM" / "liver").iterdir()))
    assert np.array_equal(raw_liver.array > 0, liver | tumour)
    assert hu[tumour].mean() < hu[liver].mean() - 10.0
    _assert_abdomen_orientation(hu, ircadb.affine, liver | tumour)
    # superior is +z: towards the dome the liver shrinks and the lung bases grow
    liver_area = (liver | tumour).sum(axis=(1, 2))
    lung_area = (hu[:, 150:400, 100:420] < -600).sum(axis=(1, 2))
    assert liver_area[-1] < 0.8 * liver_area[0] and lung_area[-1] > 1.5 * lung_area[0]
    for axis in (1, 2):
        mirrored = np.flip(liver, axis=axis)
        assert ((hu[mirrored] > 0) & (hu[mirrored] < 200)).mean() < 0.85


def test_tcga_gbm_labels_share_the_image_grid_and_mark_the_tumour() -> None:
    cases = _loader("mr_tcga_gbm")()
    assert [c.case for c in cases] == ["brain1", "brain2"]
    for case in cases:
        assert np.allclose(case.spacing_mm, (6.5, 0.78125, 0.78125))
        label = case.labels == 1
        head = case.image > 0.5 * case.image.mean()
        assert head[label].mean() > 0.98  # the label lies inside the head
    # brain2's tiny label is not brighter than its surroundings; brain1's is:
    brain1 = cases[0]
    label = brain1.labels == 1
    # enhancing tumour on T1-Gd: brighter than the tissue around it, unlike mirrored labels
    contrast = _rim_contrast(brain1.image, label)
    assert contrast > 1.2
    for axis in range(3):
        assert _rim_contrast(brain1.image, np.flip(label, axis=axis)) < contrast - 0.2


def test_tcia_progression_masks_mark_a_bright_lesion() -> None:
    cases = _loader("mr_tcia_progression")()
    assert [c.case for c in cases] == ["pre", "post"]
    for case in cases:
        assert case.spacing_mm == (1.0, 1.0, 1.0)  # geometry lost: see the caveat
        assert "lost" in case.caveat
        label = case.labels == 1
        contrast = _rim_contrast(case.image, label)
        assert contrast > 1.2
        for axis in range(3):
            assert _rim_contrast(case.image, np.flip(label, axis=axis)) < contrast - 0.1


def test_brats_whole_tumour_is_hyperintense_on_flair_inside_the_brain() -> None:
    cases = _loader("mr_brats2013")()
    by_channel = {c.channel: c for c in cases}
    assert set(by_channel) == {"T1C", "FLAIR"}
    assert np.array_equal(by_channel["T1C"].labels, by_channel["FLAIR"].labels)
    folder = SHARED_DATA / DATASETS["mr_brats2013"].folder
    brain, brain_affine = nifti_to_boundary(folder / "brainmask.nii.gz")
    flair = by_channel["FLAIR"]
    assert np.allclose(brain_affine, flair.affine)
    label = flair.labels == 1
    assert (brain > 0.5)[label].all()
    # z-scored FLAIR: the shell mean is near 0, so compare differences, not ratios
    shell = dilate(label, 3) & ~label
    rise = flair.image[label].mean() - flair.image[shell].mean()
    assert rise > 1.5
    for axis in range(3):
        mirrored = np.flip(label, axis=axis)
        mirrored_shell = dilate(mirrored, 3) & ~mirrored
        assert flair.image[mirrored].mean() - flair.image[mirrored_shell].mean() < rise - 0.5


# -- the command ---------------------------------------------------------------------------------


@pytest.fixture
def tiny_registry(tmp_path: Path) -> Path:
    root = tmp_path / "registry"
    make_tiny_bundle(root, task="liver_ct")
    make_tiny_bundle(root, task="glioma_mr")
    return root


def test_evaluate_real_runs_the_clinical_path_and_writes_json_and_markdown(
    tmp_path: Path, tiny_registry: Path
) -> None:
    require_data(SHARED_DATA / DATASETS["ct_dcmqi_3slice"].folder)
    require_data(SHARED_DATA / DATASETS["mr_tcga_gbm"].folder)
    out_json, out_md = tmp_path / "r.json", tmp_path / "docs" / "r.md"
    args = [
        "evaluate-real",
        "--data",
        str(SHARED_DATA),
        "--registry",
        str(tiny_registry),
        "--only",
        "ct_dcmqi_3slice,mr_tcga_gbm",
        "--device",
        "cpu",
        "--no-hd95",  # an untrained network's huge masks make HD95 slow (tested above)
        "--json",
        str(out_json),
        "--markdown",
        str(out_md),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out_json.read_text())
    assert report["threshold"] is None
    assert [(c["dataset"], c["case"]) for c in report["cases"]] == [
        ("ct_dcmqi_3slice", "abdomen_3slices"),
        ("mr_tcga_gbm", "brain1"),
        ("mr_tcga_gbm", "brain2"),
    ]
    liver_case = report["cases"][0]
    assert [lr["name"] for lr in liver_case["labels"]] == ["Liver"]  # no tumour truth
    assert liver_case["model"]["name"] == "Tiny test UNet"
    assert liver_case["model"]["federated_round"] == 2
    assert liver_case["labels"][0]["truth_voxels"] > 10_000
    for case in report["cases"]:
        for lr in case["labels"]:
            assert 0.0 <= lr["dice"] <= 1.0
            assert lr["hd95_mm"] is None
    sha = liver_case["model"]["weights_sha256"]
    assert sha[:12] in result.output and "Dice" in result.output
    page = out_md.read_text()
    assert "appliance evaluate-real --data" in page and "--only ct_dcmqi_3slice,mr_tcga_gbm" in page
    assert "--no-hd95" in page
    assert sha in page and "no threshold" in page
    assert "| ct_dcmqi_3slice | abdomen_3slices | liver_ct |" in page


def _base(data: Path, registry: Path) -> list[str]:
    return ["evaluate-real", "--data", str(data), "--registry", str(registry)]


def test_evaluate_real_errors_name_the_problem(tmp_path: Path, tiny_registry: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["evaluate-real", "--data", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "does not exist; pass --data" in missing.output
    unknown = runner.invoke(
        app,
        [*_base(tmp_path, tiny_registry), "--only", "ct_spleen"],
    )
    assert unknown.exit_code == 2
    assert "unknown dataset ct_spleen" in unknown.output and "mr_brats2013" in unknown.output
    absent = runner.invoke(
        app,
        [*_base(tmp_path, tiny_registry), "--only", "ct_dcmqi_3slice"],
    )
    assert absent.exit_code == 2 and "does not exist under the data root" in absent.output
    empty = tmp_path / "empty_registry"
    empty.mkdir()
    require_data(SHARED_DATA / DATASETS["ct_dcmqi_3slice"].folder)
    no_model = runner.invoke(
        app,
        [*_base(SHARED_DATA, empty), "--only", "ct_dcmqi_3slice"],
    )
    assert no_model.exit_code == 2 and "no liver_ct model" in no_model.output


def test_the_default_registry_is_the_shipped_bundles() -> None:
    from appliance.cli.evaluate_real import _default_registry
    from appliance.tools.real_cases import default_data_root

    shipped = _default_registry()
    assert {p.name for p in shipped.iterdir() if p.is_dir()} >= {"liver_ct", "glioma_mr"}
    assert default_data_root() == SHARED_DATA
