"""Evaluation of label maps against truth: Dice, HD95 (mm) and lesion-wise metrics.

Everything works on the boundary format (``(slice, row, column)`` arrays plus an
index -> LPS affine), so a prediction is scored on the grid of its input image.

- **Dice** per label: ``2|P∩T| / (|P|+|T|)``; 1.0 when both are empty. For a sigmoid
  task (overlapping labels) each label is its region: the prediction is the
  ``(S, ...)`` per-label mask :func:`models.inference.segment` returns and the truth
  the tissue label map, joined into the regions (:func:`models.regions.region_masks`),
  or the region masks themselves. Summaries give
  the mean over cases and the *pooled* Dice (all cases' voxels together, as LiTS reports
  "Dice global"), which a tiny lesion missed in one case does not dominate.
- **HD95** per label, in millimetres: the larger of the two directed 95th-percentile
  surface distances (the MONAI / medical-segmentation-decathlon convention). Surface
  voxels are mask voxels with a 6-neighbour outside the mask; their centres are mapped
  to millimetres with the affine (anisotropic and oblique grids included) and nearest
  distances come from ``torch.cdist`` in chunks. scipy is not a dependency, so MONAI's
  ``compute_hausdorff_distance`` (which needs scipy's distance transform) is not used.
  0.0 when both masks are empty, ``inf`` when exactly one is.
- **Lesion metrics** for labels that are lesions (category "Morphologically abnormal
  structure"): truth lesions are the components of the phantom's ``lesion_map`` (or the
  connected components of the truth label), each sized by its equivalent-sphere diameter
  and put in a :class:`models.lesion_size.LesionSizeBin` (small < 10 mm, medium 10-20 mm,
  large >= 20 mm: the one definition the cards, this module and the federated benchmark
  share). A lesion is *detected* when a predicted component overlaps it; recall is given
  per bin. A predicted component touching several lesions is *charged* to each in
  proportion to its overlap with it (a component covering 30 voxels of lesion A and 10 of
  lesion B gives A three quarters of its voxels), so a lesion's Dice is
  ``2|L∩P| / (|L| + charged_L)``; *small-lesion Dice* pools these over a case's small
  lesions. Predicted components touching no truth lesion are false positives.
- **Summaries** (:func:`summarize`) give each headline figure with a 95 % interval (a
  seeded percentile bootstrap over cases, :mod:`models.intervals`), the HD95 mean over the
  cases where it is finite next to the count of cases where it is infinite, and for a
  lesion label the Dice mean over the cases with a lesion, the empty-truth cases being
  counted apart with their false-positive components.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType

import numpy as np
import torch

from .errors import InputError
from .geometry import validate_affine, voxel_volume_ml
from .intervals import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    Interval,
    bootstrap_indices,
    ratio_interval,
)
from .lesion_size import LesionSizeBin, equivalent_diameter_mm
from .postprocess import label_components
from .regions import region_masks
from .tasks import MORPHOLOGICALLY_ABNORMAL_STRUCTURE, TaskSpec

_CHUNK = 4096


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks of the same shape; 1.0 when both are empty."""
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    if p.shape != t.shape:
        raise InputError(f"mask shapes differ: {p.shape} vs {t.shape}")
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / total


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Boolean map of the voxels of ``mask`` that have a 6-neighbour outside it (the
    grid's edge counts as outside)."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 3:
        raise InputError("surface_voxels needs a 3-D mask")
    padded = np.pad(m, 1, constant_values=False)
    interior = m.copy()
    for axis in range(3):
        for shift in (-1, 1):
            interior &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
    return m & ~interior


def _surface_points_mm(mask: np.ndarray, affine: np.ndarray) -> torch.Tensor:
    idx = np.argwhere(surface_voxels(mask)).astype(np.float64)
    points = idx @ affine[:3, :3].T + affine[:3, 3]
    return torch.from_numpy(points)


def _nearest_distances(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """For each point of ``src``, the distance to the nearest point of ``dst``."""
    out = torch.empty(src.shape[0], dtype=torch.float64)
    for start in range(0, src.shape[0], _CHUNK):
        block = src[start : start + _CHUNK]
        best = torch.full((block.shape[0],), math.inf, dtype=torch.float64)
        for d_start in range(0, dst.shape[0], _CHUNK * 4):
            d = torch.cdist(block, dst[d_start : d_start + _CHUNK * 4])
            best = torch.minimum(best, d.min(dim=1).values)
        out[start : start + _CHUNK] = best
    return out


def hausdorff_distance(
    pred: np.ndarray, truth: np.ndarray, affine: np.ndarray, *, percentile: float = 95.0
) -> float:
    """Symmetric percentile Hausdorff distance in mm between two boolean masks on the grid
    of ``affine`` (index -> mm): ``max(P_q(d(P->T)), P_q(d(T->P)))``. 0.0 when both are
    empty, ``inf`` when only one is. ``percentile=100`` gives the Hausdorff distance."""
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    if p.shape != t.shape or p.ndim != 3:
        raise InputError(f"need two 3-D masks of one shape, got {p.shape} and {t.shape}")
    if not 0.0 < percentile <= 100.0:
        raise InputError("percentile must be in (0, 100]")
    aff = validate_affine(affine)
    p_any, t_any = bool(p.any()), bool(t.any())
    if not p_any and not t_any:
        return 0.0
    if not (p_any and t_any):
        return math.inf
    ps = _surface_points_mm(p, aff)
    ts = _surface_points_mm(t, aff)
    q = percentile / 100.0
    forward = torch.quantile(_nearest_distances(ps, ts), q).item()
    backward = torch.quantile(_nearest_distances(ts, ps), q).item()
    return float(max(forward, backward))


@dataclass(frozen=True, slots=True)
class LesionMetrics:
    """Per-lesion results for one lesion label of one case (see the module docstring).

    Per truth lesion, in one order: its voxels, its equivalent-sphere diameter, the
    predicted voxels overlapping it and the predicted voxels charged to it (the voxels of
    every predicted component touching it, shared between the lesions a component touches
    in proportion to its overlap with each: fractional)."""

    per_lesion_voxels: tuple[int, ...]
    per_lesion_diameter_mm: tuple[float, ...]
    per_lesion_overlap: tuple[float, ...]
    per_lesion_charged: tuple[float, ...]
    false_positive_components: int

    def __post_init__(self) -> None:
        count = len(self.per_lesion_voxels)
        lengths = {
            len(self.per_lesion_diameter_mm),
            len(self.per_lesion_overlap),
            len(self.per_lesion_charged),
        }
        if lengths != {count}:
            raise InputError("per-lesion tuples must have one entry per lesion")
        if any(v <= 0 for v in self.per_lesion_voxels):
            raise InputError("a truth lesion has at least one voxel")
        for overlap, charged, voxels in zip(
            self.per_lesion_overlap, self.per_lesion_charged, self.per_lesion_voxels, strict=True
        ):
            if not (0.0 <= overlap <= voxels and overlap <= charged + 1e-6):
                raise InputError("a lesion's overlap must lie within it and its charged voxels")
        if self.false_positive_components < 0:
            raise InputError("false_positive_components must be >= 0")

    @property
    def lesions(self) -> int:
        return len(self.per_lesion_voxels)

    @property
    def per_lesion_bin(self) -> tuple[LesionSizeBin, ...]:
        return tuple(LesionSizeBin.of(d) for d in self.per_lesion_diameter_mm)

    @property
    def per_lesion_detected(self) -> tuple[bool, ...]:
        """A lesion is detected when a predicted component overlaps it."""
        return tuple(o > 0 for o in self.per_lesion_overlap)

    @property
    def per_lesion_dice(self) -> tuple[float, ...]:
        return tuple(
            2.0 * o / (v + c)
            for o, v, c in zip(
                self.per_lesion_overlap,
                self.per_lesion_voxels,
                self.per_lesion_charged,
                strict=True,
            )
        )

    @property
    def detected(self) -> int:
        return sum(self.per_lesion_detected)

    def in_bin(self, size_bin: LesionSizeBin) -> tuple[int, int]:
        """``(lesions, detected)`` of the bin."""
        picked = [
            d
            for b, d in zip(self.per_lesion_bin, self.per_lesion_detected, strict=True)
            if b is size_bin
        ]
        return len(picked), sum(picked)

    def bin_dice(self, size_bin: LesionSizeBin) -> float | None:
        """Dice pooled over the bin's lesions, ``2 Σ overlap / Σ (voxels + charged)``;
        ``None`` when the case has no lesion in the bin."""
        inter = total = 0.0
        for b, o, v, c in zip(
            self.per_lesion_bin,
            self.per_lesion_overlap,
            self.per_lesion_voxels,
            self.per_lesion_charged,
            strict=True,
        ):
            if b is size_bin:
                inter += o
                total += v + c
        return 2.0 * inter / total if total else None

    @property
    def small_lesions(self) -> int:
        return self.in_bin(LesionSizeBin.SMALL)[0]

    @property
    def small_detected(self) -> int:
        return self.in_bin(LesionSizeBin.SMALL)[1]

    @property
    def small_lesion_dice(self) -> float | None:
        """Dice pooled over the small lesions (``None`` when the case has none)."""
        return self.bin_dice(LesionSizeBin.SMALL)

    @property
    def detection_rate(self) -> float | None:
        return self.detected / self.lesions if self.lesions else None

    @property
    def small_detection_rate(self) -> float | None:
        small, found = self.in_bin(LesionSizeBin.SMALL)
        return found / small if small else None


def lesion_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    affine: np.ndarray,
    *,
    lesion_map: np.ndarray | None = None,
    connectivity: int = 26,
) -> LesionMetrics:
    """Per-lesion detection and charged voxels of boolean ``pred`` against ``truth``.

    ``lesion_map`` (e.g. :attr:`models.phantoms.Phantom.lesion_map`) numbers the truth
    lesions; without it they are the connected components of ``truth``. A predicted
    component touching several lesions is charged to each in proportion to its overlap
    with it; one touching none is a false positive.
    """
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    if p.shape != t.shape or p.ndim != 3:
        raise InputError(f"need two 3-D masks of one shape, got {p.shape} and {t.shape}")
    voxel_ml = voxel_volume_ml(affine)
    if lesion_map is not None:
        lmap = np.asarray(lesion_map)
        if lmap.shape != t.shape:
            raise InputError(f"lesion_map shape {lmap.shape} differs from {t.shape}")
        lmap = np.where(t, lmap, 0).astype(np.int64)
        ids = np.asarray([int(i) for i in np.unique(lmap) if i != 0], dtype=np.int64)
    else:
        labelled, n = label_components(t, connectivity)
        lmap = np.asarray(labelled, dtype=np.int64)
        ids = np.arange(1, n + 1, dtype=np.int64)
    pred_cc, n_pred = label_components(p, connectivity)
    pred_cc = np.asarray(pred_cc, dtype=np.int64)
    width = n_pred + 1
    # row: position of the lesion in ids (+1; 0 = no lesion), column: predicted component
    rows = np.zeros(lmap.shape, dtype=np.int64)
    inside = lmap != 0
    rows[inside] = np.searchsorted(ids, lmap[inside]) + 1
    table = np.bincount((rows * width + pred_cc).ravel(), minlength=(ids.size + 1) * width).reshape(
        ids.size + 1, width
    )
    voxels = table[1:].sum(axis=1)  # truth voxels per lesion
    overlap = table[1:, 1:].astype(np.float64)  # lesion x component
    component_size = table[:, 1:].sum(axis=0).astype(np.float64)
    component_overlap = overlap.sum(axis=0)
    touched = component_overlap > 0
    share = np.divide(
        overlap, component_overlap, out=np.zeros_like(overlap), where=component_overlap > 0
    )
    charged = (share * component_size).sum(axis=1)
    return LesionMetrics(
        per_lesion_voxels=tuple(int(v) for v in voxels),
        per_lesion_diameter_mm=tuple(equivalent_diameter_mm(int(v), voxel_ml) for v in voxels),
        per_lesion_overlap=tuple(float(o) for o in overlap.sum(axis=1)),
        per_lesion_charged=tuple(float(c) for c in charged),
        false_positive_components=int(n_pred - int(touched.sum())),
    )


@dataclass(frozen=True, slots=True)
class CaseMetrics:
    """Metrics of one case, keyed by label name."""

    dice: Mapping[str, float]
    hd95_mm: Mapping[str, float]
    volume_ml_pred: Mapping[str, float]
    volume_ml_truth: Mapping[str, float]
    lesions: Mapping[str, LesionMetrics] = field(default_factory=lambda: MappingProxyType({}))
    overlap_ml: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))


