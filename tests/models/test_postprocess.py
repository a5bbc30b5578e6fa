"""Post-processing on the input grid (models.postprocess)."""

from __future__ import annotations

import itertools
from collections import deque

import numpy as np
import pytest

from models.errors import InputError
from models.postprocess import (
    keep_largest_component,
    label_components,
    postprocess,
    remove_small_components,
    within_distance,
)
from models.tasks import ParentConstraint, PostprocessSpec, TaskName, get_task
from tests.models.test_geometry import make_affine

LIVER, TUMOUR = 1, 2


def reference_components(mask: np.ndarray, connectivity: int) -> np.ndarray:
    """Plain breadth-first flood fill, numbering components in C order of first voxel."""
    steps = [
        d
        for d in itertools.product((-1, 0, 1), repeat=3)
        if d != (0, 0, 0) and (connectivity == 26 or sum(map(abs, d)) == 1)
    ]
    labels = np.zeros(mask.shape, dtype=np.int32)
    current = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if labels[start]:
            continue
        current += 1
        labels[start] = current
        queue = deque([start])
        while queue:
            z, y, x = queue.popleft()
            for dz, dy, dx in steps:
                n = (z + dz, y + dy, x + dx)
                if all(0 <= n[i] < mask.shape[i] for i in range(3)) and mask[n] and not labels[n]:
                    labels[n] = current
                    queue.append(n)
    return labels


@pytest.mark.parametrize("connectivity", [6, 26])
@pytest.mark.parametrize("density", [0.15, 0.35, 0.6])
def test_components_match_a_flood_fill(connectivity: int, density: float) -> None:
    rng = np.random.default_rng(int(density * 100) + connectivity)
    for _ in range(3):
        mask = rng.random((7, 9, 11)) < density
        labels, n = label_components(mask, connectivity)
        expected = reference_components(mask, connectivity)
        assert n == expected.max()
        np.testing.assert_array_equal(labels, expected)


def test_diagonal_neighbours_join_only_with_26_connectivity() -> None:
    mask = np.zeros((3, 3, 3), dtype=bool)
    mask[0, 0, 0] = mask[1, 1, 1] = mask[2, 2, 0] = True
    assert label_components(mask, 6)[1] == 3
    assert label_components(mask, 26)[1] == 1
    assert label_components(np.zeros((2, 2, 2), dtype=bool))[1] == 0


def test_within_distance_is_an_anisotropic_ball() -> None:
    spacing = (2.0, 0.7, 1.1)
    mask = np.zeros((9, 21, 17), dtype=bool)
    mask[4, 10, 8] = True
    mask[1, 3, 2] = True
    near = within_distance(mask, spacing, 4.0)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in mask.shape], indexing="ij"), -1)
    distances = np.full(mask.shape, np.inf)
    for point in zip(*np.nonzero(mask), strict=True):
        d = np.sqrt((((grid - np.array(point)) * np.array(spacing)) ** 2).sum(-1))
        distances = np.minimum(distances, d)
    np.testing.assert_array_equal(near, distances <= 4.0 + 1e-9)


def blob(
    shape: tuple[int, int, int], centre: tuple[float, ...], radii: tuple[float, ...]
) -> np.ndarray:
    grid = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


def test_largest_liver_component_is_kept() -> None:
    labels = np.zeros((20, 30, 30), dtype=np.uint8)
    labels[blob(labels.shape, (10, 15, 12), (6, 8, 7))] = LIVER
    labels[2:4, 2:4, 26:28] = LIVER  # a small stray island
    spec = PostprocessSpec(largest_component=(LIVER,))
    out = postprocess(labels, make_affine(), spec)
    assert out[2:4, 2:4, 26:28].sum() == 0
    assert (out == LIVER).sum() == (labels == LIVER).sum() - 8
    assert out.dtype == np.uint8


def test_a_tumour_cutting_the_liver_does_not_split_it() -> None:
    labels = np.zeros((20, 30, 30), dtype=np.uint8)
    labels[4:16, 5:25, 5:25] = LIVER
    labels[4:16, 14:16, 5:25] = TUMOUR  # a tumour slab separating two liver halves
    labels[0:2, 0:2, 0:2] = LIVER
    spec = get_task(TaskName.LIVER_CT).postprocess
    out = postprocess(labels, make_affine(pixel_spacing=(1.0, 1.0), slice_spacing=1.0), spec)
    expected = labels.copy()
    expected[0:2, 0:2, 0:2] = 0
    np.testing.assert_array_equal(out, expected)


