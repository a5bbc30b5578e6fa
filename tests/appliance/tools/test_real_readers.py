"""The evaluation-only readers of the real cases: NIfTI and NRRD to the boundary format,
grid alignment without resampling (on synthetic grids), and the lenient DICOM reader."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest

from appliance.errors import RealDataError
from appliance.tools.real_readers import (
    align_to_grid,
    nifti_to_boundary,
    nrrd_to_boundary,
    read_lenient_series,
)
from tests.peers import SHARED_DATA, require_data


def _oblique_affine() -> np.ndarray:
    affine = np.eye(4)
    affine[:3, 0] = (0.0, 0.0, 2.5)
    affine[:3, 1] = (0.0, 0.8, 0.0)
    affine[:3, 2] = (0.7, 0.0, 0.0)
    affine[:3, 3] = (-10.0, 20.0, 30.0)
    return affine


def test_align_to_grid_undoes_permutations_and_flips() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 5, size=(4, 5, 6)).astype(np.uint8)
    affine = _oblique_affine()
    # the same voxels stored as (column, reversed row, slice), like a NIfTI beside DICOM
    source = np.flip(target.transpose(2, 1, 0), axis=1)
    src_affine = np.eye(4)
    src_affine[:3, 0] = affine[:3, 2]
    src_affine[:3, 1] = -affine[:3, 1]
    src_affine[:3, 2] = affine[:3, 0]
    src_affine[:3, 3] = affine[:3, 3] + affine[:3, 1] * (target.shape[1] - 1)
    assert np.array_equal(align_to_grid(source, src_affine, target.shape, affine), target)


def _shifted(affine: np.ndarray) -> np.ndarray:
    out = affine.copy()
    out[:3, 3] += 0.7 * affine[:3, 0]  # 0.7 of a slice along the slice axis
    return out


def _stretched(affine: np.ndarray) -> np.ndarray:
    return affine @ np.diag([1.0, 1.1, 1.0, 1.0])  # 10 % larger rows


@pytest.mark.parametrize(
    ("change", "shape", "message"),
    [
        (lambda a: a, (4, 5, 7), "voxels along axis"),
        (_shifted, (4, 5, 6), "shifted by"),
        (_stretched, (4, 5, 6), "beyond a permutation/flip"),
    ],
)
def test_align_to_grid_refuses_grids_that_do_not_coincide(
    change: Callable[[np.ndarray], np.ndarray], shape: tuple[int, int, int], message: str
) -> None:
    affine = _oblique_affine()
    array = np.zeros((4, 5, 6), dtype=np.uint8)
    with pytest.raises(RealDataError, match=message):
        align_to_grid(array, change(affine), shape, affine)


def test_nifti_is_read_as_slice_row_column_with_an_lps_affine(tmp_path: Path) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)  # [i, j, k]
    ras = np.array(
        [[-0.9, 0, 0, 100.0], [0, 0.8, 0, -50.0], [0, 0, 2.0, -700.0], [0, 0, 0, 1]], dtype=float
    )
    nib.save(nib.Nifti1Image(data, ras), tmp_path / "x.nii.gz")
    array, affine = nifti_to_boundary(tmp_path / "x.nii.gz")
    assert array.shape == (4, 3, 2) and array[3, 2, 1] == data[1, 2, 3]
    # voxel [i=1, j=2, k=3] is at RAS ras @ [1, 2, 3, 1]; LPS negates x and y
    r = ras @ np.array([1.0, 2.0, 3.0, 1.0])
    assert np.allclose(affine @ np.array([3.0, 2.0, 1.0, 1.0]), [-r[0], -r[1], r[2], 1.0])


@pytest.mark.parametrize("space", ["left-posterior-superior", "right-anterior-superior"])
def test_nrrd_is_read_as_slice_row_column_with_an_lps_affine(tmp_path: Path, space: str) -> None:
    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)  # file axes i, j, k
    directions = np.array([[0.5, 0, 0], [0, -0.6, 0], [0, 0, 3.0]])
    origin = np.array([1.0, 2.0, 3.0])
    header = {"space": space, "space directions": directions, "space origin": origin}
    nrrd.write(str(tmp_path / "x.nrrd"), data, header, index_order="F")
    array, affine = nrrd_to_boundary(tmp_path / "x.nrrd")
    assert array.shape == (4, 3, 2) and array[3, 2, 1] == data[1, 2, 3]
    world = origin + directions.T @ np.array([1.0, 2.0, 3.0])
    if space.startswith("right"):
        world = world * np.array([-1.0, -1.0, 1.0])
    assert np.allclose((affine @ np.array([3.0, 2.0, 1.0, 1.0]))[:3], world)


def test_nrrd_without_a_space_is_refused(tmp_path: Path) -> None:
    nrrd.write(str(tmp_path / "x.nrrd"), np.zeros((2, 2, 2), dtype=np.uint8))
    with pytest.raises(RealDataError, match="space"):
        nrrd_to_boundary(tmp_path / "x.nrrd")


def test_lenient_reader_sorts_by_position_and_refuses_gaps() -> None:
    folder = SHARED_DATA / "noncommercial" / "ct_liver_tumor_3dircadb17" / "PATIENT_DICOM"
    require_data(folder)
    files = sorted(folder.iterdir())
    ordered = read_lenient_series(files)
    shuffled = read_lenient_series(files[::-1])
    assert np.array_equal(ordered.array, shuffled.array)
    assert np.allclose(ordered.affine, shuffled.affine)
    assert np.all(np.diff(ordered.positions[:, 2]) > 0)  # axial, sorted along +z
    positions = ordered.positions
    assert np.allclose(ordered.affine[:3, 3], positions[0])
    with pytest.raises(RealDataError, match="uneven slice steps"):
        read_lenient_series([p for p in files if p.name != "image_95"])
