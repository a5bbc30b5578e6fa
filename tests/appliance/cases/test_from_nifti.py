"""A NIfTI label file on a stored series -> a case; the --label-map option."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from appliance.cases.from_nifti import case_from_nifti, parse_label_map
from appliance.cases.loading import load_cases
from appliance.cli import app
from appliance.states import CaseOrigin
from appliance.store import Store
from models.tasks import LIVER_CT_SPEC
from tests.appliance.cases.support import TOTALSEG, cases_config
from tests.peers import require_data


def test_label_map_option_parsing() -> None:
    assert parse_label_map("5=liver", LIVER_CT_SPEC) == {5: 1}
    assert parse_label_map("5=Liver, 9=liver_tumour", LIVER_CT_SPEC) == {5: 1, 9: 2}
    assert parse_label_map("3=2", LIVER_CT_SPEC) == {3: 2}
    for bad in ("5", "x=liver", "5=spleen", "5=liver,5=liver tumour", ""):
        with pytest.raises(ValueError):
            parse_label_map(bad, LIVER_CT_SPEC)


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
    config = cases_config(tmp_path)
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