def test_tumours_outside_the_dilated_liver_are_removed() -> None:
    affine = make_affine(pixel_spacing=(1.0, 1.0), slice_spacing=2.0)  # spacing (2, 1, 1)
    labels = np.zeros((20, 40, 40), dtype=np.uint8)
    labels[5:15, 10:30, 10:30] = LIVER
    labels[8:12, 14:26, 14:26] = TUMOUR  # big, enclosed: its centre is far from liver voxels
    labels[9:11, 33:35, 20:22] = TUMOUR  # 4 rows (4 mm) beyond the liver: kept at 5 mm
    labels[9:11, 20:22, 36:38] = TUMOUR  # 7 columns (7 mm) beyond: removed
    labels[18:20, 20:22, 20:22] = TUMOUR  # 4 slices (8 mm) above: removed
    spec = PostprocessSpec(inside_parent=(ParentConstraint(TUMOUR, LIVER, 5.0),))
    out = postprocess(labels, affine, spec)
    assert (out[8:12, 14:26, 14:26] == TUMOUR).all()
    assert (out[9:11, 33:35, 20:22] == TUMOUR).all()
    assert (out[9:11, 20:22, 36:38] == 0).all()
    assert (out[18:20, 20:22, 20:22] == 0).all()
    np.testing.assert_array_equal(out == LIVER, labels == LIVER)


def test_without_a_liver_no_liver_tumour_survives() -> None:
    labels = np.zeros((6, 6, 6), dtype=np.uint8)
    labels[2:4, 2:4, 2:4] = TUMOUR
    spec = PostprocessSpec(inside_parent=(ParentConstraint(TUMOUR, LIVER, 5.0),))
    assert postprocess(labels, make_affine(), spec).sum() == 0


def test_small_components_are_removed_by_volume_in_ml() -> None:
    affine = make_affine(pixel_spacing=(1.0, 1.0), slice_spacing=2.0)  # 2 mm^3 = 0.002 mL
    labels = np.zeros((10, 30, 30), dtype=np.uint8)
    labels[1, 1:11, 1] = TUMOUR  # 10 voxels = 0.020 mL
    labels[5, 1:10, 10] = TUMOUR  # 9 voxels = 0.018 mL
    labels[2:8, 15:25, 15:25] = LIVER  # 600 voxels = 1.2 mL
    spec = PostprocessSpec(min_volume_ml=((TUMOUR, 0.02), (LIVER, 1.0)))
    out = postprocess(labels, affine, spec)
    assert (out[1, 1:11, 1] == TUMOUR).all()
    assert (out[5, 1:10, 10] == 0).all()
    assert (out == LIVER).sum() == 600
    stricter = postprocess(labels, affine, spec.with_min_volume(TUMOUR, 0.021))
    assert (stricter == TUMOUR).sum() == 0
    assert (postprocess(labels, affine, spec.with_min_volume(LIVER, 1.3)) == LIVER).sum() == 0
    # the same mask on a finer grid holds less volume
    fine = make_affine(pixel_spacing=(0.5, 0.5), slice_spacing=2.0)
    assert (postprocess(labels, fine, spec) == LIVER).sum() == 0


def test_an_empty_spec_changes_nothing() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (5, 6, 7)).astype(np.int64)
    out = postprocess(labels, make_affine(), PostprocessSpec())
    np.testing.assert_array_equal(out, labels)
    assert out.dtype == np.uint8


def test_helpers_on_masks() -> None:
    mask = np.zeros((5, 5, 5), dtype=bool)
    mask[0, 0, 0:3] = True
    mask[4, 4, 4] = True
    np.testing.assert_array_equal(keep_largest_component(mask), mask & (np.arange(5) < 3))
    assert remove_small_components(mask, 2).sum() == 3
    assert keep_largest_component(np.zeros((2, 2, 2), dtype=bool)).sum() == 0


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((3, 3), dtype=np.uint8),
        np.zeros((2, 2, 2), dtype=np.float32),
        np.full((2, 2, 2), 300),
    ],
    ids=["2d", "float", "too-large"],
)
def test_bad_label_maps_are_rejected(bad: np.ndarray) -> None:
    with pytest.raises(InputError):
        postprocess(bad, make_affine(), PostprocessSpec())


def test_connectivity_must_be_6_or_26() -> None:
    with pytest.raises(InputError):
        label_components(np.ones((2, 2, 2), dtype=bool), connectivity=18)
