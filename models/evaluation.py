"""Evaluation of label maps against truth: Dice, HD95 (mm) and small-lesion metrics.

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
  connected components of the truth label); each is matched with the predicted
  components that overlap it. A lesion is *detected* when it overlaps a predicted
  component. *Small-lesion Dice* pools the matched voxels of the lesions whose
  equivalent-sphere diameter is below a threshold (default 15 mm):
  ``2 Σ|L∩P_L| / Σ(|L|+|P_L|)``, where ``P_L`` are the predicted components touching
  ``L``. Predicted components touching no truth lesion are false positives.
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
from .postprocess import label_components
from .regions import region_masks
from .tasks import MORPHOLOGICALLY_ABNORMAL_STRUCTURE, TaskSpec

#: Lesions with an equivalent-sphere diameter below this count as small (mm).
SMALL_LESION_DIAMETER_MM = 15.0

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
    """Per-lesion results for one lesion label of one case (see the module docstring)."""

    lesions: int
    detected: int
    small_lesions: int
    small_detected: int
    small_lesion_dice: float | None  # None when the case has no small lesion
    false_positive_components: int
    per_lesion_dice: tuple[float, ...]
    per_lesion_diameter_mm: tuple[float, ...]

    @property
    def detection_rate(self) -> float | None:
        return self.detected / self.lesions if self.lesions else None

    @property
    def small_detection_rate(self) -> float | None:
        return self.small_detected / self.small_lesions if self.small_lesions else None


def lesion_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    affine: np.ndarray,
    *,
    lesion_map: np.ndarray | None = None,
    small_diameter_mm: float = SMALL_LESION_DIAMETER_MM,
    connectivity: int = 26,
) -> LesionMetrics:
    """Per-lesion detection and small-lesion Dice of boolean ``pred`` against ``truth``.

    ``lesion_map`` (e.g. :attr:`models.phantoms.Phantom.lesion_map`) numbers the truth
    lesions; without it they are the connected components of ``truth``.
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
        lmap = np.where(t, lmap, 0).astype(np.int32)
        ids = [int(i) for i in np.unique(lmap) if i != 0]
    else:
        lmap, n = label_components(t, connectivity)
        ids = list(range(1, n + 1))
    pred_cc, n_pred = label_components(p, connectivity)
    touched: set[int] = set()
    dices: list[float] = []
    diameters: list[float] = []
    detected = small = small_detected = 0
    small_inter = small_total = 0
    for lesion_id in ids:
        lesion = lmap == lesion_id
        size = int(lesion.sum())
        diameter = (6.0 * size * voxel_ml * 1000.0 / math.pi) ** (1.0 / 3.0)
        hits = np.unique(pred_cc[lesion])
        hits = hits[hits != 0]
        touched.update(int(h) for h in hits)
        matched = np.isin(pred_cc, hits) if hits.size else np.zeros_like(lesion)
        inter = int(np.logical_and(matched, lesion).sum())
        total = size + int(matched.sum())
        dices.append(2.0 * inter / total if total else 1.0)
        diameters.append(float(diameter))
        found = hits.size > 0
        detected += int(found)
        if diameter < small_diameter_mm:
            small += 1
            small_detected += int(found)
            small_inter += inter
            small_total += total
    return LesionMetrics(
        lesions=len(ids),
        detected=detected,
        small_lesions=small,
        small_detected=small_detected,
        small_lesion_dice=(2.0 * small_inter / small_total) if small_total else None,
        false_positive_components=n_pred - len(touched),
        per_lesion_dice=tuple(dices),
        per_lesion_diameter_mm=tuple(diameters),
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
    small_diameter_mm: float = SMALL_LESION_DIAMETER_MM,
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
            lesions[label.name] = lesion_metrics(
                pm, tm, aff, lesion_map=lesion_map, small_diameter_mm=small_diameter_mm
            )
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
    """Summary of one metric over cases (``n`` finite values; ``infinite`` left out)."""

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
    """Aggregate of :class:`CaseMetrics` over cases, keyed by label name."""

    cases: int
    dice: Mapping[str, Stat]
    pooled_dice: Mapping[str, float]
    hd95_mm: Mapping[str, Stat]
    small_lesion_dice: Mapping[str, Stat]
    detection_rate: Mapping[str, float]
    small_detection_rate: Mapping[str, float]
    false_positives_per_case: Mapping[str, float]

    def as_metrics(self) -> dict[str, float]:
        """Flat, finite ``{name: value}`` for a model card's ``metrics``."""
        out: dict[str, float] = {"cases": float(self.cases)}
        for name, stat in self.dice.items():
            out[f"dice_{_key(name)}"] = stat.mean
            out[f"dice_{_key(name)}_min"] = stat.minimum
        for name, value in self.pooled_dice.items():
            out[f"dice_pooled_{_key(name)}"] = value
        for name, stat in self.hd95_mm.items():
            out[f"hd95_mm_{_key(name)}"] = stat.mean
        for name, stat in self.small_lesion_dice.items():
            out[f"small_lesion_dice_{_key(name)}"] = stat.mean
        for name, rate in self.detection_rate.items():
            out[f"detection_rate_{_key(name)}"] = rate
        for name, rate in self.small_detection_rate.items():
            out[f"small_detection_rate_{_key(name)}"] = rate
        for name, fp in self.false_positives_per_case.items():
            out[f"false_positives_per_case_{_key(name)}"] = fp
        return {k: float(v) for k, v in out.items() if math.isfinite(v)}

    def format_table(self) -> str:
        """A short human-readable table (one line per label)."""
        lines = [
            f"{'label':<16} {'Dice mean':>9} {'min':>6} {'pooled':>6} {'HD95 mm':>8} "
            f"{'small Dice':>10}"
        ]
        for name, stat in self.dice.items():
            hd = self.hd95_mm[name]
            small = self.small_lesion_dice.get(name)
            small_text = f"{small.mean:10.3f}" if small is not None and small.n else f"{'-':>10}"
            lines.append(
                f"{name:<16} {stat.mean:9.3f} {stat.minimum:6.3f} "
                f"{self.pooled_dice.get(name, math.nan):6.3f} {hd.mean:8.2f} {small_text}"
            )
        return "\n".join(lines)


def _key(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower())


def summarize(cases: Sequence[CaseMetrics]) -> EvaluationSummary:
    """Mean / std / min / max per label over ``cases``; lesion counts pooled."""
    if not cases:
        raise InputError("nothing to summarise")
    names = list(cases[0].dice)
    lesion_names = list(cases[0].lesions)
    small: dict[str, Stat] = {}
    detection: dict[str, float] = {}
    small_detection: dict[str, float] = {}
    false_pos: dict[str, float] = {}
    for name in lesion_names:
        found = [c.lesions[name] for c in cases if name in c.lesions]
        small[name] = _stat([m.small_lesion_dice for m in found if m.small_lesion_dice is not None])
        total = sum(m.lesions for m in found)
        small_total = sum(m.small_lesions for m in found)
        detection[name] = sum(m.detected for m in found) / total if total else math.nan
        small_detection[name] = (
            sum(m.small_detected for m in found) / small_total if small_total else math.nan
        )
        false_pos[name] = sum(m.false_positive_components for m in found) / len(found)
    pooled: dict[str, float] = {}
    for name in names:
        both = sum(c.volume_ml_pred[name] + c.volume_ml_truth[name] for c in cases)
        inter = sum(c.overlap_ml.get(name, 0.0) for c in cases)
        pooled[name] = 2.0 * inter / both if both > 0 else 1.0
    return EvaluationSummary(
        cases=len(cases),
        dice=MappingProxyType({n: _stat([c.dice[n] for c in cases]) for n in names}),
        pooled_dice=MappingProxyType(pooled),
        hd95_mm=MappingProxyType({n: _stat([c.hd95_mm[n] for c in cases]) for n in names}),
        small_lesion_dice=MappingProxyType(small),
        detection_rate=MappingProxyType(detection),
        small_detection_rate=MappingProxyType(small_detection),
        false_positives_per_case=MappingProxyType(false_pos),
    )
