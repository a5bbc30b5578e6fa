"""Evaluation metrics on masks with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.evaluation import (
    dice,
    evaluate_case,
    hausdorff_distance,
    lesion_metrics,
    summarize,
    surface_voxels,
)
from models.tasks import get_task


def _sphere(shape: tuple[int, int, int], centre: tuple[float, ...], radius: float) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    dist2 = sum((grid[i] - centre[i]) ** 2 for i in range(3))
    return dist2 <= radius**2


def _affine(spacing: tuple[float, float, float]) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = (-10.0, 5.0, 2.0)
    return affine


def test_dice_identical_disjoint_partial_and_empty() -> None:
    a = np.zeros((4, 4, 4), bool)
    a[:2] = True
    b = np.zeros_like(a)
    b[2:] = True
    c = np.zeros_like(a)
    c[1:3] = True
    assert dice(a, a) == 1.0
    assert dice(a, b) == 0.0
    assert dice(a, c) == pytest.approx(0.5)
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0


def test_surface_of_a_cube() -> None:
    cube = np.zeros((7, 7, 7), bool)
    cube[1:6, 1:6, 1:6] = True
    surface = surface_voxels(cube)
    assert surface.sum() == 5**3 - 3**3
    assert not surface[3, 3, 3]


def test_hausdorff_of_offset_spheres_in_mm() -> None:
    spacing = (2.0, 1.0, 1.0)
    shape = (30, 40, 40)
    a = _sphere(shape, (12, 20, 20), 6.0)
    b = _sphere(shape, (15, 20, 20), 6.0)  # 3 voxels along axis 0 = 6 mm
    affine = _affine(spacing)
    full = hausdorff_distance(a, b, affine, percentile=100.0)
    assert full == pytest.approx(6.0, abs=1.0)
    hd95 = hausdorff_distance(a, b, affine)
    assert 3.0 < hd95 <= full + 1e-9
    # the same offset along a 1 mm axis is a third of the distance
    c = _sphere(shape, (12, 23, 20), 6.0)
    assert hausdorff_distance(a, c, affine, percentile=100.0) == pytest.approx(3.0, abs=0.5)
    assert hausdorff_distance(a, a, affine) == 0.0


def test_hausdorff_with_empty_masks() -> None:
    a = _sphere((10, 10, 10), (5, 5, 5), 3)
    empty = np.zeros_like(a)
    assert hausdorff_distance(empty, empty, np.eye(4)) == 0.0
    assert math.isinf(hausdorff_distance(a, empty, np.eye(4)))


def test_small_lesion_dice_and_detection() -> None:
    shape = (40, 40, 40)
    small = _sphere(shape, (8, 8, 8), 2.0)  # ~4.6 mm at 1 mm voxels
    large = _sphere(shape, (25, 25, 25), 10.0)  # ~20 mm
    truth = small | large
    lesion_map = np.zeros(shape, np.uint8)
    lesion_map[small] = 1
    lesion_map[large] = 2
    affine = np.eye(4)

    only_large = lesion_metrics(large, truth, affine, lesion_map=lesion_map)
    assert (only_large.lesions, only_large.detected) == (2, 1)
    assert (only_large.small_lesions, only_large.small_detected) == (1, 0)
    assert only_large.small_lesion_dice == 0.0
    assert only_large.false_positive_components == 0

    spurious = _sphere(shape, (5, 30, 30), 2.0)
    perfect = lesion_metrics(truth | spurious, truth, affine, lesion_map=lesion_map)
    assert perfect.small_lesion_dice == pytest.approx(1.0)
    assert perfect.detection_rate == 1.0
    assert perfect.false_positive_components == 1

    # without a lesion map the components of the truth are the lesions
    by_components = lesion_metrics(truth, truth, affine)
    assert by_components.lesions == 2
    assert by_components.small_lesion_dice == pytest.approx(1.0)

    grown = lesion_metrics(_sphere(shape, (8, 8, 8), 3.0) | large, truth, affine)
    assert 0.3 < (grown.small_lesion_dice or 0.0) < 1.0


def test_evaluate_case_and_summary() -> None:
    spec = get_task("liver_ct")
    shape = (30, 30, 30)
    truth = np.zeros(shape, np.uint8)
    truth[_sphere(shape, (15, 15, 15), 10)] = 1
    truth[_sphere(shape, (15, 15, 15), 3)] = 2
    pred = truth.copy()
    pred[_sphere(shape, (15, 15, 18), 3)] = 2
    affine = _affine((2.0, 1.5, 1.5))
    metrics = evaluate_case(pred, truth, affine, spec)
    assert set(metrics.dice) == {"Liver", "Liver tumour"}
    assert metrics.dice["Liver"] > 0.9
    assert 0.2 < metrics.dice["Liver tumour"] < 1.0
    assert metrics.hd95_mm["Liver tumour"] > 0
    assert set(metrics.lesions) == {"Liver tumour"}
    assert metrics.volume_ml_truth["Liver tumour"] == pytest.approx(
        (truth == 2).sum() * 2.0 * 1.5 * 1.5 / 1000.0
    )
    perfect = evaluate_case(truth, truth, affine, spec)
    summary = summarize([metrics, perfect])
    assert summary.cases == 2
    assert summary.dice["Liver"].minimum == pytest.approx(metrics.dice["Liver"])
    assert summary.dice["Liver"].maximum == 1.0
    flat = summary.as_metrics()
    assert flat["dice_liver_tumour"] == pytest.approx((metrics.dice["Liver tumour"] + 1.0) / 2.0)
    assert all(math.isfinite(v) for v in flat.values())
    both = metrics.volume_ml_pred["Liver tumour"] + 3 * metrics.volume_ml_truth["Liver tumour"]
    overlap = metrics.overlap_ml["Liver tumour"] + metrics.volume_ml_truth["Liver tumour"]
    assert summary.pooled_dice["Liver tumour"] == pytest.approx(2 * overlap / both)
    assert "Liver" in summary.format_table()
