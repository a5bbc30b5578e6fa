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
   ``pos_fraction`` shared by the labels - for a sigmoid task by the training label
   map's tissue classes, so patches still centre on labelled voxels: the idea of MONAI's
   ``RandCropByPosNegLabeld``/``RandCropByLabelClassesd``, but with the indices cached so
   that sampling costs nothing next to the network), a voxel of that class as patch
   centre, plus mild intensity jitter;
3. optionally (``augment``) each patch goes through a light, seeded MONAI augmentation
   (:mod:`models.augmentation`: flips, in-plane 90 degree rotations, intensity scale and
   shift, noise), after an optional thin-slab cut (``thin_slab_probability``: a random
   slab of 3 or more slices, the rest of the patch its replicated edges, as inference
   pads a short stack);
4. loss is MONAI ``DiceCELoss``: softmax with one-hot targets for a softmax task; for a
   sigmoid task (:class:`models.tasks.OutputActivation`) sigmoid per channel with the
   region masks as targets (:func:`models.regions.region_targets`: the training label
   map's tissue classes joined into the task's overlapping regions, like MONAI's
   ``ConvertToMultiChannelBasedOnBratsClasses``; the cross-entropy term is then binary
   cross-entropy), plus the FedProx proximal
   term ``(prox_mu / 2) * ||w - w_ref||^2`` when ``prox_mu > 0``; optimiser AdamW (or SGD
   with momentum) with a polynomial learning-rate decay; autocast when ``amp`` and the
   device runs it natively (:mod:`models.precision`: bf16 on a bf16 GPU or a CPU with
   native bf16, fp16 with a grad scaler on other GPUs, else fp32), the loss in fp32;
5. with ``small_lesion_scaling`` each step gets the FedGS factor ``p``
   (:mod:`models.lesion_scaling`), reported per step and applied to the accumulated
   update (:attr:`TrainReport.scaled_update`), see ``docs/training.md``.

Between steps :func:`train` polls ``should_pause`` (it waits while that returns True, so
that inference jobs get the machine) and writes a checkpoint every ``checkpoint_every``
steps; a run started with an existing checkpoint resumes from it.

Everything random comes from ``config.seed`` (numpy ``Generator`` for sampling,
``torch.manual_seed`` for the network's own randomness, a per-step seed for the
augmentation), so two runs with the same seed, model initialisation and cases give the
same weights on the same machine, and so does a run interrupted and resumed from its
checkpoint. Thread counts (``torch.set_num_threads``) are the caller's business.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from monai.losses import DiceCELoss
from torch import nn

from .augmentation import augment_patch, build_patch_augmentation, step_seed
from .blob_loss import blob_dice_loss, false_blob_loss
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint, state_digest
from .errors import InputError, ModelsError
from .inference import resolve_device
from .lesion_scaling import SmallLesionScaling, batch_step_scale
from .postprocess import label_components
from .precision import Precision, PrecisionChoice, PrecisionError, training_precision
from .regions import region_targets
from .tasks import MORPHOLOGICALLY_ABNORMAL_STRUCTURE, TaskSpec
from .training_case import TrainingCase
from .transforms import IMAGE_KEY, LABEL_KEY, build_preprocess, make_sample

#: Background voxel indices kept per case for sampling negative patches.
_MAX_BACKGROUND_INDICES = 200_000


class TrainingError(ModelsError):
    """Training could not run (bad cases, bad config)."""


class OptimizerName(StrEnum):
    """The optimisers :func:`train` can use."""

    ADAMW = "adamw"
    SGD = "sgd"  # with ``TrainConfig.momentum``


__all__ = [
    "CheckpointExtra",
    "OptimizerName",
    "Precision",
    "PreparedCase",
    "SmallLesionScaling",
    "StepInfo",
    "TrainConfig",
    "TrainReport",
    "TrainingCase",
    "TrainingError",
    "fine_tune",
    "prepare_cases",
    "thin_slab",
    "train",
]


