"""``appliance phantoms generate|list-sites``: series and truth written, and read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from typer.testing import CliRunner

from appliance.cli import app
from dicom_bridge.phantom_series import load_truth
from dicom_bridge.volume import load_series_volume

# Small grids with coarse voxels: the whole anatomy, generated in well under a second.
SMALL = {
    "ct_abdomen": ("16,48,48", "14,7,7"),
    "mr_t1c": ("16,40,40", "12,5.5,5.5"),
    "mr_flair": ("16,40,40", "12,5.5,5.5"),
}


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.parametrize("kind", sorted(SMALL))
def test_generate_one_case_per_kind(tmp_path: Path, kind: str) -> None:
    matrix, spacing = SMALL[kind]
    site = "site_b" if kind == "mr_flair" else "default"  # site_b: reversed slice order
    code, output = _run(
        "phantoms", "generate", "--kind", kind, "--site", site, "--cases", "1",
        "--out", str(tmp_path), "--seed", "7", "--matrix", matrix, "--spacing", spacing,
    )  # fmt: skip
    assert code == 0, output
    case_dir = tmp_path / f"{kind}-{site}-000"
    files = sorted((case_dir / "dicom").glob("*"))
    assert len(files) == 16
    truth = load_truth(case_dir / "truth.npz")
    volume = load_series_volume(files)
    assert volume.shape == truth.labels.shape == (16, *(int(n) for n in matrix.split(",")[1:]))
    np.testing.assert_allclose(volume.affine, truth.affine, atol=1e-6)
    assert truth.labels.max() >= 1
    meta = truth.metadata
    assert meta["kind"] == kind and meta["site"] == site and meta["seed"] == 7
    assert isinstance(meta["lesions"], list) and meta["lesions"]
    assert {"centre_lps", "diameter_mm", "volume_ml"} <= set(meta["lesions"][0])
    header = dcmread(files[0], stop_before_pixels=True)
    assert "PHANTOM" in str(header.PatientName) and "SYNTHETIC" in str(header.PatientName)
    assert header.SeriesInstanceUID == meta["series_uid"]
    assert meta["series_uid"] in output and "x".join(matrix.split(",")) in output
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["cases"][0]["series_uid"] == meta["series_uid"]


def test_same_seed_same_patient(tmp_path: Path) -> None:
    args = ["phantoms", "generate", "--matrix", "16,48,48", "--spacing", "14,7,7"]
    for name in ("a", "b"):
        code, output = _run(*args, "--out", str(tmp_path / name), "--seed", "3")
        assert code == 0, output
    a = load_truth(tmp_path / "a" / "ct_abdomen-default-000" / "truth.npz")
    b = load_truth(tmp_path / "b" / "ct_abdomen-default-000" / "truth.npz")
    assert np.array_equal(a.labels, b.labels)
    code, output = _run(*args, "--out", str(tmp_path / "a"), "--seed", "3")
    assert code == 2 and "already holds files" in output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--kind", "pet"], "--kind"),
        (["--site", "site_z"], "--site"),
        (["--matrix", "1,2"], "--matrix"),
        (["--spacing", "0,1,1"], "--spacing"),
        (["--cases", "0"], "--cases"),
        (["--matrix", "1,8,8"], "matrix"),  # refused by SiteProfile: slices >= 2
    ],
)
def test_generate_rejects_bad_options(tmp_path: Path, extra: list[str], message: str) -> None:
    code, output = _run("phantoms", "generate", "--out", str(tmp_path), *extra)
    assert code == 2
    assert message in output
    assert not list(tmp_path.glob("*/dicom/*"))


def test_list_sites() -> None:
    code, output = _run("phantoms", "list-sites")
    assert code == 0
    for name in ("default", "site_a", "site_b", "site_c", "site_d"):
        assert f"{name}:" in output


def test_generated_sites_are_listed_and_generate_series(tmp_path: Path) -> None:
    code, output = _run("phantoms", "list-sites", "--generated", "3", "--seed", "2")
    assert code == 0
    for name in ("gen2_001", "gen2_002", "gen2_003"):
        assert f"{name}: generated (consortium 2" in output
    assert "gen2_004" not in output
    code, output = _run("phantoms", "list-sites", "--generated", "1000")
    assert code == 2 and "1 to 999" in output
    code, output = _run(
        "phantoms", "generate", "--kind", "mr_t1c", "--site", "gen2_003", "--cases", "1",
        "--matrix", "16,24,24", "--out", str(tmp_path),
    )  # fmt: skip
    assert code == 0, output
    assert len(list(tmp_path.glob("*/dicom/*.dcm"))) == 16
