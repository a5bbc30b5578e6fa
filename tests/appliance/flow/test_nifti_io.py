"""NIfTI <-> boundary format (``appliance segment``): exact both ways, oblique grids
included, and through files; the header is checked before any voxel is read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from appliance.errors import SegmentError
from appliance.flow.nifti_io import boundary_to_ras, ras_to_boundary, read_image, write_mask
from dicom_bridge.limits import SizeLimits


def oblique_lps_affine() -> np.ndarray:
    """index (slice, row, column) -> LPS: rotated about two axes, anisotropic, shifted."""
    a, b = np.deg2rad(17.0), np.deg2rad(-31.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([2.5, 0.7, 0.9])
    affine[:3, 3] = (-101.25, 37.5, 412.0)
    return affine


def world(affine: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    return (affine @ np.array([*index, 1.0]))[:3]


def test_a_voxel_sits_at_the_same_place_in_both_formats() -> None:
    affine_lps = oblique_lps_affine()
    array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    data, affine_ras = boundary_to_ras(array, affine_lps)
    assert data.shape == (6, 5, 4)
    for s, r, c in ((0, 0, 0), (3, 4, 5), (1, 2, 3), (2, 0, 5)):
        assert data[c, r, s] == array[s, r, c]
        lps = world(affine_lps, (s, r, c))
        ras = world(affine_ras, (c, r, s))
        np.testing.assert_allclose(ras, lps * (-1.0, -1.0, 1.0), atol=1e-12)


@pytest.mark.parametrize("channels", [None, 3])
def test_conversion_is_exact_both_ways(channels: int | None) -> None:
    affine_lps = oblique_lps_affine()
    shape = (4, 5, 6) if channels is None else (channels, 4, 5, 6)
    array = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    data, affine_ras = boundary_to_ras(array, affine_lps)
    back, affine_back = ras_to_boundary(data, affine_ras)
    np.testing.assert_array_equal(back, array)
    np.testing.assert_array_equal(affine_back, affine_lps)  # exact: permute and negate only
    if channels is not None:
        assert data.shape == (6, 5, 4, channels)
        np.testing.assert_array_equal(data[..., 1], boundary_to_ras(array[1], affine_lps)[0])


def load(path: Path) -> Any:
    return nib.load(str(path))


def test_files_round_trip_on_an_oblique_grid(tmp_path: Path) -> None:
    affine_lps = oblique_lps_affine()
    image = np.random.default_rng(1).normal(size=(4, 5, 6)).astype(np.float32)
    data, affine_ras = boundary_to_ras(image, affine_lps)
    source = tmp_path / "image.nii.gz"
    nib.save(nib.Nifti1Image(data, affine_ras), str(source))
    read, affine = read_image(source, 1, SizeLimits())
    np.testing.assert_array_equal(read, image)
    stored = np.asarray(load(source).affine)  # float32 in the file
    np.testing.assert_allclose(affine, affine_lps, atol=1e-4)
    np.testing.assert_array_equal(affine, ras_to_boundary(data, stored)[1])

    labels = (image > 0).astype(np.uint8) + (image > 1).astype(np.uint8)
    out = tmp_path / "labels.nii"
    write_mask(out, labels, affine)
    written = load(out)
    assert written.header.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.affine), stored)  # the input's grid
    np.testing.assert_array_equal(ras_to_boundary(np.asarray(written.dataobj), stored)[0], labels)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_overlapping_labels_are_a_4d_file_one_volume_per_label(tmp_path: Path) -> None:
    masks = np.zeros((3, 4, 5, 6), dtype=bool)
    masks[0, 1:3] = True
    masks[1, 1:2] = True  # inside label 1
    out = tmp_path / "regions.nii.gz"
    write_mask(out, masks, np.eye(4))
    data = np.asarray(load(out).dataobj)
    assert data.shape == (6, 5, 4, 3) and data.dtype == np.uint8
    np.testing.assert_array_equal(ras_to_boundary(data, np.eye(4))[0], masks.astype(np.uint8))


def test_multichannel_input_needs_the_tasks_channels(tmp_path: Path) -> None:
    affine_lps = oblique_lps_affine()
    image = np.random.default_rng(2).normal(size=(4, 3, 5, 6)).astype(np.float32)
    data, affine_ras = boundary_to_ras(image, affine_lps)
    source = tmp_path / "study.nii"
    nib.save(nib.Nifti1Image(data, affine_ras), str(source))
    read, _ = read_image(source, 4, SizeLimits())
    np.testing.assert_array_equal(read, image)
    with pytest.raises(SegmentError, match="a 3-D image"):
        read_image(source, 1, SizeLimits())
    with pytest.raises(SegmentError, match="a 4-D image of 2 volumes"):
        read_image(source, 2, SizeLimits())
    limits = SizeLimits(max_series_voxels=3 * 5 * 6 - 1)  # per volume, not per channel
    with pytest.raises(SegmentError, match=r"limits\.max_series_voxels"):
        read_image(source, 4, limits)


def test_non_finite_voxels_are_refused(tmp_path: Path) -> None:
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    source = tmp_path / "nan.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(source))
    with pytest.raises(SegmentError, match="NaN"):
        read_image(source, 1, SizeLimits())