@dataclass(frozen=True, slots=True)
class TrainConfig:
    """How to train. ``steps`` optimiser steps of ``batch_size`` patches (``epochs`` is
    not used: with random patches a step count is the honest unit).

    ``pos_fraction``: share of patches centred on a labelled voxel (split evenly over the
    labels) unless ``class_ratios`` (background first, one per class) is given; for a
    sigmoid task the classes are the training label map's tissue classes
    (:attr:`models.tasks.TaskSpec.training_classes` values).
    ``patch_size`` defaults to the task's. ``device`` ``None`` means CUDA if available.
    ``crop_foreground`` must match inference (:func:`models.inference.segment` does not
    crop by default): for MR the z-score statistics depend on the crop.

    ``optimizer``: ``"adamw"`` or ``"sgd"`` (with ``momentum``). ``prox_mu``: FedProx
    proximal weight (0 = off). ``small_lesion_scaling``: FedGS step scaling (``None`` =
    off). ``augment``: MONAI patch augmentation. ``amp``: mixed precision where the
    device runs it natively; ``precision`` (``auto``, ``fp32``, ``bf16``) says which,
    decided at start by :func:`models.precision.training_precision` (``auto``: bf16 on a
    bf16 GPU or a CPU with native bf16, fp16 on other GPUs, else fp32; ``amp=False``
    means fp32).

    ``thin_slab_probability``: per patch, the probability that only a random slab of 3
    to patch-depth slices (along the last axis, superior-inferior: the slice axis of an
    axial series) is kept and the rest of the patch is filled by replicating its edge
    slices, as inference pads a short stack (see :func:`thin_slab`).

    ``blob_loss_weight``: weight of the blob loss (:mod:`models.blob_loss`: a Dice term
    per lesion instance, Kofler et al. 2023) added to Dice + cross-entropy; 0 = off.
    ``false_blob_weight``: weight of the false-blob term (:func:`models.blob_loss.false_blob_loss`:
    the mean probability over each predicted lesion component that touches no lesion);
    0 = off. Softmax tasks only, both.
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
    optimizer: OptimizerName = OptimizerName.ADAMW
    momentum: float = 0.9
    prox_mu: float = 0.0
    small_lesion_scaling: SmallLesionScaling | None = None
    augment: bool = False
    amp: bool = True
    precision: Precision = Precision.AUTO
    thin_slab_probability: float = 0.0
    blob_loss_weight: float = 0.0
    false_blob_weight: float = 0.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "precision", Precision(self.precision))
        except ValueError as exc:
            raise TrainingError(
                f"precision must be one of auto, fp32, bf16, got {self.precision!r}"
            ) from exc
        if self.precision == Precision.FP16:
            raise TrainingError(
                "precision must be one of auto, fp32, bf16 (fp16 is only CUDA's automatic "
                "fallback), got 'fp16'"
            )
        if not self.amp and self.precision == Precision.BF16:
            raise TrainingError("precision bf16 needs amp=True (amp=False trains in fp32)")
        if not (
            math.isfinite(self.thin_slab_probability) and 0.0 <= self.thin_slab_probability <= 1.0
        ):
            raise TrainingError(
                f"thin_slab_probability must be in [0, 1], got {self.thin_slab_probability!r}"
            )
        for key in ("blob_loss_weight", "false_blob_weight"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0.0):
                raise TrainingError(f"{key} must be a finite number >= 0, got {value!r}")
        if self.steps < 0 or self.batch_size < 1:
            raise TrainingError("need steps >= 0 and batch_size >= 1")
        try:
            object.__setattr__(self, "optimizer", OptimizerName(self.optimizer))
        except ValueError as exc:
            allowed = ", ".join(o.value for o in OptimizerName)
            raise TrainingError(
                f"optimizer must be one of {allowed}, got {self.optimizer!r}"
            ) from exc
        if not (math.isfinite(self.momentum) and 0.0 <= self.momentum < 1.0):
            raise TrainingError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not (math.isfinite(self.prox_mu) and self.prox_mu >= 0.0):
            raise TrainingError(f"prox_mu must be a finite number >= 0, got {self.prox_mu!r}")
        if self.small_lesion_scaling is not None and not isinstance(
            self.small_lesion_scaling, SmallLesionScaling
        ):
            raise TrainingError("small_lesion_scaling must be a SmallLesionScaling or None")
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
    #: FedGS factor ``p`` of this step (1.0 without small lesions or scaling)
    scale: float = 1.0


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
    #: FedGS factor ``p`` per step (all 1.0 without ``small_lesion_scaling``)
    step_scales: tuple[float, ...] = ()
    #: seconds spent waiting while ``should_pause`` returned True
    paused_seconds: float = 0.0
    #: the step a checkpoint resumed this run from (0 = started afresh)
    resumed_from_step: int = 0
    #: seconds spent in optimiser steps over the whole run, earlier runs that wrote the
    #: resumed checkpoint included (``seconds`` is this call's wall time only)
    step_seconds_total: float = 0.0
    #: the precision the run trained in (decided at start) and why
    precision: Precision = Precision.FP32
    precision_reason: str = ""
    #: with ``small_lesion_scaling``: sum over steps of ``p_t`` times the parameter change
    #: of step ``t`` (the "accumulated update" FedGS sends), per trainable parameter name,
    #: on the CPU; ``None`` without scaling
    scaled_update: Mapping[str, torch.Tensor] | None = field(default=None, compare=False)

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
    indices: list[np.ndarray]  # flat voxel indices per training class (0 = background)
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
    lesion_classes = set(
        _training_values(
            spec,
            [
                label.index
                for label in spec.labels
                if label.category == MORPHOLOGICALLY_ABNORMAL_STRUCTURE
            ],
        )
    )
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
        if int(label.max()) >= spec.training_classes or int(label.min()) < 0:
            raise TrainingError(f"training case {number} has labels outside the task's")
        image, label = _pad_to(image, label, patch)
        flat = label[0].reshape(-1).numpy()
        indices: list[np.ndarray] = []
        groups: list[np.ndarray | None] = []
        for cls in range(spec.training_classes):
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


def _training_values(spec: TaskSpec, labels: Sequence[int]) -> tuple[int, ...]:
    """The training label map values of ``labels``: the labels themselves (softmax), or
    the tissue classes their regions join (sigmoid)."""
    if not spec.is_sigmoid:
        return tuple(labels)
    return tuple(sorted({v for label in labels for v in spec.regions[label - 1]}))


def _group_by_component(mask: np.ndarray, found: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``found`` (flat indices of ``mask``) sorted by connected component, and the
    component boundaries: component ``k`` is ``found[bounds[k]:bounds[k + 1]]``."""
    components, count = label_components(mask)
    ids = components.reshape(-1)[found]
    order = np.argsort(ids, kind="stable")
    bounds = np.searchsorted(ids[order], np.arange(1, count + 2))
    return found[order], bounds.astype(np.int64)


