"""``appliance segment``: a DICOM series folder and a NIfTI of the same image give the
mask a job gives (a real job, through the worker, with the shipped liver model), and bad
input fails with a clear error and writes nothing."""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import generate_uid
from typer.testing import CliRunner

from appliance.cli import app
from appliance.config import AppConfig, load_config
from appliance.flow.ingest import to_new_instance
from appliance.flow.nifti_io import boundary_to_ras
from appliance.flow.worker import Worker
from appliance.site_models.registry import register_shipped
from appliance.states import JobState
from appliance.store import Store
from dicom_bridge.instance import describe_spooled_file
from dicom_bridge.phantom_series import write_phantom_series
from dicom_bridge.seg_reader import read_seg_labelmap
from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from dicom_bridge.volume import load_series_volume
from models.phantoms import BRATS_CHANNELS, MR_BRATS, PhantomKind, generate_phantom
from models.registry import ModelRegistry
from tests.liver_series import liver_phantom

CONFIG = """\
[storage]
root = "{root}"
fsync = false

[models]
device = "cpu"
{extra}
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = 1
"""

#: the shipped liver_ct versions, oldest first; a first start activates the last
SHIPPED_LIVER = ModelRegistry(Path(__file__).resolve().parents[3] / "models" / "bundles").versions(
    "liver_ct"
)


def write_config(root: Path, extra: str = "") -> Path:
    path = root / "appliance.toml"
    path.write_text(CONFIG.format(root=root / "data", extra=extra), encoding="utf-8")
    return path


def segment(config_file: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["segment", *args, "--config", str(config_file)])
    return result.exit_code, result.stdout, result.stderr


def load_nifti(path: Path) -> Any:
    return nib.load(str(path))