def lesion_label_indices(spec: TaskSpec) -> tuple[int, ...]:
    """Labels of ``spec`` that are lesions (category "Morphologically abnormal structure")."""
    return tuple(
        label.index for label in spec.labels if label.category == MORPHOLOGICALLY_ABNORMAL_STRUCTURE
    )


def evaluate_case(
    pred: np.ndarray,
    truth: np.ndarray,
    affine: np.ndarray,
    spec: TaskSpec,
    *,
    lesion_map: np.ndarray | None = None,
    hd_percentile: float = 95.0,
) -> CaseMetrics:
    """Score a label map ``pred`` against ``truth`` (same shape, label indices of
    ``spec``) on the grid of ``affine`` (index -> LPS mm).

    Sigmoid task: ``pred`` is the bool ``(len(labels), slice, row, column)`` per-label
    mask and ``truth`` the tissue label map (``(slice, row, column)``, values of
    ``spec.tissue_classes``) or already the per-label region masks; every label is
    scored as its region."""
    pred_masks, truth_masks = _label_masks(pred, truth, spec)
    aff = validate_affine(affine)
    voxel_ml = voxel_volume_ml(aff)
    lesion_labels = set(lesion_label_indices(spec))
    dices: dict[str, float] = {}
    hds: dict[str, float] = {}
    vp: dict[str, float] = {}
    vt: dict[str, float] = {}
    overlap: dict[str, float] = {}
    lesions: dict[str, LesionMetrics] = {}
    for number, label in enumerate(spec.labels):
        if spec.is_sigmoid:
            pm, tm = pred_masks[number], truth_masks[number]
        else:  # one label at a time: no stack of full-size masks
            pm, tm = pred_masks == label.index, truth_masks == label.index
        dices[label.name] = dice(pm, tm)
        hds[label.name] = hausdorff_distance(pm, tm, aff, percentile=hd_percentile)
        vp[label.name] = float(pm.sum()) * voxel_ml
        vt[label.name] = float(tm.sum()) * voxel_ml
        overlap[label.name] = float(np.logical_and(pm, tm).sum()) * voxel_ml
        if label.index in lesion_labels:
            lesions[label.name] = lesion_metrics(pm, tm, aff, lesion_map=lesion_map)
    return CaseMetrics(
        dice=MappingProxyType(dices),
        hd95_mm=MappingProxyType(hds),
        volume_ml_pred=MappingProxyType(vp),
        volume_ml_truth=MappingProxyType(vt),
        lesions=MappingProxyType(lesions),
        overlap_ml=MappingProxyType(overlap),
    )