def _class_ratios(spec: TaskSpec, config: TrainConfig) -> np.ndarray:
    classes = spec.training_classes
    if config.class_ratios is not None:
        if len(config.class_ratios) != classes:
            raise TrainingError(
                f"class_ratios needs {classes} values (background first), "
                f"got {len(config.class_ratios)}"
            )
        ratios = np.asarray(config.class_ratios, dtype=np.float64)
    else:
        share = config.pos_fraction / (classes - 1)
        ratios = np.asarray([1.0 - config.pos_fraction] + [share] * (classes - 1))
    return ratios / ratios.sum()


#: The thinnest slab :func:`thin_slab` keeps (inference takes series of 3 slices or more).
MIN_SLAB_SLICES = 3


def thin_slab(tensor: torch.Tensor, start: int, depth: int) -> torch.Tensor:
    """Keep slices ``start .. start + depth - 1`` of ``tensor``'s last axis and fill the
    rest of that axis's length by replicating the slab's edge slices, with the slab in
    the middle: ``(length - depth) // 2`` copies of its first slice before it, the rest
    copies of its last slice after it. That is what MONAI's sliding window (inference,
    ``padding_mode="replicate"``) does to a stack of ``depth`` slices in a window of
    ``length``, so a thin-slab patch looks like one window over a short series. Works on
    any dtype (images and label maps alike)."""
    length = int(tensor.shape[-1])
    if not (1 <= depth <= length and 0 <= start <= length - depth):
        raise TrainingError(f"a slab of {depth} slices from {start} does not fit in {length}")
    before = (length - depth) // 2
    index = (torch.arange(length) - before).clamp(0, depth - 1) + start
    return tensor.index_select(tensor.dim() - 1, index)


