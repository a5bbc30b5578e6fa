"""FedGS small-lesion step scaling (federated gradient scaling for small lesions).

An optimiser step whose batch contains patches with a *small* lesion is weighted by

    p = 1 + (2 / B) * sum_{i in batch, lesion_i small} tanh((log_base(A_total / A_lesion_i))^2)

with ``B`` the batch size, ``A_total`` the voxel count of patch ``i``, ``A_lesion_i`` the
number of its voxels carrying a lesion label and ``base = 1000``. A batch without small
lesions has ``p = 1``. Source: the FedGS paper (MICCAI 2024 DeCaF workshop) and its code,
Trustworthy-AI-UU-NKI/Federated-Learning-Disentanglement (``src/train_test.py``
``calculate_p_factor``; ``src/data_lits.py`` ``create_lits_data_details`` defines "small"
for liver tumours as ``A_total / A_lesion >= 1000``, i.e. ``threshold = 0.001`` here).
How :mod:`models.training` applies ``p`` is described in ``docs/training.md``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from .errors import ModelsError
from .tasks import MORPHOLOGICALLY_ABNORMAL_STRUCTURE, TaskSpec

#: "Small" in the reference code for liver tumours: the lesion covers at most 1/1000
#: of the image (``inv_area >= 1000``).
DEFAULT_SMALL_THRESHOLD = 0.001
DEFAULT_LOG_BASE = 1000.0


class LesionScalingError(ModelsError, ValueError):
    """A small-lesion scaling setting is invalid or does not fit the task."""


@dataclass(frozen=True, slots=True)
class SmallLesionScaling:
    """Settings of the FedGS step scaling.

    ``threshold``: a patch's lesion is *small* when ``0 < A_lesion <= threshold * A_total``
    (fraction of the patch's voxels). ``base``: base of the logarithm (1000 in the paper).
    ``labels``: the label indices that count as lesion; ``None`` means the task's labels
    whose category is "Morphologically abnormal structure" (liver tumour, glioma).
    ``scale_local_step``: ``False`` (the reference code) keeps the local optimiser step
    as it is and weights only the accumulated update sent to the server by ``p``;
    ``True`` also multiplies the local step's learning rate by ``p``.
    """

    threshold: float = DEFAULT_SMALL_THRESHOLD
    base: float = DEFAULT_LOG_BASE
    labels: tuple[int, ...] | None = None
    scale_local_step: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and 0.0 < self.threshold < 1.0):
            raise LesionScalingError(
                f"small_lesion_scaling.threshold must be in (0, 1), got {self.threshold!r}"
            )
        if not (math.isfinite(self.base) and self.base > 1.0):
            raise LesionScalingError(
                f"small_lesion_scaling.base must be a finite number > 1, got {self.base!r}"
            )
        if self.labels is not None:
            labels = tuple(int(v) for v in self.labels)
            if not labels or min(labels) < 1:
                raise LesionScalingError(
                    "small_lesion_scaling.labels must be non-empty label indices >= 1 "
                    "(0 is background)"
                )
            object.__setattr__(self, "labels", labels)

    def lesion_labels(self, spec: TaskSpec) -> tuple[int, ...]:
        """The label indices counted as lesion for ``spec``."""
        if self.labels is not None:
            known = {label.index for label in spec.labels}
            unknown = sorted(set(self.labels) - known)
            if unknown:
                raise LesionScalingError(
                    f"small_lesion_scaling.labels {unknown} are not labels of task "
                    f"{spec.name} (allowed: {sorted(known)})"
                )
            return self.labels
        found = tuple(
            label.index
            for label in spec.labels
            if label.category == MORPHOLOGICALLY_ABNORMAL_STRUCTURE
        )
        if not found:
            raise LesionScalingError(
                f"task {spec.name} has no lesion labels; set small_lesion_scaling.labels"
            )
        return found


def small_lesion_term(a_total: int, a_lesion: int, *, threshold: float, base: float) -> float:
    """One batch item's summand: ``tanh(log_base(A_total / A_lesion)^2)`` when its lesion
    is small (``0 < A_lesion <= threshold * A_total``), else 0."""
    if a_total <= 0:
        raise LesionScalingError("a patch must have at least one voxel")
    if a_lesion <= 0 or a_lesion > threshold * a_total:
        return 0.0
    return math.tanh(math.log(a_total / a_lesion, base) ** 2)


def step_scale_from_counts(
    a_total: Sequence[int], a_lesion: Sequence[int], *, threshold: float, base: float
) -> float:
    """``p`` for a batch given each item's patch and lesion voxel counts."""
    if len(a_total) != len(a_lesion) or not a_total:
        raise LesionScalingError("need one patch size and one lesion count per batch item")
    terms = [
        small_lesion_term(int(t), int(a), threshold=threshold, base=base)
        for t, a in zip(a_total, a_lesion, strict=True)
    ]
    return 1.0 + (2.0 / len(terms)) * math.fsum(terms)


def lesion_voxel_counts(labels: torch.Tensor, lesion_labels: Iterable[int]) -> list[int]:
    """Per batch item of ``labels`` ``(B, 1, X, Y, Z)`` (or ``(B, X, Y, Z)``): the number
    of voxels whose label is one of ``lesion_labels``."""
    wanted = torch.as_tensor(list(lesion_labels), dtype=labels.dtype, device=labels.device)
    mask = torch.isin(labels, wanted)
    return [int(v) for v in mask.reshape(labels.shape[0], -1).sum(dim=1).tolist()]


def batch_step_scale(
    labels: torch.Tensor, lesion_labels: Iterable[int], settings: SmallLesionScaling
) -> float:
    """``p`` for a batch of label patches ``(B, 1, X, Y, Z)``."""
    per_item = int(labels[0].numel())
    counts = lesion_voxel_counts(labels, lesion_labels)
    return step_scale_from_counts(
        [per_item] * len(counts), counts, threshold=settings.threshold, base=settings.base
    )
