"""Two-stage (cascade) models: a *locator* finds the organ, a *refiner* segments it.

A cascade bundle holds both networks in one state dict (``locator.*`` and ``refiner.*``,
one weights file and one sha256) and both stages' pre-processing in its card:

- **Stage 1, the locator**, is an ordinary model of the task on the task's coarse grid
  (``preprocessing.target_spacing_mm`` / ``patch_size``). It runs over the whole series.
- **The region of interest** is the bounding box of everything stage 1 labelled
  (the organ and its lesions), grown by ``preprocessing.refiner.margin_mm`` on every side
  and clipped to the image. If stage 1 labelled nothing, the cascade stops there: the
  result says so (:attr:`models.inference.SegmentationResult.roi_found` is False, the
  mask is empty) and a job records it instead of guessing.
- **Stage 2, the refiner**, segments every label of the task inside that box on its own,
  finer grid (``preprocessing.refiner.target_spacing_mm`` / ``patch_size``) with the
  task's intensity normalisation, through the same :func:`models.inference.segment` as any
  model (short boxes are padded with their own edges, never zeros). Its labels are pasted
  back onto the input grid (zero outside the box) and the task's post-processing runs
  once, on the whole map.

A site fine-tunes the refiner; the locator stays as shipped (see docs/models.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from .cascade_spec import RefinerSettings, refiner_spec
from .errors import InferenceError
from .geometry import validate_affine
from .inference import SegmentationResult, segment
from .postprocess import postprocess as apply_postprocess
from .tasks import MAX_WORKING_VOXELS, TaskSpec


class CascadeNetwork(nn.Module):
    """The two networks of a cascade, as one module (one state dict, one weights hash).
    It has no ``forward`` of its own: :func:`segment_cascade` runs the stages."""

    def __init__(self, locator: nn.Module, refiner: nn.Module) -> None:
        super().__init__()
        self.locator = locator
        self.refiner = refiner

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - guard
        raise InferenceError("a cascade runs its two stages through models.cascade")


def region_of_interest(
    mask: np.ndarray,
    affine_lps: np.ndarray,
    margin_mm: float,
    *,
    rng: np.random.Generator | None = None,
    jitter_mm: float = 0.0,
) -> tuple[slice, slice, slice] | None:
    """The box (index slices) around the non-zero voxels of ``mask`` grown by
    ``margin_mm`` on each side, in each axis' own spacing, clipped to the grid; None when
    ``mask`` is empty. With ``rng``, each side's margin is drawn from ``margin_mm ±
    jitter_mm`` (never below zero): how a refiner's training boxes are cut
    (:mod:`models.cascade_training`)."""
    if margin_mm < 0 or jitter_mm < 0:
        raise InferenceError("margin_mm and jitter_mm must be >= 0")
    m = np.asarray(mask) != 0
    if m.ndim != 3:
        raise InferenceError(f"region_of_interest needs a 3-D mask, not {m.shape}")
    spacing = np.linalg.norm(np.asarray(affine_lps, dtype=np.float64)[:3, :3], axis=0)
    box = []
    for axis in range(3):
        present = np.flatnonzero(m.any(axis=tuple(a for a in range(3) if a != axis)))
        if present.size == 0:
            return None
        grow = []
        for _side in range(2):
            margin = margin_mm
            if rng is not None and jitter_mm > 0:
                margin = max(0.0, margin_mm + float(rng.uniform(-jitter_mm, jitter_mm)))
            grow.append(math.ceil(margin / float(spacing[axis]) - 1e-9))
        start = max(0, int(present[0]) - grow[0])
        box.append(slice(start, min(m.shape[axis], int(present[-1]) + 1 + grow[1])))
    return (box[0], box[1], box[2])


def crop_affine(affine_lps: np.ndarray, box: tuple[slice, slice, slice]) -> np.ndarray:
    """The index -> LPS affine of ``image[box]``: the same axes, the origin moved to the
    box's first voxel."""
    affine = np.array(affine_lps, dtype=np.float64, copy=True)
    starts = np.array([s.start or 0 for s in box], dtype=np.float64)
    affine[:3, 3] = affine[:3, 3] + affine[:3, :3] @ starts
    return affine


def locate(
    network: CascadeNetwork,
    spec: TaskSpec,
    image: np.ndarray,
    affine_lps: np.ndarray,
    *,
    device: str | torch.device | None = None,
    max_working_voxels: int | None = MAX_WORKING_VOXELS,
    reference: bool = False,
) -> SegmentationResult:
    """Stage 1 alone: the locator's post-processed labels on the input grid
    (``reference``: see :func:`models.inference.segment`)."""
    return segment(
        network.locator,
        spec,
        image,
        affine_lps,
        device=device,
        postprocess=True,
        max_working_voxels=max_working_voxels,
        reference=reference,
    )


def segment_cascade(
    network: CascadeNetwork,
    spec: TaskSpec,
    settings: RefinerSettings,
    image: np.ndarray,
    affine_lps: np.ndarray,
    *,
    device: str | torch.device | None = None,
    postprocess: bool = True,
    max_working_voxels: int | None = MAX_WORKING_VOXELS,
    located: SegmentationResult | None = None,
    reference: bool = False,
) -> SegmentationResult:
    """Segment ``image`` (as :func:`models.inference.segment` takes it) with a cascade:
    locator on the whole image, refiner in the box around what the locator found (see the
    module docstring). The result's ``roi_found`` is False, and its mask empty, when the
    locator found nothing. ``located``: stage 1's result on this image when it is already
    known (:func:`locate`; an evaluation that scores several refiners behind one locator
    runs it once per case). Both stages run through the inference engine of
    :func:`models.inference.segment` (``reference=True``: both through its previous path)."""
    start = time.perf_counter()
    validate_affine(affine_lps)
    stage2_spec = refiner_spec(spec, settings)
    if located is None:
        located = locate(
            network,
            spec,
            image,
            affine_lps,
            device=device,
            max_working_voxels=max_working_voxels,
            reference=reference,
        )
    elif located.mask.shape != image.shape[-3:]:
        raise InferenceError(f"stage 1's mask {located.mask.shape} is not on the image's grid")
    timings = {f"locator_{k}": v for k, v in located.timings_s.items()}
    box = region_of_interest(located.mask, affine_lps, settings.margin_mm)
    if box is None:
        timings["total"] = time.perf_counter() - start
        return replace(
            located, mask=np.zeros_like(located.mask), timings_s=timings, roi_found=False
        )
    crop = np.ascontiguousarray(image[(..., *box)])
    refined = segment(
        network.refiner,
        stage2_spec,
        crop,
        crop_affine(affine_lps, box),
        device=device,
        postprocess=False,
        max_working_voxels=max_working_voxels,
        reference=reference,
    )
    timings.update({f"refiner_{k}": v for k, v in refined.timings_s.items()})
    mark = time.perf_counter()
    mask = np.zeros(image.shape[-3:], dtype=np.uint8)
    mask[box] = refined.mask
    if postprocess:
        mask = apply_postprocess(mask, affine_lps, spec.postprocess)
    timings["postprocess"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - start
    return SegmentationResult(
        mask=mask,
        timings_s=timings,
        device=refined.device,
        amp_dtype=refined.amp_dtype,
        roi_found=True,
        roi=tuple((int(s.start), int(s.stop)) for s in box),
    )