def _sample_patch(
    case: PreparedCase,
    ratios: np.ndarray,
    patch: Sequence[int],
    rng: np.random.Generator,
    jitter: float,
    thin_slab_probability: float = 0.0,
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
    # drawn only when enabled, so that runs without thin slabs sample as before
    if thin_slab_probability > 0 and rng.random() < thin_slab_probability:
        length = int(patch[2])
        depth = int(rng.integers(MIN_SLAB_SLICES, length + 1))
        first = int(rng.integers(0, length - depth + 1))
        # the label's replicated slices get the replicated label: that is what the
        # replicated image shows, and inference crops those slices away anyway
        image, label = thin_slab(image, first, depth), thin_slab(label, first, depth)
    if jitter > 0:
        if rng.random() < 0.5:
            image = image * float(1.0 + rng.uniform(-jitter, jitter))
        if rng.random() < 0.5:
            image = image + float(rng.uniform(-jitter, jitter))
    return image, label


#: How often ``should_pause`` is polled while training is paused.
PAUSE_POLL_S = 0.2

#: Config fields that may differ between a run and the run resuming its checkpoint.
_RESUMABLE_DIFFERENCES = ("device", "log_every")


def _build_optimiser(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == OptimizerName.SGD:
        return torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _reference_parameters(
    model: nn.Module, reference_state: Mapping[str, torch.Tensor] | None, device: torch.device
) -> dict[str, torch.Tensor]:
    """The FedProx anchor ``w_ref`` per trainable parameter (detached, on ``device``):
    from ``reference_state`` where it names the parameter, else (no reference given) the
    model's weights as :func:`train` received them."""
    out: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        source = param if reference_state is None else reference_state.get(name)
        if source is None:
            continue
        if tuple(source.shape) != tuple(param.shape):
            raise TrainingError(
                f"reference_state[{name!r}] has shape {tuple(source.shape)}, "
                f"the network's is {tuple(param.shape)}"
            )
        out[name] = source.detach().to(device=device, dtype=param.dtype).clone()
    if not out:
        raise TrainingError("reference_state names none of the network's trainable parameters")
    return out


def _proximal_term(model: nn.Module, reference: Mapping[str, torch.Tensor]) -> torch.Tensor:
    terms = [
        (param.float() - reference[name].float()).pow(2).sum()
        for name, param in model.named_parameters()
        if name in reference
    ]
    return torch.stack(terms).sum()


def _wait_while_paused(should_pause: Callable[[], bool], poll_s: float) -> float:
    """Sleep while ``should_pause()`` is true; returns the seconds waited."""
    if not should_pause():
        return 0.0
    start = time.perf_counter()
    while True:
        time.sleep(poll_s)
        if not should_pause():
            return time.perf_counter() - start


def _fingerprint(model: nn.Module, config: TrainConfig, cached: Sequence[PreparedCase]) -> str:
    """What must match for a checkpoint to be resumed: the config (but its device), the
    starting weights and the prepared cases' shapes."""
    settings = {k: v for k, v in asdict(config).items() if k not in _RESUMABLE_DIFFERENCES}
    return json.dumps(
        {
            "config": settings,
            "weights": state_digest(model.state_dict()),
            "cases": [list(item.image.shape) for item in cached],
        },
        sort_keys=True,
        default=str,
    )


def _autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class CheckpointExtra(Protocol):
    """More state a caller keeps in :func:`train`'s checkpoint (e.g. the best weights of
    a periodic validation): saved with every checkpoint, restored on resume. The dict
    must hold only what ``torch.load(weights_only=True)`` reads back (tensors, numbers,
    strings, lists, dicts)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass(slots=True)
class _RunState:
    """What a checkpoint restores besides the model and optimiser."""

    step: int = 0
    losses: list[float] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)
    update: dict[str, torch.Tensor] | None = None
    paused_s: float = 0.0
    #: seconds in the step loop, summed over every run that continued this checkpoint
    step_s: float = 0.0


@dataclass(slots=True)
class _Checkpointer:
    """Saves and restores one run's state in its checkpoint file."""

    path: Path
    fingerprint: str
    model: nn.Module
    optimiser: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    rng: np.random.Generator
    device: torch.device
    extra: CheckpointExtra | None = None

    def save(self, state: _RunState) -> None:
        cuda = self.device.type == "cuda"
        update = state.update
        try:
            save_checkpoint(
                self.path,
                {
                    "fingerprint": self.fingerprint,
                    "step": state.step,
                    "model": {k: v.detach().to("cpu") for k, v in self.model.state_dict().items()},
                    "optimiser": self.optimiser.state_dict(),
                    "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                    "numpy_rng": self.rng.bit_generator.state,
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state(self.device) if cuda else None,
                    "losses": list(state.losses),
                    "scales": list(state.scales),
                    "step_seconds": state.step_s,
                    "update": (
                        {k: v.detach().to("cpu") for k, v in update.items()}
                        if update is not None
                        else None
                    ),
                    "extra": self.extra.state_dict() if self.extra is not None else None,
                },
            )
        except CheckpointError as exc:
            raise TrainingError(str(exc)) from exc

    def resume(self, state: _RunState) -> None:
        try:
            payload = load_checkpoint(self.path)
        except CheckpointError as exc:
            raise TrainingError(str(exc)) from exc
        if payload.get("fingerprint") != self.fingerprint:
            raise TrainingError(
                f"the checkpoint {self.path.name} belongs to another training run (different "
                "settings, starting weights or cases); delete it to start afresh"
            )
        try:
            self.model.load_state_dict(payload["model"], strict=True)
            self.optimiser.load_state_dict(payload["optimiser"])
            if self.scaler is not None and payload["scaler"] is not None:
                self.scaler.load_state_dict(payload["scaler"])
            self.rng.bit_generator.state = payload["numpy_rng"]
            torch.set_rng_state(payload["torch_rng"])
            if self.device.type == "cuda" and payload["cuda_rng"] is not None:
                torch.cuda.set_rng_state(payload["cuda_rng"], self.device)
            state.step = int(payload["step"])
            state.losses = [float(v) for v in payload["losses"]]
            state.scales = [float(v) for v in payload["scales"]]
            # absent from checkpoints written before it was recorded
            state.step_s = float(payload.get("step_seconds", 0.0))
            if state.update is not None:
                saved = payload["update"]
                state.update = {k: saved[k].to(self.device) for k in state.update}
            if self.extra is not None and payload.get("extra") is not None:
                self.extra.load_state_dict(payload["extra"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise TrainingError(f"the checkpoint {self.path.name} is incomplete: {exc}") from exc


def _sample_batch(
    cached: Sequence[PreparedCase],
    ratios: np.ndarray,
    patch: Sequence[int],
    rng: np.random.Generator,
    config: TrainConfig,
    augmentation: Any,
    step: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    if augmentation is not None:
        augmentation.set_random_state(seed=step_seed(config.seed, step))
    for _ in range(config.batch_size):
        case = cached[int(rng.integers(0, len(cached)))]
        image, label = _sample_patch(
            case, ratios, patch, rng, config.intensity_jitter, config.thin_slab_probability
        )

        if augmentation is not None:
            image, label = augment_patch(augmentation, image, label)
        images.append(image)
        labels.append(label)
    return torch.stack(images), torch.stack(labels)


def _loss_function(spec: TaskSpec) -> DiceCELoss:
    """Dice + cross-entropy: softmax over one-hot labels, or (sigmoid task) sigmoid per
    channel against the region masks, where the CE term is binary cross-entropy."""
    if spec.is_sigmoid:
        return DiceCELoss(sigmoid=True)
    return DiceCELoss(to_onehot_y=True, softmax=True)


def _blob_classes(spec: TaskSpec, config: TrainConfig) -> tuple[int, ...]:
    """The classes whose instances the blob losses score (none when both are off)."""
    if config.blob_loss_weight == 0 and config.false_blob_weight == 0:
        return ()
    key = "blob_loss_weight" if config.blob_loss_weight else "false_blob_weight"
    if spec.is_sigmoid:
        raise TrainingError(
            f"{key}: task {spec.name} has overlapping (sigmoid) regions; the blob "
            "losses are for softmax tasks"
        )
    classes = tuple(
        label.index for label in spec.labels if label.category == MORPHOLOGICALLY_ABNORMAL_STRUCTURE
    )
    if not classes:
        raise TrainingError(f"{key}: task {spec.name} has no lesion label")
    return classes


@contextlib.contextmanager
def _training_mode(model: nn.Module) -> Iterator[None]:
    model.train()
    try:
        yield
    finally:
        model.eval()


def train(
    model: nn.Module,
    spec: TaskSpec,
    cases: Sequence[TrainingCase],
    config: TrainConfig,
    *,
    on_step: Callable[[StepInfo], None] | None = None,
    prepared: Sequence[PreparedCase] | None = None,
    reference_state: Mapping[str, torch.Tensor] | None = None,
    checkpoint: Path | None = None,
    checkpoint_every: int = 50,
    should_pause: Callable[[], bool] | None = None,
    pause_poll_s: float = PAUSE_POLL_S,
    extra_state: CheckpointExtra | None = None,
) -> TrainReport:
    """Train ``model`` in place on ``cases`` for ``config.steps`` steps; returns the loss
    per step. ``prepared`` (from :func:`prepare_cases`) skips pre-processing, e.g. when
    a site trains several rounds on the same cases.

    ``reference_state``: the FedProx anchor ``w_ref`` (used when ``config.prox_mu > 0``;
    by default the weights ``model`` has when called). ``checkpoint``: a file for this
    run; written (atomically) every ``checkpoint_every`` steps and after the last one, and
    if it exists when called, the run resumes from it (it must come from the same
    config, starting weights and cases). ``should_pause``: polled before every step;
    while it returns True training sleeps (``pause_poll_s`` between polls), then goes on
    exactly where it was. ``on_step`` is called after each step, before that step's
    checkpoint is written, so what it changes in ``extra_state`` (kept in the
    checkpoint, see :class:`CheckpointExtra`) is saved with the step."""
    if checkpoint_every < 1:
        raise TrainingError("checkpoint_every must be >= 1")
    if not (math.isfinite(pause_poll_s) and pause_poll_s > 0):
        raise TrainingError("pause_poll_s must be a finite number > 0")
    device = resolve_device(config.device)
    try:
        precision = (
            training_precision(device, config.precision)
            if config.amp
            else PrecisionChoice(Precision.FP32, "amp off")
        )
    except PrecisionError as exc:
        raise TrainingError(str(exc)) from exc
    patch = config.patch_size if config.patch_size is not None else spec.patch_size
    if config.thin_slab_probability > 0 and int(patch[2]) < MIN_SLAB_SLICES:
        raise TrainingError(
            f"thin_slab_probability needs a patch depth of at least {MIN_SLAB_SLICES} slices, "
            f"the patch is {tuple(patch)}"
        )
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

    scaling = config.small_lesion_scaling
    lesion_labels = (
        _training_values(spec, scaling.lesion_labels(spec)) if scaling is not None else ()
    )
    fingerprint = _fingerprint(model, config, cached) if checkpoint is not None else ""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng([config.seed, 1])
    ratios = _class_ratios(spec, config)
    model.to(device)
    reference = (
        _reference_parameters(model, reference_state, device) if config.prox_mu > 0 else None
    )
    loss_fn = _loss_function(spec)
    blob_classes = _blob_classes(spec, config)
    optimiser = _build_optimiser(model, config)
    amp_dtype = precision.autocast_dtype
    scaler = torch.amp.GradScaler("cuda") if precision.needs_grad_scaler else None
    augmentation = build_patch_augmentation(patch) if config.augment else None
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    state = _RunState(
        update={name: torch.zeros_like(p) for name, p in trainable} if scaling is not None else None
    )
    saver = (
        _Checkpointer(
            Path(checkpoint), fingerprint, model, optimiser, scaler, rng, device, extra_state
        )
        if checkpoint is not None
        else None
    )
    if saver is not None and saver.path.exists():
        saver.resume(state)
    resumed_from = state.step
    mark = time.perf_counter()
    step_s_before = state.step_s
    with _training_mode(model):
        for step in range(state.step, config.steps):
            if should_pause is not None:
                state.paused_s += _wait_while_paused(should_pause, pause_poll_s)
            lr = config.lr * (1.0 - step / max(config.steps, 1)) ** config.lr_power
            x, y = _sample_batch(cached, ratios, patch, rng, config, augmentation, step)
            x, y = x.to(device), y.long().to(device)
            scale = batch_step_scale(y, lesion_labels, scaling) if scaling is not None else 1.0
            local_scale = scale if scaling is not None and scaling.scale_local_step else 1.0
            for group in optimiser.param_groups:
                group["lr"] = lr * local_scale
            optimiser.zero_grad(set_to_none=True)
            with _autocast(device, amp_dtype):
                logits = model(x)
            target = region_targets(spec, y) if spec.is_sigmoid else y
            loss = loss_fn(logits.float(), target)
            if blob_classes:
                probabilities = torch.softmax(logits.float(), dim=1)
                if config.blob_loss_weight:
                    blob = blob_dice_loss(probabilities, y, blob_classes)
                    loss = loss + config.blob_loss_weight * blob
                if config.false_blob_weight:
                    false = false_blob_loss(probabilities, y, blob_classes)
                    loss = loss + config.false_blob_weight * false
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at step {step + 1}")
            total = loss
            if reference is not None:
                total = loss + 0.5 * config.prox_mu * _proximal_term(model, reference)
            before = (
                [p.detach().clone() for _, p in trainable] if state.update is not None else None
            )
            if scaler is not None:
                scaler.scale(total).backward()
                scaler.step(optimiser)
                scaler.update()
            else:
                total.backward()
                optimiser.step()
            if state.update is not None and before is not None:
                weight = scale / local_scale
                with torch.no_grad():
                    for (name, param), old in zip(trainable, before, strict=True):
                        state.update[name].add_(param.detach() - old, alpha=weight)
            value = float(loss.item())
            state.losses.append(value)
            state.scales.append(scale)
            state.step = step + 1
            state.step_s = step_s_before + time.perf_counter() - mark - state.paused_s
            if on_step is not None:
                on_step(
                    StepInfo(step + 1, config.steps, value, lr, time.perf_counter() - mark, scale)
                )
            if saver is not None and (
                state.step % checkpoint_every == 0 or state.step == config.steps
            ):
                saver.save(state)
    return TrainReport(
        steps=config.steps,
        losses=tuple(state.losses),
        seconds=time.perf_counter() - start,
        preprocess_seconds=preprocess_s,
        cases=len(cached),
        patches=config.steps * config.batch_size,
        seed=config.seed,
        device=str(device),
        step_scales=tuple(state.scales),
        paused_seconds=state.paused_s,
        resumed_from_step=resumed_from,
        step_seconds_total=state.step_s,
        precision=precision.precision,
        precision_reason=precision.reason,
        scaled_update=(
            {k: v.detach().to("cpu") for k, v in state.update.items()}
            if state.update is not None
            else None
        ),
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
    checkpoint: Path | None = None,
    checkpoint_every: int = 50,
    should_pause: Callable[[], bool] | None = None,
    pause_poll_s: float = PAUSE_POLL_S,
    extra_state: CheckpointExtra | None = None,
) -> TrainReport:
    """:func:`train` starting from ``initial_state`` (loaded with ``strict=True``), which
    is also the FedProx reference ``w_ref``."""
    try:
        model.load_state_dict(dict(initial_state), strict=True)
    except RuntimeError as exc:
        raise TrainingError(f"the starting weights do not fit the network: {exc}") from exc
    return train(
        model,
        spec,
        cases,
        config,
        on_step=on_step,
        prepared=prepared,
        reference_state=initial_state,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        should_pause=should_pause,
        pause_poll_s=pause_poll_s,
        extra_state=extra_state,
    )