def read_mask(path: Path, ndim: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI output back in the boundary format (its own inverse conversion)."""
    image = load_nifti(path)
    data = np.asarray(image.dataobj)
    assert data.ndim == ndim and data.dtype == np.uint8
    # boundary_to_ras reverses the axes and is its own inverse for the array
    array = np.ascontiguousarray(data.transpose(tuple(reversed(range(data.ndim)))))
    affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(image.affine)[:, [2, 1, 0, 3]]
    return array, affine_lps


@dataclass(frozen=True)
class Site:
    root: Path
    config_file: Path
    config: AppConfig
    series_dir: Path
    files: list[Path]
    job_mask: np.ndarray  # the mask of the job's SEG


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """A site with the shipped models registered (liver_ct's newest active), a phantom CT
    series written as DICOM, and that series run as a real job through the worker."""
    root = tmp_path_factory.mktemp("site")
    config_file = write_config(root)
    config = load_config(config_file)
    phantom = liver_phantom(case=4242)
    series_dir = root / "ct"
    files = write_phantom_series(series_dir, phantom.image, phantom.affine_lps, modality="CT")
    store = Store(config.storage.database)
    try:
        register_shipped(store, config)
        for path in files:
            store.record_instance(to_new_instance(describe_spooled_file(path)))
        store.complete_quiet_series(-1.0)
        assert Worker(store, threading.Event(), config).run_once()
        (job,) = store.list_jobs()
        assert job.state is JobState.DONE, job
    finally:
        store.close()
    job_mask = read_seg_labelmap(Path(job.outputs["seg_path"]), files).labelmap
    np.testing.assert_array_equal(job_mask, np.load(job.outputs["mask_path"])["mask"])
    assert np.count_nonzero(job_mask == 1) > 1000  # the model found the liver
    return Site(root, config_file, config, series_dir, files, job_mask)


def test_dicom_folder_gives_the_jobs_mask_on_the_series_grid(site: Site, tmp_path: Path) -> None:
    out = tmp_path / "mask.nii.gz"
    code, stdout, stderr = segment(site.config_file, str(site.series_dir), "--out", str(out))
    assert code == 0, stderr
    assert "liver_ct: model" in stdout and f" {SHIPPED_LIVER[-1]} " in stdout  # the active one
    mask, affine = read_mask(out)
    volume = load_series_volume(site.files)
    np.testing.assert_array_equal(mask, site.job_mask)
    np.testing.assert_allclose(affine, volume.affine, atol=1e-4)  # float32 in the file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]  # no temp left


def test_nifti_of_the_same_image_gives_the_jobs_mask(site: Site, tmp_path: Path) -> None:
    volume = load_series_volume(site.files)
    data, affine_ras = boundary_to_ras(volume.array, volume.affine)
    source = tmp_path / "ct.nii"
    nib.save(nib.Nifti1Image(data, affine_ras), str(source))
    out = tmp_path / "mask.nii"
    code, _, stderr = segment(
        site.config_file, str(source), "--out", str(out), "--task", "liver_ct"
    )
    assert code == 0, stderr
    mask, _ = read_mask(out)
    np.testing.assert_array_equal(mask, site.job_mask)
    np.testing.assert_array_equal(load_nifti(out).affine, load_nifti(source).affine)


def test_version_picks_a_registered_model_and_an_unknown_one_is_named(
    site: Site, tmp_path: Path
) -> None:
    out = tmp_path / "mask.nii.gz"
    args = (str(site.series_dir), "--out", str(out), "--task", "liver_ct")
    older = SHIPPED_LIVER[0]  # registered, not the active one
    code, stdout, stderr = segment(site.config_file, *args, "--version", older)
    assert code == 0, stderr
    assert f" {older} " in stdout
    assert read_mask(out)[0].shape == site.job_mask.shape
    out.unlink()
    code, _, stderr = segment(site.config_file, *args, "--version", "9.9.9")
    assert code == 1 and "--version" in stderr and ", ".join(SHIPPED_LIVER) in stderr
    assert not out.exists()


def test_input_too_large_for_the_working_grid_fails_and_writes_nothing(
    site: Site, tmp_path: Path
) -> None:
    small = tmp_path / "small"
    small.mkdir()
    database = site.config.storage.database
    config_file = write_config(small, "\n[limits]\nmax_working_voxels = 262144\n")
    config_file.write_text(
        config_file.read_text().replace(f'root = "{small / "data"}"', f'root = "{database.parent}"')
    )
    out = small / "mask.nii.gz"
    code, _, stderr = segment(config_file, str(site.series_dir), "--out", str(out))
    assert code == 1
    assert "input_too_large" in stderr and "limits.max_working_voxels" in stderr
    assert sorted(p.name for p in small.iterdir()) == ["appliance.toml"]


# --- bad input: clear errors, exit code 1, nothing written -----------------------------


@pytest.fixture
def empty_site(tmp_path: Path) -> Path:
    """A config whose site database exists (no models: these inputs fail before)."""
    config_file = write_config(tmp_path, "\n[limits]\nmax_series_voxels = 100000\n")
    Store(load_config(config_file).storage.database).close()
    return config_file


def fails(config_file: Path, out: Path, *args: str, check: bool = True) -> str:
    """Run ``appliance segment``: exit 1, and (``check``) ``out`` and no temp file written."""
    code, _, stderr = segment(config_file, *args, "--out", str(out))
    assert code == 1, stderr
    assert not check or not out.exists()
    if out.parent.is_dir():
        assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    return stderr


def test_missing_input_and_wrong_kinds_of_path(empty_site: Path, tmp_path: Path) -> None:
    out = tmp_path / "mask.nii.gz"
    assert "does not exist" in fails(empty_site, out, str(tmp_path / "nope"))
    text = tmp_path / "notes.txt"
    text.write_text("x")
    assert "DICOM series folder or a .nii" in fails(empty_site, out, str(text))
    stderr = fails(empty_site, tmp_path / "mask.png", str(tmp_path))
    assert ".nii or .nii.gz" in stderr
    stderr = fails(empty_site, tmp_path / "nofolder" / "mask.nii", str(tmp_path))
    assert "does not exist" in stderr
    assert "not a task" in fails(empty_site, out, str(text), "--task", "spleen")
    nifti = tmp_path / "in.nii"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), str(nifti))
    assert "not be INPUT" in fails(empty_site, nifti, str(nifti), "--task", "liver_ct", check=False)
    assert load_nifti(nifti).shape == (8, 8, 8)  # untouched


def test_nifti_errors(empty_site: Path, tmp_path: Path) -> None:
    out = tmp_path / "mask.nii.gz"
    image = tmp_path / "in.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(image))
    stderr = fails(empty_site, out, str(image))  # no --task
    assert "no DICOM attributes" in stderr and "liver_ct" in stderr and "glioma_brats" in stderr
    flat = tmp_path / "flat.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.float32), np.eye(4)), str(flat))
    assert "needs a 3-D image" in fails(empty_site, out, str(flat), "--task", "liver_ct")
    two = tmp_path / "two.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.float32), np.eye(4)), str(two))
    assert "needs a 3-D image" in fails(empty_site, out, str(two), "--task", "liver_ct")
    stderr = fails(empty_site, out, str(image), "--task", "glioma_brats")
    assert "a 4-D image of 4 volumes" in stderr
    big = tmp_path / "big.nii"
    nib.save(nib.Nifti1Image(np.zeros((50, 50, 50), np.int16), np.eye(4)), str(big))
    assert "limits.max_series_voxels" in fails(empty_site, out, str(big), "--task", "liver_ct")
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a nifti file at all")
    assert "not a readable NIfTI" in fails(empty_site, out, str(broken), "--task", "liver_ct")
    singular = tmp_path / "singular.nii"
    flat_image = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), None)
    flat_image.set_sform(np.diag([1.0, 0.0, 1.0, 1.0]), code=1)  # no qform: it has none
    nib.save(flat_image, str(singular))
    assert "singular" in fails(empty_site, out, str(singular), "--task", "liver_ct")
    # valid input, but the site has no model for the task
    assert "no active model for liver_ct" in fails(
        empty_site, out, str(image), "--task", "liver_ct"
    )


def test_dicom_folder_errors(empty_site: Path, tmp_path: Path) -> None:
    out = tmp_path / "mask.nii.gz"
    geometry = SeriesGeometry(slices=12, rows=32, columns=32)
    mixed = tmp_path / "mixed"
    write_series(mixed / "a", geometry, identity=SeriesIdentity())
    write_series(mixed / "b", geometry, identity=SeriesIdentity())
    stderr = fails(empty_site, out, str(mixed))
    assert "holds 2 series" in stderr and "one series" in stderr
    assert "holds 2 series" in fails(empty_site, out, str(mixed), "--task", "liver_ct")

    junk = tmp_path / "junk"
    write_series(junk, geometry, identity=SeriesIdentity())
    (junk / "readme.txt").write_text("not DICOM")
    assert "readme.txt" in fails(empty_site, out, str(junk))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no files" in fails(empty_site, out, str(empty))

    unrouted = tmp_path / "mr"
    write_series(unrouted, geometry, modality="MR", identity=SeriesIdentity())
    stderr = fails(empty_site, out, str(unrouted))
    assert "no_matching_rule" in stderr and "give --task (one of liver_ct" in stderr
    stderr = fails(empty_site, out, str(unrouted), "--task", "liver_ct")
    assert "wrong_modality" in stderr and "liver_ct takes a CT series; this series is MR" in stderr

    big = tmp_path / "big"
    write_series(big, SeriesGeometry(slices=100, rows=32, columns=32), identity=SeriesIdentity())
    assert "too_large" in fails(empty_site, out, str(big))


def test_no_database_is_a_clear_error(tmp_path: Path) -> None:
    config_file = write_config(tmp_path)
    out = tmp_path / "mask.nii.gz"
    assert "no appliance database" in fails(config_file, out, str(tmp_path))
    assert not load_config(config_file).storage.database.exists()


# --- a task of several series: glioma_brats, a study folder of four role series ---------

#: A reduced BraTS-like phantom: four sequences on one grid.
SMALL_BRATS = replace(
    MR_BRATS, name="segment_brats", spacing_mm=(3.0, 3.0, 3.0), matrix=(48, 64, 56)
)
BRATS_RULES = "".join(
    f'\n[[routing.rules]]\nname = "brats-{name.lower()}"\ntask = "glioma_brats"\n'
    f'modality = "MR"\nseries_description = "^{name}$"\nrole = "{name.lower()}"\n'
    for name in BRATS_CHANNELS
)


def test_brats_study_folder_and_4d_nifti_give_the_jobs_overlapping_masks(
    tmp_path: Path,
) -> None:
    config_file = write_config(tmp_path, BRATS_RULES)
    config = load_config(config_file)
    phantom = generate_phantom(PhantomKind.MR_BRATS, SMALL_BRATS, case=7)
    study_dir, identity = tmp_path / "study", SeriesIdentity(body_part="BRAIN")
    files: dict[str, list[Path]] = {}
    for number, name in enumerate(BRATS_CHANNELS, start=1):
        files[name] = write_phantom_series(
            study_dir / name,
            phantom.image[number - 1],
            phantom.affine_lps,
            modality="MR",
            identity=replace(identity, series_uid=generate_uid(), series_number=number),
            series_description=name,
        )
    store = Store(config.storage.database)
    try:
        register_shipped(store, config)
        for path in (p for name in reversed(BRATS_CHANNELS) for p in files[name]):
            store.record_instance(to_new_instance(describe_spooled_file(path)))
        store.complete_quiet_series(-1.0)
        worker = Worker(store, threading.Event(), config)
        claims = list(iter(worker.run_once, False))  # run until the queue is empty
        assert claims, "the worker found nothing to process"
        (job,) = store.list_jobs()
        assert job.state is JobState.DONE and job.task == "glioma_brats", job
    finally:
        store.close()
    job_mask = np.load(job.outputs["mask_path"])["mask"]  # (label, slice, row, column)
    assert job_mask.shape == (3, *phantom.image.shape[1:]) and job_mask[1].any()

    out = tmp_path / "regions.nii.gz"
    code, stdout, stderr = segment(config_file, str(study_dir), "--out", str(out))
    assert code == 0, stderr
    assert stdout.startswith("glioma_brats: model")
    mask, _ = read_mask(out, ndim=4)
    np.testing.assert_array_equal(mask, job_mask.astype(np.uint8))

    volumes = [load_series_volume(files[name]) for name in BRATS_CHANNELS]
    image = np.stack([v.array for v in volumes])
    data, affine_ras = boundary_to_ras(image, volumes[0].affine)
    source = tmp_path / "study.nii.gz"
    nib.save(nib.Nifti1Image(data, affine_ras), str(source))
    out4 = tmp_path / "regions4.nii"
    code, _, stderr = segment(
        config_file, str(source), "--out", str(out4), "--task", "glioma_brats"
    )
    assert code == 0, stderr
    np.testing.assert_array_equal(read_mask(out4, ndim=4)[0], job_mask.astype(np.uint8))

    # a study folder without its FLAIR series: the job's refusal, nothing written
    shutil.rmtree(study_dir / "FLAIR")
    stderr = fails(config_file, tmp_path / "partial.nii.gz", str(study_dir))
    assert "waiting_for_roles" in stderr and "flair" in stderr
