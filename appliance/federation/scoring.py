"""Scoring a site's model on its held-out cases, the same way for every party.

:func:`mean_dice` is what a ClientApp reports every round (the mean over held-out cases
and labels of the Dice through the clinical inference path, post-processing included);
:func:`score_site` is the fuller record the federated benchmark keeps per site and
method: Dice per label, small-lesion Dice, lesion recall per size bin, false-positive
components and HD95 (with the cases where it is infinite), of whatever ``Segmenter`` the
site would deploy (one network, or a two-stage model's locator and refiner).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from models.tasks import TaskSpec
from models.training_case import TrainingCase

if TYPE_CHECKING:
    from torch import nn


def mean_dice(model: nn.Module, spec: TaskSpec, cases: Sequence[TrainingCase]) -> float:
    """Mean Dice over ``cases`` and the task's labels; -1 when there is no case."""
    from models.evaluation import dice
    from models.inference import segment

    scores: list[float] = []
    for case in cases:
        mask = segment(model, spec, case.image, case.affine, device="cpu").mask
        for label in spec.labels:
            scores.append(dice(mask == label.index, case.labels == label.index))
    return float(np.mean(scores)) if scores else -1.0


#: segments one held-out case: ``(image, affine) -> label map`` on the image's grid (the
#: whole inference path the site would deploy: one network, or a two-stage model)
Segmenter = Callable[[np.ndarray, np.ndarray], np.ndarray]


def network_segmenter(model: nn.Module, spec: TaskSpec, device: str = "cpu") -> Segmenter:
    """:func:`models.inference.segment` with ``model`` on ``spec``'s grid."""
    from models.inference import segment

    def run(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
        return np.asarray(segment(model, spec, image, affine, device=device).mask)

    return run


@dataclass(frozen=True, slots=True)
class SiteScore:
    """One model on one site's held-out cases (means over the cases).

    ``dice_mean``: mean over labels of ``dice``. ``small_lesion_dice``: mean over the cases
    that have a small lesion (:attr:`models.lesion_size.LesionSizeBin.SMALL`: below
    :data:`models.lesion_size.SMALL_LESION_DIAMETER_MM`, the cards' definition) of their
    small-lesion Dice (``None`` without any).
    ``lesions`` / ``detected``: per size bin (:class:`models.lesion_size.LesionSizeBin`
    values), the truth lesions of the task's lesion labels in all cases and how many a
    predicted component overlaps (recall = detected / lesions);
    ``false_positive_components``: predicted lesion components touching no truth lesion,
    summed over the cases (:func:`models.evaluation.lesion_metrics`).
    ``hd95_mm``: mean over the cases where both masks are non-empty; ``hd95_missed``: the
    cases where a label was missed or hallucinated outright (HD95 infinite).
    """

    cases: int
    dice: dict[str, float]
    dice_mean: float
    small_lesion_dice: float | None
    small_lesion_cases: int
    hd95_mm: dict[str, float | None]
    hd95_missed: dict[str, int]
    lesions: dict[str, int] = field(default_factory=dict)
    detected: dict[str, int] = field(default_factory=dict)
    false_positive_components: int = 0

    def __post_init__(self) -> None:
        if self.cases < 1:
            raise ValueError("a site score rests on at least one case")
        if set(self.detected) != set(self.lesions) or any(
            not 0 <= self.detected[b] <= n for b, n in self.lesions.items()
        ):
            raise ValueError("detected lesions must be per bin and at most the lesions")
        if self.false_positive_components < 0:
            raise ValueError("false_positive_components must be >= 0")

    @property
    def false_positives_per_case(self) -> float:
        return self.false_positive_components / self.cases

    def to_dict(self) -> dict[str, object]:
        return {
            "cases": self.cases,
            "dice": self.dice,
            "dice_mean": self.dice_mean,
            "small_lesion_dice": self.small_lesion_dice,
            "small_lesion_cases": self.small_lesion_cases,
            "hd95_mm": self.hd95_mm,
            "hd95_missed": self.hd95_missed,
            "lesions": self.lesions,
            "detected": self.detected,
            "false_positive_components": self.false_positive_components,
            "false_positives_per_case": self.false_positives_per_case,
        }


def score_site(
    segmenter: Segmenter,
    spec: TaskSpec,
    cases: Sequence[tuple[TrainingCase, np.ndarray]],
) -> SiteScore:
    """Segment each ``(case, lesion_map)`` with ``segmenter`` (e.g.
    :func:`network_segmenter`) and score it with :func:`models.evaluation.evaluate_case`
    against the labels of ``spec`` (the task's)."""
    from models.evaluation import evaluate_case
    from models.lesion_size import LesionSizeBin

    if not cases:
        raise ValueError("no held-out case to score")
    names = [label.name for label in spec.labels]
    dices: dict[str, list[float]] = {n: [] for n in names}
    hd95: dict[str, list[float]] = {n: [] for n in names}
    missed = dict.fromkeys(names, 0)
    small: list[float] = []
    lesions = dict.fromkeys((b.value for b in LesionSizeBin), 0)
    detected = dict.fromkeys((b.value for b in LesionSizeBin), 0)
    false_positives = 0
    for case, lesion_map in cases:
        mask = segmenter(case.image, case.affine)
        metrics = evaluate_case(mask, case.labels, case.affine, spec, lesion_map=lesion_map)
        for name in names:
            dices[name].append(float(metrics.dice[name]))
            distance = float(metrics.hd95_mm[name])
            if math.isfinite(distance):
                hd95[name].append(distance)
            else:
                missed[name] += 1
        for lesion in metrics.lesions.values():
            if lesion.small_lesion_dice is not None:
                small.append(float(lesion.small_lesion_dice))
            for size_bin in LesionSizeBin:
                count, found = lesion.in_bin(size_bin)
                lesions[size_bin.value] += count
                detected[size_bin.value] += found
            false_positives += lesion.false_positive_components
    dice = {n: float(np.mean(v)) for n, v in dices.items()}
    return SiteScore(
        cases=len(cases),
        dice=dice,
        dice_mean=float(np.mean(list(dice.values()))),
        small_lesion_dice=float(np.mean(small)) if small else None,
        small_lesion_cases=len(small),
        hd95_mm={n: (float(np.mean(v)) if v else None) for n, v in hd95.items()},
        hd95_missed=missed,
        lesions=lesions,
        detected=detected,
        false_positive_components=false_positives,
    )
