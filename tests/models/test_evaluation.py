"""Evaluation metrics on masks with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.errors import InputError
from models.evaluation import (
    dice,
    evaluate_case,
    hausdorff_distance,
    lesion_metrics,
    summarize,
    surface_voxels,
)
from models.intervals import bootstrap_indices, ratio_interval
from models.lesion_size import SMALL_LESION_DIAMETER_MM, LesionSizeBin
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


# --- lesion size bins, proportional charging, empty truth, infinite HD95, intervals ---


def _one_voxel_lesion_affine(diameter_mm: float) -> np.ndarray:
    """Isotropic grid whose single voxel has an equivalent-sphere diameter ``diameter_mm``."""
    return np.diag([diameter_mm / (6.0 / math.pi) ** (1.0 / 3.0)] * 3 + [1.0])


def test_size_bins_at_their_boundaries() -> None:
    assert LesionSizeBin.of(0.0) is LesionSizeBin.SMALL
    assert LesionSizeBin.of(9.999) is LesionSizeBin.SMALL
    assert LesionSizeBin.of(10.0) is LesionSizeBin.MEDIUM
    assert LesionSizeBin.of(19.999) is LesionSizeBin.MEDIUM
    assert LesionSizeBin.of(20.0) is LesionSizeBin.LARGE
    assert LesionSizeBin.SMALL.upper_mm == SMALL_LESION_DIAMETER_MM == 10.0
    assert LesionSizeBin.MEDIUM.upper_mm == LesionSizeBin.LARGE.lower_mm == 20.0
    assert [b.description for b in LesionSizeBin] == ["< 10 mm", "10-20 mm", ">= 20 mm"]
    with pytest.raises(InputError, match="diameter"):
        LesionSizeBin.of(-1.0)
    # through the lesion metrics: one voxel of 9.9 / 10.1 / 20.1 mm equivalent diameter
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 1, 1] = True
    for diameter, expected in ((9.9, "small"), (10.1, "medium"), (20.1, "large")):
        metrics = lesion_metrics(mask, mask, _one_voxel_lesion_affine(diameter))
        assert metrics.per_lesion_diameter_mm[0] == pytest.approx(diameter)
        assert metrics.per_lesion_bin == (LesionSizeBin(expected),)
        assert metrics.in_bin(LesionSizeBin(expected)) == (1, 1)
    # the federated benchmark uses the same threshold (no constant of its own)
    from appliance.federation.simulation import report

    assert report.SMALL_LESION_DIAMETER_MM is SMALL_LESION_DIAMETER_MM


def test_a_component_over_two_lesions_is_charged_in_proportion_to_its_overlap() -> None:
    shape = (2, 2, 70)
    lesion_map = np.zeros(shape, np.uint8)
    lesion_map[:, :, 0:30] = 1  # lesion A: 120 voxels
    lesion_map[:, :, 40:50] = 2  # lesion B: 40 voxels
    truth = lesion_map > 0
    pred = np.zeros(shape, bool)
    pred[:, :, 0:60] = True  # one component: 240 voxels, 120 on A and 40 on B
    metrics = lesion_metrics(pred, truth, np.eye(4), lesion_map=lesion_map)
    assert metrics.per_lesion_overlap == (120.0, 40.0)
    # 240 voxels shared 3:1, not all charged to each lesion
    assert metrics.per_lesion_charged == pytest.approx((180.0, 60.0))
    assert sum(metrics.per_lesion_charged) == pytest.approx(pred.sum())
    assert metrics.per_lesion_dice == pytest.approx((240 / 300, 80 / 100))
    assert metrics.detected == 2 and metrics.false_positive_components == 0
    # both lesions are small (1 mm voxels): their pooled Dice uses the charged voxels
    assert metrics.small_lesion_dice == pytest.approx(2 * 160 / (160 + 240))
    more = pred.copy()
    more[:, :, 62:66] = True  # touches nothing: a false positive
    assert (
        lesion_metrics(more, truth, np.eye(4), lesion_map=lesion_map).false_positive_components == 1
    )


def test_false_positive_components_are_counted() -> None:
    shape = (20, 20, 20)
    truth = _sphere(shape, (10, 10, 10), 3)
    pred = truth | _sphere(shape, (2, 2, 2), 1) | _sphere(shape, (17, 17, 17), 1)
    metrics = lesion_metrics(pred, truth, np.eye(4))
    assert metrics.false_positive_components == 2
    assert metrics.detected == 1
    assert lesion_metrics(truth, truth, np.eye(4)).false_positive_components == 0


def _liver_case(tumour_truth: bool, tumour_pred: bool) -> tuple[np.ndarray, np.ndarray]:
    shape = (24, 24, 24)
    labels = np.zeros(shape, np.uint8)
    labels[_sphere(shape, (12, 12, 12), 9)] = 1
    if tumour_truth:
        labels[_sphere(shape, (12, 12, 12), 2)] = 2
    pred = labels.copy()
    pred[pred == 2] = 1
    if tumour_pred:
        pred[_sphere(shape, (12, 12, 12), 2)] = 2
    return pred, labels


def test_infinite_hd95_and_empty_truth_cases_are_counted_not_averaged_away() -> None:
    spec = get_task("liver_ct")
    affine = np.eye(4)
    outcomes = {
        "perfect": (True, True),
        "missed": (True, False),
        "hallucinated": (False, True),
        "both empty": (False, False),
    }
    cases = {}
    for name, (in_truth, in_pred) in outcomes.items():
        pred, truth = _liver_case(in_truth, in_pred)
        cases[name] = evaluate_case(pred, truth, affine, spec)
    assert math.isinf(cases["missed"].hd95_mm["Liver tumour"])
    assert math.isinf(cases["hallucinated"].hd95_mm["Liver tumour"])
    summary = summarize(list(cases.values()))
    hd = summary.hd95_mm["Liver tumour"]
    assert (hd.n, hd.infinite) == (1, 2)  # both-empty case: no distance, in neither
    assert hd.mean == 0.0  # the one finite case, not a mean that hides two failures
    flat = summary.as_metrics()
    assert flat["hd95_inf_cases_liver_tumour"] == 2.0
    assert flat["hd95_finite_cases_liver_tumour"] == 1.0
    assert flat["hd95_inf_cases_liver"] == 0.0
    # lesion Dice: over the two cases with a tumour (1 and 0), not the lucky empty ones
    assert summary.dice["Liver tumour"].n == 2
    assert flat["dice_liver_tumour"] == pytest.approx(0.5)
    assert flat["dice_cases_liver_tumour"] == 2.0
    assert summary.dice["Liver"].n == 4
    # the gate's figure keeps every case: the hallucination scores 0, both-empty 1
    assert summary.dice_all_cases["Liver tumour"].n == 4
    assert summary.dice_all_cases["Liver tumour"].mean == pytest.approx(0.5)
    assert flat["empty_truth_cases_liver_tumour"] == 2.0
    assert flat["empty_truth_false_positives_liver_tumour"] == 1.0
    assert flat["false_positives_per_case_liver_tumour"] == pytest.approx(0.25)
    # lesions: two truth lesions (one per tumour case), one found; all small (~5 mm)
    assert summary.lesions_per_bin["Liver tumour"][LesionSizeBin.SMALL] == 2
    assert summary.lesions_per_bin["Liver tumour"][LesionSizeBin.LARGE] == 0
    assert flat["recall_small_liver_tumour"] == pytest.approx(0.5)
    assert "recall_large_liver_tumour" not in flat  # undefined without a lesion: left out
    assert all(math.isfinite(v) for v in flat.values())
    table = summary.format_table()
    assert "< 10 mm" in table and "empty-truth cases 2" in table


def test_bootstrap_interval_contains_the_mean_narrows_with_n_and_is_seeded() -> None:
    rng = np.random.default_rng(42)
    values = rng.normal(0.7, 0.1, size=400)
    widths = []
    for n in (10, 40, 400):
        sample = values[:n]
        interval = ratio_interval(sample, np.ones(n), bootstrap_indices(n, seed=0))
        assert interval.value == pytest.approx(sample.mean())
        assert interval.low < interval.value < interval.high
        assert interval.n == n
        widths.append(interval.high - interval.low)
    assert widths[0] > widths[1] > widths[2]
    same = ratio_interval(values[:10], np.ones(10), bootstrap_indices(10, seed=0))
    other = ratio_interval(values[:10], np.ones(10), bootstrap_indices(10, seed=1))
    assert same == ratio_interval(values[:10], np.ones(10), bootstrap_indices(10, seed=0))
    assert same != other
    # a ratio of sums: cases without a denominator do not count
    ratio = ratio_interval(
        np.array([1.0, 0.0, 2.0]), np.array([2.0, 0.0, 2.0]), bootstrap_indices(3)
    )
    assert (ratio.value, ratio.n) == (0.75, 2)
    assert math.isnan(ratio_interval(np.zeros(2), np.zeros(2), bootstrap_indices(2)).value)


def test_summary_intervals_are_seeded_and_go_to_the_card() -> None:
    spec = get_task("liver_ct")
    cases = []
    for radius in (6, 7, 8, 9):
        shape = (24, 24, 24)
        truth = np.zeros(shape, np.uint8)
        truth[_sphere(shape, (12, 12, 12), 9)] = 1
        pred = np.zeros(shape, np.uint8)
        pred[_sphere(shape, (12, 12, 12), radius)] = 1
        cases.append(evaluate_case(pred, truth, np.eye(4), spec))
    summary = summarize(cases)
    assert summary == summarize(cases)
    liver = summary.intervals["dice_liver"]
    assert liver.low <= summary.dice["Liver"].mean <= liver.high
    assert liver.low < liver.high
    flat = summary.as_metrics()
    assert flat["dice_liver_ci95_low"] == liver.low
    assert flat["dice_liver_ci95_high"] == liver.high
