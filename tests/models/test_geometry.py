"""LPS <-> RAS affines and MetaTensors (models.geometry).

Also holds the affine helpers the other model tests import.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.utils import SpaceKeys

from models.errors import GeometryError, ModelsError
from models.geometry import (
    LPS_TO_RAS,
    axis_codes,
    from_metatensor,
    lps_to_ras,
    ras_orientation,
    ras_to_lps,
    to_metatensor,
    validate_affine,
    voxel_spacing,
    voxel_volume_ml,
)

Vec3 = tuple[float, float, float]

AXIAL: tuple[Vec3, Vec3] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))  # (row dir, column dir)
SAGITTAL: tuple[Vec3, Vec3] = ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0))
CORONAL: tuple[Vec3, Vec3] = ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0))


def oblique_directions(deg_a: float = 25.0, deg_b: float = 15.0) -> tuple[Vec3, Vec3]:
    """Axial directions rotated about the LPS x axis, then about z: a double-oblique plane."""
    a, b = np.deg2rad(deg_a), np.deg2rad(deg_b)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    r = rz @ rx
    row, col = r @ np.array(AXIAL[0]), r @ np.array(AXIAL[1])
    return (
        (float(row[0]), float(row[1]), float(row[2])),
        (float(col[0]), float(col[1]), float(col[2])),
    )


def make_affine(
    *,
    directions: tuple[Vec3, Vec3] = AXIAL,
    pixel_spacing: tuple[float, float] = (0.8, 0.8),
    slice_spacing: float = 2.0,
    origin: Vec3 = (-120.0, -100.0, -60.0),
    reverse_slices: bool = False,
) -> np.ndarray:
    """Index ``[slice, row, column, 1]`` -> LPS mm, built the way a DICOM series is:
    column 1 = column direction x PixelSpacing[0], column 2 = row direction x
    PixelSpacing[1], column 0 = slice normal x slice spacing (negated for a series
    stored in reverse slice order)."""
    row_dir, col_dir = np.array(directions[0]), np.array(directions[1])
    normal = np.cross(row_dir, col_dir)
    out = np.eye(4)
    out[:3, 0] = normal * slice_spacing * (-1.0 if reverse_slices else 1.0)
    out[:3, 1] = col_dir * pixel_spacing[0]
    out[:3, 2] = row_dir * pixel_spacing[1]
    out[:3, 3] = origin
    return out


def ras_spacing(affine_lps: np.ndarray) -> tuple[float, float, float]:
    """The input's voxel spacing in the order of the RAS-oriented axes, i.e. the target
    spacing under which pre-processing does not resample at all."""
    perm, _ = ras_orientation(lps_to_ras(affine_lps))
    spacing = voxel_spacing(affine_lps)
    return (spacing[perm[0]], spacing[perm[1]], spacing[perm[2]])


def test_helper_matches_the_dicom_bridge_convention() -> None:
    synthetic = pytest.importorskip("dicom_bridge.synthetic")
    geometry = synthetic.SeriesGeometry(
        slices=5,
        rows=6,
        columns=7,
        pixel_spacing=(0.7, 0.9),
        slice_spacing=2.5,
        origin=(-10.0, 20.0, 30.0),
        row_direction=AXIAL[0],
        column_direction=AXIAL[1],
    )
    ours = make_affine(pixel_spacing=(0.7, 0.9), slice_spacing=2.5, origin=(-10.0, 20.0, 30.0))
    np.testing.assert_allclose(geometry.affine(), ours)


def test_lps_to_ras_negates_x_and_y_only() -> None:
    affine = make_affine()
    ras = lps_to_ras(affine)
    voxel = np.array([3.0, 4.0, 5.0, 1.0])
    lps_point = affine @ voxel
    ras_point = ras @ voxel
    np.testing.assert_allclose(ras_point[:3], lps_point[:3] * np.array([-1.0, -1.0, 1.0]))
    np.testing.assert_allclose(LPS_TO_RAS @ LPS_TO_RAS, np.eye(4))


@pytest.mark.parametrize(
    "affine",
    [
        make_affine(),
        make_affine(directions=oblique_directions()),
        make_affine(directions=SAGITTAL, reverse_slices=True),
        make_affine(pixel_spacing=(0.5, 0.6), slice_spacing=5.0),
    ],
    ids=["axial", "oblique", "sagittal-reversed", "anisotropic"],
)
def test_round_trip_lps_ras(affine: np.ndarray) -> None:
    np.testing.assert_allclose(ras_to_lps(lps_to_ras(affine)), affine)
    np.testing.assert_allclose(lps_to_ras(ras_to_lps(affine)), affine)
    assert voxel_spacing(lps_to_ras(affine)) == pytest.approx(voxel_spacing(affine))


def test_spacing_and_volume() -> None:
    affine = make_affine(pixel_spacing=(0.5, 0.8), slice_spacing=3.0, reverse_slices=True)
    assert voxel_spacing(affine) == pytest.approx((3.0, 0.5, 0.8))
    assert voxel_volume_ml(affine) == pytest.approx(3.0 * 0.5 * 0.8 / 1000)


@pytest.mark.parametrize(
    ("directions", "reverse", "codes"),
    [
        (AXIAL, False, "SPL"),  # slices go up, rows go back, columns go to the left
        (AXIAL, True, "IPL"),
        (SAGITTAL, False, "RIP"),  # slices go to the right (normal = row x column)
        (CORONAL, False, "PIL"),
    ],
)
def test_axis_codes(directions: tuple[Vec3, Vec3], reverse: bool, codes: str) -> None:
    affine = make_affine(directions=directions, reverse_slices=reverse)
    assert axis_codes(lps_to_ras(affine)) == codes


def test_ras_orientation_of_an_oblique_grid_is_its_closest_axes() -> None:
    perm, flips = ras_orientation(lps_to_ras(make_affine(directions=oblique_directions(20, 10))))
    # slices ~ superior, rows ~ posterior (flip to A), columns ~ left (flip to R)
    assert perm == (2, 1, 0)
    assert flips == (True, True, False)


@pytest.mark.parametrize(
    "bad",
    [
        np.eye(3),
        np.full((4, 4), np.nan),
        np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]], dtype=float),
        np.diag([1.0, 0.0, 1.0, 1.0]),
        np.array([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float),
        "not an affine",
    ],
    ids=["3x3", "nan", "last-row", "zero-axis", "parallel-axes", "text"],
)
def test_invalid_affines_are_rejected(bad: object) -> None:
    with pytest.raises(GeometryError) as info:
        validate_affine(bad)  # type: ignore[arg-type]
    assert isinstance(info.value, ModelsError)


def test_metatensor_round_trip() -> None:
    affine = make_affine(directions=oblique_directions(), reverse_slices=True)
    array = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    tensor = to_metatensor(array, affine)
    assert isinstance(tensor, MetaTensor)
    assert tensor.shape == (2, 3, 4, 5)  # axis order untouched
    assert SpaceKeys(tensor.meta["space"]) == SpaceKeys.RAS
    np.testing.assert_allclose(tensor.affine.numpy(), lps_to_ras(affine))
    back, back_affine = from_metatensor(tensor)
    np.testing.assert_array_equal(back, array)
    np.testing.assert_allclose(back_affine, affine)


def test_from_metatensor_respects_an_lps_space() -> None:
    affine = make_affine()
    tensor = MetaTensor(torch.zeros(1, 2, 2, 2), affine=torch.as_tensor(affine))
    tensor.meta["space"] = SpaceKeys.LPS
    _, back_affine = from_metatensor(tensor)
    np.testing.assert_allclose(back_affine, affine)


def test_to_metatensor_needs_channel_first_4d() -> None:
    with pytest.raises(GeometryError):
        to_metatensor(np.zeros((3, 4, 5), dtype=np.float32), make_affine())


def test_resample_to_the_same_grid_returns_the_same_array() -> None:
    from models.geometry import resample_to_grid

    array = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    affine = np.array([[0, 0, 0.8, -10], [0, 0.8, 0, 5], [2.5, 0, 0, 30], [0, 0, 0, 1.0]])
    out = resample_to_grid(array, affine, (5, 6, 7), affine)
    assert out.dtype == np.float32 and out.shape == (5, 6, 7)
    np.testing.assert_allclose(out, array, atol=1e-5)


def test_resample_onto_a_shifted_grid_moves_the_content() -> None:
    from models.geometry import resample_to_grid, same_grid

    array = np.zeros((6, 8, 8), dtype=np.float32)
    array[2, 3, 4] = 1.0
    source = np.diag([2.0, 1.0, 1.0, 1.0])
    shifted = source.copy()
    shifted[:3, 3] = [2.0, 0.0, 1.0]  # one slice and one column further
    assert not same_grid(array.shape, source, array.shape, shifted)
    out = resample_to_grid(array, source, (6, 8, 8), shifted)
    assert np.unravel_index(np.argmax(out), out.shape) == (1, 3, 3)
    assert out.max() == pytest.approx(1.0, abs=1e-5)
    half = shifted.copy()
    half[:3, 3] = [1.0, 0.0, 0.0]  # half a slice: trilinear between two slices
    out = resample_to_grid(array, source, (6, 8, 8), half)
    assert out[1, 3, 4] == pytest.approx(0.5, abs=1e-5)
    assert out[2, 3, 4] == pytest.approx(0.5, abs=1e-5)