def _label_masks(
    pred: np.ndarray, truth: np.ndarray, spec: TaskSpec
) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid task: boolean ``(len(labels), slice, row, column)`` prediction and truth
    per label; softmax task: the two checked label maps."""
    p = np.asarray(pred)
    t = np.asarray(truth)
    if not spec.is_sigmoid:
        if p.shape != t.shape or p.ndim != 3:
            raise InputError(f"need two 3-D label maps of one shape, got {p.shape} and {t.shape}")
        return p, t
    count = len(spec.labels)
    if p.ndim != 4 or p.shape[0] != count:
        raise InputError(
            f"task {spec.name} has overlapping labels: need a ({count}, slice, row, column) "
            f"prediction, got shape {p.shape}"
        )
    if t.ndim == 3:
        if p.shape[1:] != t.shape:
            raise InputError(f"prediction grid {p.shape[1:]} differs from truth {t.shape}")
        if t.size and (int(t.min()) < 0 or int(t.max()) >= spec.training_classes):
            raise InputError(f"truth holds values outside the tissue classes of {spec.name}")
        truth_masks = region_masks(spec, t)
    elif t.shape == p.shape:
        truth_masks = t.astype(bool)
    else:
        raise InputError(f"truth shape {t.shape} fits neither a tissue map nor {p.shape}")
    return p.astype(bool), truth_masks


@dataclass(frozen=True, slots=True)
class Stat:
    """Summary of one metric over cases (``n`` finite values; ``infinite`` left out and
    counted)."""

    mean: float
    std: float
    minimum: float
    maximum: float
    n: int
    infinite: int = 0


def _stat(values: Sequence[float]) -> Stat:
    finite = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    infinite = len(values) - int(finite.size)
    if finite.size == 0:
        return Stat(math.nan, math.nan, math.nan, math.nan, 0, infinite)
    return Stat(
        float(finite.mean()),
        float(finite.std()),
        float(finite.min()),
        float(finite.max()),
        int(finite.size),
        infinite,
    )


@dataclass(frozen=True, slots=True)
class EvaluationSummary:
    """Aggregate of :class:`CaseMetrics` over cases, keyed by label name (see
    :func:`summarize` for what each figure is over)."""

    cases: int
    dice: Mapping[str, Stat]
    pooled_dice: Mapping[str, float]
    hd95_mm: Mapping[str, Stat]
    small_lesion_dice: Mapping[str, Stat]
    detection_rate: Mapping[str, float]
    small_detection_rate: Mapping[str, float]
    false_positives_per_case: Mapping[str, float]
    lesions_per_bin: Mapping[str, Mapping[LesionSizeBin, int]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    recall: Mapping[str, Mapping[LesionSizeBin, float]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    empty_truth_cases: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    empty_truth_false_positives: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType({})
    )
    #: 95 % bootstrap intervals, keyed by the :meth:`as_metrics` key of the figure
    intervals: Mapping[str, Interval] = field(default_factory=lambda: MappingProxyType({}))
    #: Dice per case over every case, empty-truth ones included (1.0 when the label is
    #: neither in the truth nor predicted, 0.0 when only predicted): what the site gate
    #: compares, where a hallucinated lesion must count against a candidate
    dice_all_cases: Mapping[str, Stat] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.cases < 1:
            raise InputError("a summary covers at least one case")
        if set(self.hd95_mm) != set(self.dice):
            raise InputError("dice and hd95_mm must cover the same labels")

    def as_metrics(self) -> dict[str, float]:
        """Flat, finite ``{name: value}`` for a model card's ``metrics`` (undefined
        figures, e.g. a recall without lesions, are left out)."""
        out: dict[str, float] = {"cases": float(self.cases)}
        for name, stat in self.dice.items():
            out[f"dice_{_key(name)}"] = stat.mean
            out[f"dice_{_key(name)}_min"] = stat.minimum
            out[f"dice_cases_{_key(name)}"] = float(stat.n)
        for name, value in self.pooled_dice.items():
            out[f"dice_pooled_{_key(name)}"] = value
        for name, stat in self.hd95_mm.items():
            out[f"hd95_mm_{_key(name)}"] = stat.mean
            out[f"hd95_finite_cases_{_key(name)}"] = float(stat.n)
            out[f"hd95_inf_cases_{_key(name)}"] = float(stat.infinite)
        for name, stat in self.small_lesion_dice.items():
            out[f"small_lesion_dice_{_key(name)}"] = stat.mean
        for name, rate in self.detection_rate.items():
            out[f"detection_rate_{_key(name)}"] = rate
        for name, rate in self.small_detection_rate.items():
            out[f"small_detection_rate_{_key(name)}"] = rate
        for name, fp in self.false_positives_per_case.items():
            out[f"false_positives_per_case_{_key(name)}"] = fp
        for name, counts in self.lesions_per_bin.items():
            for size_bin, count in counts.items():
                out[f"lesions_{size_bin}_{_key(name)}"] = float(count)
        for name, rates in self.recall.items():
            for size_bin, rate in rates.items():
                out[f"recall_{size_bin}_{_key(name)}"] = rate
        for name, count in self.empty_truth_cases.items():
            out[f"empty_truth_cases_{_key(name)}"] = float(count)
        for name, count in self.empty_truth_false_positives.items():
            out[f"empty_truth_false_positives_{_key(name)}"] = float(count)
        for key, interval in self.intervals.items():
            out[f"{key}_ci95_low"] = interval.low
            out[f"{key}_ci95_high"] = interval.high
        return {k: float(v) for k, v in out.items() if math.isfinite(v)}

    def interval(self, key: str) -> Interval | None:
        """The interval of the figure with card key ``key`` (None without one)."""
        return self.intervals.get(key)

    def format_table(self) -> str:
        """A human-readable table: one line per label (Dice, HD95), then one per lesion
        label and size bin (recall), with 95 % intervals in brackets."""
        lines = [
            f"{self.cases} cases; [95 % interval: percentile bootstrap over cases]",
            f"{'label':<16} {'Dice mean [95 % CI]':>24} {'n':>3} {'min':>6} {'pooled':>6} "
            f"{'HD95 mm (finite) [95 % CI]':>28} {'inf':>4}",
        ]
        for name, stat in self.dice.items():
            key = _key(name)
            hd = self.hd95_mm[name]
            lines.append(
                f"{name:<16} {_with_ci(stat.mean, self.interval(f'dice_{key}'), 3):>24} "
                f"{stat.n:>3} {stat.minimum:6.3f} {self.pooled_dice.get(name, math.nan):6.3f} "
                f"{_with_ci(hd.mean, self.interval(f'hd95_mm_{key}'), 2):>28} {hd.infinite:>4}"
            )
        if self.recall:
            lines.append(
                f"{'lesion label':<16} {'size bin':<10} {'lesions':>7} "
                f"{'recall [95 % CI]':>24} {'bin Dice':>8}"
            )
        for name, rates in self.recall.items():
            key = _key(name)
            for size_bin, rate in rates.items():
                dice_text = (
                    f"{self.small_lesion_dice[name].mean:8.3f}"
                    if size_bin is LesionSizeBin.SMALL and self.small_lesion_dice[name].n
                    else f"{'-':>8}"
                )
                lines.append(
                    f"{name:<16} {size_bin.description:<10} "
                    f"{self.lesions_per_bin[name][size_bin]:>7} "
                    f"{_with_ci(rate, self.interval(f'recall_{size_bin}_{key}'), 3):>24} "
                    f"{dice_text}"
                )
            fp = _with_ci(
                self.false_positives_per_case[name],
                self.interval(f"false_positives_per_case_{key}"),
                2,
            )
            lines.append(
                f"{name:<16} false-positive components per case {fp}; "
                f"empty-truth cases {self.empty_truth_cases[name]} "
                f"(their false-positive components: {self.empty_truth_false_positives[name]})"
            )
        return "\n".join(lines)


def _with_ci(value: float, interval: Interval | None, digits: int) -> str:
    if not math.isfinite(value):
        return "-"
    text = f"{value:.{digits}f}"
    if interval is not None and math.isfinite(interval.low):
        text += f" [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"
    return text


def _key(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower())


def summarize(
    cases: Sequence[CaseMetrics],
    *,
    seed: int = BOOTSTRAP_SEED,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> EvaluationSummary:
    """Figures per label over ``cases``, each with a 95 % percentile-bootstrap interval
    over cases (:mod:`models.intervals`; ``seed`` and ``resamples`` of the bootstrap).

    - **Dice**: mean / std / min / max per case. For a lesion label the mean is over the
      cases whose truth has the label (an empty truth would score 1.0 or 0.0 by luck);
      the empty-truth cases are counted apart with their false-positive components.
    - **Pooled Dice**: all cases' voxels together.
    - **HD95**: mean over the cases where it is finite (both masks non-empty); the cases
      where it is infinite (the label missed or hallucinated) are counted, never averaged
      away; cases where both masks are empty have no distance and are in neither.
    - **Lesions**: recall (detected / truth lesions) per :class:`LesionSizeBin` and over
      all sizes, pooled over cases; false-positive components per case (over all cases);
      small-lesion Dice, the mean over the cases with a small lesion of their pooled
      small-lesion Dice.
    """
    if not cases:
        raise InputError("nothing to summarise")
    count = len(cases)
    names = list(cases[0].dice)
    lesion_names = list(cases[0].lesions)
    if any(set(c.dice) != set(names) or set(c.lesions) != set(lesion_names) for c in cases):
        raise InputError("every case must be scored on the same labels")
    indices = bootstrap_indices(count, seed=seed, resamples=resamples)
    ones = np.ones(count)
    intervals: dict[str, Interval] = {}

    def figure(key: str, numerator: np.ndarray, denominator: np.ndarray) -> float:
        intervals[key] = ratio_interval(numerator, denominator, indices)
        return intervals[key].value

    dice_stats: dict[str, Stat] = {}
    dice_all: dict[str, Stat] = {}
    hd_stats: dict[str, Stat] = {}
    pooled: dict[str, float] = {}
    for name in names:
        key = _key(name)
        d = np.asarray([c.dice[name] for c in cases], dtype=np.float64)
        vp = np.asarray([c.volume_ml_pred[name] for c in cases], dtype=np.float64)
        vt = np.asarray([c.volume_ml_truth[name] for c in cases], dtype=np.float64)
        ov = np.asarray([c.overlap_ml.get(name, 0.0) for c in cases], dtype=np.float64)
        hd = np.asarray([c.hd95_mm[name] for c in cases], dtype=np.float64)
        with_truth = vt > 0 if name in lesion_names else np.ones(count, dtype=bool)
        dice_stats[name] = _stat(d[with_truth].tolist())
        dice_all[name] = _stat(d.tolist())
        figure(f"dice_{key}", np.where(with_truth, d, 0.0), with_truth.astype(np.float64))
        both = float((vp + vt).sum())
        pooled[name] = 2.0 * float(ov.sum()) / both if both > 0 else 1.0
        figure(f"dice_pooled_{key}", 2.0 * ov, vp + vt)
        scored = (vp > 0) | (vt > 0)
        hd_stats[name] = _stat(hd[scored].tolist())
        finite = scored & np.isfinite(hd)
        figure(f"hd95_mm_{key}", np.where(finite, hd, 0.0), finite.astype(np.float64))

    small: dict[str, Stat] = {}
    detection: dict[str, float] = {}
    small_detection: dict[str, float] = {}
    false_pos: dict[str, float] = {}
    per_bin: dict[str, Mapping[LesionSizeBin, int]] = {}
    recall: dict[str, Mapping[LesionSizeBin, float]] = {}
    empty: dict[str, int] = {}
    empty_fp: dict[str, int] = {}
    for name in lesion_names:
        key = _key(name)
        found = [c.lesions[name] for c in cases]
        lesions = np.asarray([m.lesions for m in found], dtype=np.float64)
        detected = np.asarray([m.detected for m in found], dtype=np.float64)
        detection[name] = figure(f"detection_rate_{key}", detected, lesions)
        bins: dict[LesionSizeBin, int] = {}
        rates: dict[LesionSizeBin, float] = {}
        for size_bin in LesionSizeBin:
            counts = np.asarray([m.in_bin(size_bin) for m in found], dtype=np.float64)
            bins[size_bin] = int(counts[:, 0].sum())
            rates[size_bin] = figure(f"recall_{size_bin}_{key}", counts[:, 1], counts[:, 0])
        per_bin[name] = MappingProxyType(bins)
        recall[name] = MappingProxyType(rates)
        small_detection[name] = rates[LesionSizeBin.SMALL]
        fp = np.asarray([m.false_positive_components for m in found], dtype=np.float64)
        false_pos[name] = figure(f"false_positives_per_case_{key}", fp, ones)
        small_values = [m.small_lesion_dice for m in found]
        has_small = np.asarray([v is not None for v in small_values])
        small[name] = _stat([v for v in small_values if v is not None])
        figure(
            f"small_lesion_dice_{key}",
            np.asarray([v if v is not None else 0.0 for v in small_values], dtype=np.float64),
            has_small.astype(np.float64),
        )
        no_lesion = lesions == 0
        empty[name] = int(no_lesion.sum())
        empty_fp[name] = int(fp[no_lesion].sum())
    return EvaluationSummary(
        cases=count,
        dice=MappingProxyType(dice_stats),
        pooled_dice=MappingProxyType(pooled),
        hd95_mm=MappingProxyType(hd_stats),
        small_lesion_dice=MappingProxyType(small),
        detection_rate=MappingProxyType(detection),
        small_detection_rate=MappingProxyType(small_detection),
        false_positives_per_case=MappingProxyType(false_pos),
        lesions_per_bin=MappingProxyType(per_bin),
        recall=MappingProxyType(recall),
        empty_truth_cases=MappingProxyType(empty),
        empty_truth_false_positives=MappingProxyType(empty_fp),
        intervals=MappingProxyType(intervals),
        dice_all_cases=MappingProxyType(dice_all),
    )
