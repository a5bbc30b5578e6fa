"""A reusable local training loop (used for the shipped demo weights and, per site, by
the federation's local training rounds).

:func:`train` takes a network, a :class:`TaskSpec`, cases in the boundary format
(:class:`TrainingCase`: ``(slice, row, column)`` image, label map, LPS affine) and a
:class:`TrainConfig`:

1. every case is pre-processed **once** with :func:`models.transforms.build_preprocess`
   (reorient to RAS, resample to the task spacing, optionally crop to the body/head,
   normalise),
   padded to at least one patch, and kept as tensors together with the voxel indices of
   each class (background subsampled);
2. each step draws ``batch_size`` patches: a case uniformly at random, a class with the
   configured ratios (``class_ratios``, or ``1 - pos_fraction`` for background and
   ``pos_fraction`` shared by the labels: the idea of MONAI's
   ``RandCropByPosNegLabeld``/``RandCropByLabelClassesd``, but with the indices cached so
   that sampling costs nothing next to the network), a voxel of that class as patch
   centre, plus mild intensity jitter;
3. loss is MONAI ``DiceCELoss`` (softmax, one-hot targets), optimiser AdamW with a
   polynomial learning-rate decay.

Everything random comes from ``config.seed`` (numpy ``Generator`` for sampling,
``torch.manual_seed`` for the network's own randomness), so two runs with the same seed,
model initialisation and cases give the same weights on the same machine. Thread counts
(``torch.set_num_threads``) are the caller's business.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn

from .errors import InputError, ModelsError
from .inference import resolve_device
from .postprocess import label_components
from .tasks import MORPHOLOGICALLY_ABNORMAL_STRUCTURE, TaskSpec
from .transforms import IMAGE_KEY, LABEL_KEY, build_preprocess, make_sample

#: Background voxel indices kept per case for sampling negative patches.
_MAX_BACKGROUND_INDICES = 200_000


class TrainingError(ModelsError):
    """Training could not run (bad cases, bad config)."""


@dataclass(frozen=True, slots=True, eq=False)
class TrainingCase:
    """One labelled case in the boundary format: ``image`` ``(slice, row, column)`` or
    ``(C, slice, row, column)``, ``labels`` uint8 ``(slice, row, column)`` with the
    task's label indices, ``affine`` index -> LPS mm."""

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """How to train. ``steps`` optimiser steps of ``batch_size`` patches (``epochs`` is
    not used: with random patches a step count is the honest unit).

    ``pos_fraction``: share of patches centred on a labelled voxel (split evenly over the
    labels) unless ``class_ratios`` (background first, one per class) is given.
    ``patch_size`` defaults to the task's. ``device`` ``None`` means CUDA if available.
    ``crop_foreground`` must match inference (:func:`models.inference.segment` does not
    crop by default): for MR the z-score statistics depend on the crop.
    """

    steps: int = 500
    batch_size: int = 2
    lr: float = 2e-3
    weight_decay: float = 1e-5
    lr_power: float = 0.9
    pos_fraction: float = 0.67
    class_ratios: tuple[float, ...] | None = None
    patch_size: tuple[int, int, int] | None = None
    intensity_jitter: float = 0.1
    crop_foreground: bool = False
    balance_lesions: bool = False
    seed: int = 0
    device: str | None = None
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1:
            raise TrainingError("need steps >= 0 and batch_size >= 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise TrainingError("lr must be a finite number > 0")
        if not 0.0 <= self.pos_fraction <= 1.0:
            raise TrainingError("pos_fraction must be in [0, 1]")
        if self.class_ratios is not None:
            ratios = tuple(float(r) for r in self.class_ratios)
            if any(r < 0 or not math.isfinite(r) for r in ratios) or sum(ratios) <= 0:
                raise TrainingError("class_ratios must be >= 0 with a positive sum")
            object.__setattr__(self, "class_ratios", ratios)
        if self.patch_size is not None:
            patch = tuple(int(p) for p in self.patch_size)
            if len(patch) != 3 or min(patch) < 1:
                raise TrainingError("patch_size must be three positive integers")
            object.__setattr__(self, "patch_size", patch)
        if self.intensity_jitter < 0:
            raise TrainingError("intensity_jitter must be >= 0")


@dataclass(frozen=True, slots=True)
class StepInfo:
    """What ``on_step`` receives after each optimiser step."""

    step: int  # 1-based
    steps: int
    loss: float
    lr: float
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class TrainReport:
    steps: int
    losses: tuple[float, ...]
    seconds: float
    preprocess_seconds: float
    cases: int
    patches: int
    seed: int
    device: str
    extra: Mapping[str, float] = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        """Mean loss over the last tenth of the steps (at least one step)."""
        if not self.losses:
            return math.nan
        tail = max(1, len(self.losses) // 10)
        return float(np.mean(self.losses[-tail:]))


@dataclass(slots=True)
class PreparedCase:
    image: torch.Tensor  # (C, X, Y, Z) float32
    label: torch.Tensor  # (1, X, Y, Z) uint8
    indices: list[np.ndarray]  # flat voxel indices per class (0 = background)
    #: per class: component boundaries into ``indices[cls]`` (sorted by component), or
    #: ``None`` when the class is sampled voxel-uniformly
    groups: list[np.ndarray | None] = field(default_factory=list)


def _pad_to(
    image: torch.Tensor, label: torch.Tensor, patch: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = image.shape[1:]
    pads: list[int] = []
    for size, p in reversed(list(zip(shape, patch, strict=True))):
        missing = max(0, int(p) - int(size))
        pads += [missing // 2, missing - missing // 2]
    if not any(pads):
        return image, label
    fill = float(image.min())
    image = torch.nn.functional.pad(image, pads, mode="constant", value=fill)
    label = torch.nn.functional.pad(label, pads, mode="constant", value=0)
    return image, label


def prepare_cases(
    spec: TaskSpec,
    cases: Sequence[TrainingCase],
    *,
    patch_size: Sequence[int] | None = None,
    crop_foreground: bool = False,
    seed: int = 0,
    balance_lesions: bool = False,
) -> list[PreparedCase]:
    """Pre-process every case once (see the module docstring); the result is what the
    sampler draws patches from. ``balance_lesions`` groups each lesion class's voxels by
    connected component (26-connectivity) for lesion-balanced sampling."""
    if not cases:
        raise TrainingError("no training cases")
    patch = tuple(patch_size) if patch_size is not None else spec.patch_size
    rng = np.random.default_rng([seed, 7])
    lesion_classes = {
        label.index for label in spec.labels if label.category == MORPHOLOGICALLY_ABNORMAL_STRUCTURE
    }
    out: list[PreparedCase] = []
    for number, case in enumerate(cases):
        sample = make_sample(case.image, case.affine, spec, label=case.labels)
        transform = build_preprocess(spec, with_label=True, crop_foreground=crop_foreground)
        try:
            data = transform(sample)
        except RuntimeError as exc:
            raise TrainingError(f"pre-processing training case {number} failed: {exc}") from exc
        image = torch.as_tensor(data[IMAGE_KEY]).float().contiguous().clone()
        label = torch.as_tensor(data[LABEL_KEY]).round().to(torch.uint8).contiguous().clone()
        if int(label.max()) > len(spec.labels) or int(label.min()) < 0:
            raise TrainingError(f"training case {number} has labels outside the task's")
        image, label = _pad_to(image, label, patch)
        flat = label[0].reshape(-1).numpy()
        indices: list[np.ndarray] = []
        groups: list[np.ndarray | None] = []
        for cls in range(spec.num_classes):
            found = np.flatnonzero(flat == cls)
            if cls == 0 and found.size > _MAX_BACKGROUND_INDICES:
                found = np.sort(rng.choice(found, _MAX_BACKGROUND_INDICES, replace=False))
            bounds: np.ndarray | None = None
            if balance_lesions and cls in lesion_classes and found.size:
                found, bounds = _group_by_component(label[0].numpy() == cls, found)
            indices.append(found)
            groups.append(bounds)
        out.append(PreparedCase(image=image, label=label, indices=indices, groups=groups))
    return out


def _group_by_component(mask: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``found`` (flat indices of ``mask``) sorted by connected component, and the
    component boundaries: component ``k`` is ``found[bounds[k]:bounds[k + 1]]``."""
    components, count = label_components(mask)
    ids = components.reshape(-1)[found]
    order = np.argsort(ids, kind="stable")
    bounds = np.searchsorted(ids[order], np.arange(1, count + 2))
    return found[order], bounds.astype(np.int64)


def _class_ratios(spec: TaskSpec, config: TrainConfig) -> np.ndarray:
    if config.class_ratios is not None:
        if len(config.class_ratios) != spec.num_classes:
            raise TrainingError(
                f"class_ratios needs {spec.num_classes} values (background first), "
                f"got {len(config.class_ratios)}"
            )
        ratios = np.asarray(config.class_ratios, dtype=np.float64)
    else:
        share = config.pos_fraction / len(spec.labels)
        ratios = np.asarray([1.0 - config.pos_fraction] + [share] * len(spec.labels))
    return ratios / ratios.sum()


def _sample_patch(
    case: PreparedCase,
    ratios: np.ndarray,
    patch: Sequence[int],
    rng: np.random.Generator,
    jitter: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = case.label.shape[1:]
    available = np.asarray([idx.size > 0 for idx in case.indices], dtype=np.float64)
    weights = ratios * available
    if weights.sum() <= 0:
        centre = [int(rng.integers(0, s)) for s in shape]
    else:
        cls = int(rng.choice(len(weights), p=weights / weights.sum()))
        bounds = case.groups[cls] if case.groups else None
        if bounds is not None:
            k = int(rng.integers(0, bounds.size - 1))
            pick = int(rng.integers(int(bounds[k]), int(bounds[k + 1])))
        else:
            pick = int(rng.integers(0, case.indices[cls].size))
        flat = int(case.indices[cls][pick])
        centre = [int(v) for v in np.unravel_index(flat, tuple(shape))]
    slices = []
    for c, size, p in zip(centre, shape, patch, strict=True):
        start = min(max(c - p // 2, 0), int(size) - p)
        slices.append(slice(start, start + p))
    image = case.image[:, slices[0], slices[1], slices[2]]
    label = case.label[:, slices[0], slices[1], slices[2]]
    if jitter > 0:
        if rng.random() < 0.5:
            image = image * float(1.0 + rng.uniform(-jitter, jitter))
        if rng.random() < 0.5:
            image = image + float(rng.uniform(-jitter, jitter))
    return image, label


def train(
    model: nn.Module,
    spec: TaskSpec,
    cases: Sequence[TrainingCase],
    config: TrainConfig,
    *,
    on_step: Callable[[StepInfo], None] | None = None,
    prepared: Sequence[PreparedCase] | None = None,
) -> TrainReport:
    """Train ``model`` in place on ``cases`` for ``config.steps`` steps; returns the loss
    per step. ``prepared`` (from :func:`prepare_cases`) skips pre-processing, e.g. when
    a site trains several rounds on the same cases."""
    device = resolve_device(config.device)
    patch = config.patch_size if config.patch_size is not None else spec.patch_size
    start = time.perf_counter()
    cached = (
        list(prepared)
        if prepared is not None
        else prepare_cases(
            spec,
            cases,
            patch_size=patch,
            crop_foreground=config.crop_foreground,
            seed=config.seed,
            balance_lesions=config.balance_lesions,
        )
    )
    if not cached:
        raise TrainingError("no training cases")
    for item in cached:
        if any(int(s) < p for s, p in zip(item.image.shape[1:], patch, strict=True)):
            raise InputError("a prepared case is smaller than the patch size")
    preprocess_s = time.perf_counter() - start

    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 1])
    ratios = _class_ratios(spec, config)
    model.to(device)
    model.train()
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    losses: list[float] = []
    mark = time.perf_counter()
    for step in range(config.steps):
        lr = config.lr * (1.0 - step / max(config.steps, 1)) ** config.lr_power
        for group in optimiser.param_groups:
            group["lr"] = lr
        images, labels = [], []
        for _ in range(config.batch_size):
            case = cached[int(rng.integers(0, len(cached)))]
            image, label = _sample_patch(case, ratios, patch, rng, config.intensity_jitter)
            images.append(image)
            labels.append(label)
        x = torch.stack(images).to(device)
        y = torch.stack(labels).long().to(device)
        optimiser.zero_grad(set_to_none=True)
        logits = model(x)
        loss = loss_fn(logits, y)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {loss.item()} at step {step + 1}")
        loss.backward()
        optimiser.step()
        value = float(loss.item())
        losses.append(value)
        if on_step is not None:
            on_step(StepInfo(step + 1, config.steps, value, lr, time.perf_counter() - mark))
    model.eval()
    return TrainReport(
        steps=config.steps,
        losses=tuple(losses),
        seconds=time.perf_counter() - start,
        preprocess_seconds=preprocess_s,
        cases=len(cached),
        patches=config.steps * config.batch_size,
        seed=config.seed,
        device=str(device),
    )


def fine_tune(
    model: nn.Module,
    spec: TaskSpec,
    cases: Sequence[TrainingCase],
    config: TrainConfig,
    *,
    initial_state: Mapping[str, torch.Tensor],
    on_step: Callable[[StepInfo], None] | None = None,
    prepared: Sequence[PreparedCase] | None = None,
) -> TrainReport:
    """:func:`train` starting from ``initial_state`` (loaded with ``strict=True``)."""
    try:
        model.load_state_dict(dict(initial_state), strict=True)
    except RuntimeError as exc:
        raise TrainingError(f"the starting weights do not fit the network: {exc}") from exc
    return train(model, spec, cases, config, on_step=on_step, prepared=prepared)
