"""Dice of the shipped models on the real labelled cases (issue 3), with no threshold.

For each selected dataset of :data:`appliance.tools.real_cases.DATASETS` the cases are loaded,
segmented through the clinical inference path
(:func:`models.card_inference.segment_with_card`: the task's pipeline, or an imported
bundle's own, post-processing included) with the task's bundle from a model registry (the highest
version, as :func:`appliance.site_models.registry.register_shipped` activates on first start),
and scored with :mod:`models.evaluation` on the labels the case has truth for:

- Dice per label (1.0 only when truth and prediction are both empty);
- HD95 in mm (on the image grid, through its affine) where both masks are non-empty;
- voxel counts and volumes of truth and prediction.

The result (:class:`RealEvaluation`) renders as a text table, JSON, and the Markdown page
``docs/results/real_data_evaluation.md``. The cases are evaluation only: nothing here
trains, and no number is compared with a threshold.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from appliance.errors import RealDataError, RealEvaluationError
from appliance.tools.real_cases import DATASETS, RealCase
from models.tasks import TaskName, get_task


class SkipReason(StrEnum):
    MISSING = "missing"  # the dataset's folder is not under the data root
    FAILED = "failed"  # it is there but could not be loaded


@dataclass(frozen=True, slots=True)
class ModelRef:
    """Which model made a prediction: name, version, weights sha256, federated round."""

    task: str
    name: str
    version: str
    weights_sha256: str
    federated_round: int | None

    @property
    def short(self) -> str:
        return f"{self.name}/{self.version}/{self.weights_sha256[:12]}"


@dataclass(frozen=True, slots=True)
class LabelResult:
    """One evaluated label of one case. ``hd95_mm`` is None unless both masks are non-empty."""

    name: str
    dice: float
    hd95_mm: float | None
    truth_voxels: int
    predicted_voxels: int
    truth_ml: float
    predicted_ml: float


@dataclass(frozen=True, slots=True)
class CaseResult:
    dataset: str
    case: str
    task: str
    channel: str
    model: ModelRef
    shape: tuple[int, int, int]
    spacing_mm: tuple[float, float, float]
    labels: tuple[LabelResult, ...]
    truth: str
    caveat: str
    seconds: float

    @property
    def grid(self) -> str:
        s, r, c = self.shape
        ds, dr, dc = self.spacing_mm
        return f"{s}x{r}x{c} @ {ds:.3g}x{dr:.3g}x{dc:.3g} mm"


@dataclass(frozen=True, slots=True)
class SkippedDataset:
    key: str
    reason: SkipReason
    detail: str


@dataclass(frozen=True, slots=True)
class RealEvaluation:
    """Everything one run produced, plus how it was made."""

    results: tuple[CaseResult, ...]
    skipped: tuple[SkippedDataset, ...]
    models: tuple[ModelRef, ...]
    data_root: str
    registry_root: str
    device: str
    command: str
    finished_at: str  # ISO 8601, UTC

    @property
    def failed(self) -> tuple[SkippedDataset, ...]:
        return tuple(s for s in self.skipped if s.reason is SkipReason.FAILED)

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "finished_at": self.finished_at,
            "data_root": self.data_root,
            "registry_root": self.registry_root,
            "device": self.device,
            "threshold": None,
            "models": [_model_dict(m) for m in self.models],
            "cases": [
                {
                    "dataset": r.dataset,
                    "case": r.case,
                    "task": r.task,
                    "channel": r.channel,
                    "model": _model_dict(r.model),
                    "shape": list(r.shape),
                    "spacing_mm": [round(v, 4) for v in r.spacing_mm],
                    "truth": r.truth,
                    "caveat": r.caveat,
                    "seconds": round(r.seconds, 2),
                    "labels": [
                        {
                            "name": lr.name,
                            "dice": lr.dice,
                            "hd95_mm": lr.hd95_mm,
                            "truth_voxels": lr.truth_voxels,
                            "predicted_voxels": lr.predicted_voxels,
                            "truth_ml": round(lr.truth_ml, 3),
                            "predicted_ml": round(lr.predicted_ml, 3),
                        }
                        for lr in r.labels
                    ],
                }
                for r in self.results
            ],
            "skipped": [
                {"dataset": s.key, "reason": str(s.reason), "detail": s.detail}
                for s in self.skipped
            ],
        }

    def rows(self) -> list[tuple[str, ...]]:
        """One row per (case, label): the table of :meth:`format_table` and the page."""
        out: list[tuple[str, ...]] = []
        for r in self.results:
            for lr in r.labels:
                out.append(
                    (
                        r.dataset,
                        r.case,
                        r.task,
                        r.channel,
                        r.model.short,
                        lr.name,
                        f"{lr.dice:.3f}",
                        _hd_text(lr),
                        f"{lr.truth_voxels} ({lr.truth_ml:.1f} mL)",
                        f"{lr.predicted_voxels} ({lr.predicted_ml:.1f} mL)",
                        _ratio_text(lr),
                        r.grid,
                    )
                )
        return out

    def format_table(self) -> str:
        rows = [_HEADER, *self.rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(len(_HEADER))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        for s in self.skipped:
            lines.append(f"skipped {s.key}: {s.reason} ({s.detail})")
        return "\n".join(line.rstrip() for line in lines)

    def to_markdown(self) -> str:
        return _markdown(self)


_HEADER = (
    "dataset",
    "case",
    "task",
    "input",
    "model (name/version/sha256)",
    "label",
    "Dice",
    "HD95 mm",
    "truth voxels",
    "predicted voxels",
    "predicted/truth volume",
    "grid (slice x row x column)",
)


def _ratio_text(lr: LabelResult) -> str:
    if lr.truth_voxels == 0:
        return "-"
    return f"{lr.predicted_voxels / lr.truth_voxels:.2f}"


def _hd_text(lr: LabelResult) -> str:
    if lr.hd95_mm is not None:
        return f"{lr.hd95_mm:.1f}"
    if lr.predicted_voxels == 0 and lr.truth_voxels == 0:
        return "- (both empty)"
    return "- (prediction empty)" if lr.predicted_voxels == 0 else "- (truth empty)"


def _model_dict(m: ModelRef) -> dict[str, Any]:
    return {
        "task": m.task,
        "name": m.name,
        "version": m.version,
        "weights_sha256": m.weights_sha256,
        "federated_round": m.federated_round,
    }


def select_datasets(only: Sequence[str] | None) -> tuple[str, ...]:
    """The dataset keys to run: all of :data:`DATASETS` (in their order) or ``only``."""
    if not only:
        return tuple(DATASETS)
    unknown = [k for k in only if k not in DATASETS]
    if unknown:
        raise RealEvaluationError(
            f"unknown dataset {', '.join(unknown)}; known: {', '.join(DATASETS)}"
        )
    return tuple(k for k in DATASETS if k in only)


def score_case(
    case: RealCase, prediction: np.ndarray, model: ModelRef, seconds: float, *, hd95: bool = True
) -> CaseResult:
    """Score ``prediction`` (uint8, the case's grid) on the labels the case has truth for."""
    from models.evaluation import dice, hausdorff_distance

    if prediction.shape != case.labels.shape:
        raise RealEvaluationError(
            f"{case.dataset}/{case.case}: prediction shape {prediction.shape} differs from "
            f"{case.labels.shape}"
        )
    voxel_ml = abs(float(np.linalg.det(case.affine[:3, :3]))) / 1000.0
    results = []
    for name, index in zip(case.label_names, case.label_indices, strict=True):
        pred = prediction == index
        truth = case.labels == index
        n_pred, n_truth = int(pred.sum()), int(truth.sum())
        hd: float | None = None
        if hd95 and n_pred and n_truth:
            value = hausdorff_distance(pred, truth, case.affine, percentile=95.0)
            hd = value if math.isfinite(value) else None
        results.append(
            LabelResult(
                name=name,
                dice=dice(pred, truth),
                hd95_mm=hd,
                truth_voxels=n_truth,
                predicted_voxels=n_pred,
                truth_ml=n_truth * voxel_ml,
                predicted_ml=n_pred * voxel_ml,
            )
        )
    s, r, c = case.image.shape
    return CaseResult(
        dataset=case.dataset,
        case=case.case,
        task=str(case.task),
        channel=case.channel,
        model=model,
        shape=(int(s), int(r), int(c)),
        spacing_mm=case.spacing_mm,
        labels=tuple(results),
        truth=case.truth,
        caveat=case.caveat,
        seconds=seconds,
    )


def evaluate_real(
    data_root: Path,
    registry_root: Path,
    *,
    only: Sequence[str] | None = None,
    device: str | None = None,
    hd95: bool = True,
    command: str = "appliance evaluate-real",
    log: Callable[[str], None] = lambda _line: None,
) -> RealEvaluation:
    """Segment and score every selected real case (module docstring).

    A dataset whose folder is missing is skipped (``missing``) unless ``only`` names it, in
    which case that is an error; one that fails to load is skipped as ``failed`` with the
    reason, and the others still run.
    """
    import datetime as dt

    from models.card_inference import segment_with_card
    from models.inference import resolve_device
    from models.model_card import ModelCard
    from models.registry import ModelRegistry, RegistryError

    root = Path(data_root)
    if not root.is_dir():
        raise RealEvaluationError(f"data root {root} does not exist (pass --data)")
    keys = select_datasets(only)
    registry = ModelRegistry(Path(registry_root))
    dev = resolve_device(device)
    networks: dict[TaskName, tuple[Any, ModelRef, ModelCard]] = {}
    results: list[CaseResult] = []
    skipped: list[SkippedDataset] = []
    for key in keys:
        dataset = DATASETS[key]
        if not dataset.present(root):
            if only:
                raise RealEvaluationError(
                    f"dataset {key}: {root / dataset.folder} does not exist under the data root"
                )
            skipped.append(SkippedDataset(key, SkipReason.MISSING, f"no {dataset.folder}/"))
            log(f"[{key}] skipped: {dataset.folder}/ is not under {root}")
            continue
        if dataset.task not in networks:
            bundle = registry.latest(str(dataset.task))
            if bundle is None:
                raise RealEvaluationError(f"no {dataset.task} model in {registry.root}")
            try:
                network = registry.load_network(bundle, dev)
            except RegistryError as exc:
                raise RealEvaluationError(str(exc)) from exc
            card = bundle.card
            ref = ModelRef(
                str(dataset.task),
                card.name,
                card.version,
                card.weights_sha256,
                card.federated_round,
            )
            networks[dataset.task] = (network, ref, card)
            log(f"[{dataset.task}] model {ref.short}")
        network, ref, card = networks[dataset.task]
        try:
            cases = dataset.load(root)
        except RealDataError as exc:
            skipped.append(SkippedDataset(key, SkipReason.FAILED, str(exc)))
            log(f"[{key}] FAILED to load: {exc}")
            continue
        spec = get_task(dataset.task)
        for case in cases:
            start = time.perf_counter()
            # an imported bundle runs its own pipeline, as in a job
            mask = segment_with_card(network, card, spec, case.image, case.affine, device=dev).mask
            result = score_case(case, mask, ref, time.perf_counter() - start, hd95=hd95)
            results.append(result)
            text = " ".join(f"{lr.name}={lr.dice:.3f}" for lr in result.labels)
            log(f"[{key}] {case.case}: Dice {text} ({result.seconds:.1f}s)")
    return RealEvaluation(
        results=tuple(results),
        skipped=tuple(skipped),
        models=tuple(ref for _, ref, _ in networks.values()),
        data_root=str(data_root),
        registry_root=str(registry_root),
        device=str(dev),
        command=command,
        finished_at=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    )


# -- the Markdown page -------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown(ev: RealEvaluation) -> str:
    lines = [
        "# Shipped models on the real labelled cases",
        "",
        "Issue 3: the Dice of the shipped models on the real labelled cases in "
        "`../shared/data`, **with no threshold**. These cases are evaluation only; they are "
        "never used for training. The shipped weights were trained on synthetic phantoms "
        "only (see their model cards), so low numbers here are expected and are reported "
        "as they are.",
        "",
        f"Generated {ev.finished_at} (UTC) on `{ev.device}` by:",
        "",
        "```",
        ev.command,
        "```",
        "",
        "Run the same command to regenerate this page (it reads whatever bundles the "
        "registry holds; the highest version per task is used, as on first start).",
        "",
        "## Models",
        "",
        "| task | name | version | weights sha256 | federated round |",
        "|---|---|---|---|---|",
    ]
    for m in ev.models:
        rnd = "-" if m.federated_round is None else str(m.federated_round)
        lines.append(f"| {m.task} | {m.name} | {m.version} | `{m.weights_sha256}` | {rnd} |")
    lines += [
        "",
        "## Results",
        "",
        "Inference: `models.inference.segment` with the task's post-processing, on the "
        "image's own grid. Dice per label the case has truth for; HD95 (mm, symmetric 95th "
        "percentile surface distance) only where truth and prediction are both non-empty. "
        "Predicted/truth volume above 1 means over-segmentation, below 1 under-segmentation "
        "(with Dice near 0 and a large ratio, the prediction lies elsewhere). "
        "Grid: voxels and spacing along (slice, row, column).",
        "",
        "| " + " | ".join(_HEADER) + " |",
        "|" + "---|" * len(_HEADER),
    ]
    for row in ev.rows():
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    if ev.skipped:
        lines += ["", "Not evaluated:", ""]
        for s in ev.skipped:
            lines.append(f"- `{s.key}`: {s.reason} - {_cell(s.detail)}")
    lines += ["", "## Datasets and caveats", ""]
    seen: set[str] = set()
    for r in ev.results:
        if r.dataset in seen:
            continue
        seen.add(r.dataset)
        ds = DATASETS[r.dataset]
        lines.append(
            f"- **`{r.dataset}`** (`{ds.folder}/`): {ds.source}. Truth: {r.truth}. "
            f"Caveat: {r.caveat}"
        )
    lines += [
        "",
        "## How the cases are read",
        "",
        "`appliance/tools/real_cases.py` (with `real_readers.py`) turns each dataset into "
        "the boundary format "
        "(`(slice, row, column)` float32 + index -> LPS affine): DICOM through "
        "`dicom_bridge.volume.load_series_volume`, the dcmqi SEG through "
        "`dicom_bridge.seg_reader.read_seg_labelmap`, NIfTI with nibabel (RAS -> LPS), NRRD "
        "with pynrrd (its `space` stated). Label volumes on a grid of their own are moved "
        "onto the image grid only by axis permutations/flips, checked voxel for voxel; "
        "nothing is resampled. 3D-IRCADb's DICOM (no Frame of Reference UID) is rejected by "
        "the clinical loader and read by an evaluation-only lenient reader. "
        "`tests/appliance/tools/test_real_cases.py` checks the orientation on the data: "
        "the liver labels sit on soft-tissue HU on the patient's right with the spine "
        "posterior (the TotalSegmentator spleen on the left; towards +z the 3D-IRCADb liver "
        "shrinks as the lung bases grow), and mirrored labels fail these checks; the dcmqi "
        "SEG and its NRRD agree voxel for voxel; the glioma labels are brighter than their "
        "surroundings where that holds (TCGA-GBM brain1, TCIA, BraTS FLAIR).",
        "",
    ]
    return "\n".join(lines)
