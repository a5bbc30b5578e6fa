"""Segmenting with a registered model the way its card says: an imported bundle runs its
own pipeline (:mod:`models.bundle_pipeline`), a two-stage card its locator and refiner
(:mod:`models.cascade`), every other model the task's (:func:`models.inference.segment`).
The one dispatch used by jobs, the validation gate and evaluations, so a model is judged
by the same path it runs clinically."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .bundle_run import run_pipeline
from .cascade import CascadeNetwork, segment_cascade
from .errors import NetworkConfigError
from .inference import SegmentationResult, segment
from .model_card import ModelCard
from .tasks import MAX_WORKING_VOXELS, TaskSpec


def segment_with_card(
    network: nn.Module,
    card: ModelCard,
    spec: TaskSpec,
    image: np.ndarray,
    affine_lps: np.ndarray,
    *,
    device: str | torch.device | None = None,
    max_working_voxels: int | None = MAX_WORKING_VOXELS,
) -> SegmentationResult:
    """Segment ``image`` with ``network``, the model of ``card``, for task ``spec``.
    A two-stage model's result has ``roi_found`` False when its first stage found nothing."""
    refiner = card.refiner
    if refiner is not None:
        if not isinstance(network, CascadeNetwork):
            raise NetworkConfigError(
                f"model {card.task}/{card.version} is a two-stage card but its network is a "
                f"{type(network).__name__}"
            )
        return segment_cascade(
            network,
            spec,
            refiner,
            image,
            affine_lps,
            device=device,
            max_working_voxels=max_working_voxels,
        )
    pipeline, channels = card.bundle_pipeline, card.channel_map
    if pipeline is not None and channels is not None:
        return run_pipeline(
            network,
            pipeline,
            image,
            affine_lps,
            device=device,
            channel_labels=channels.channel_labels,
            max_working_voxels=max_working_voxels,
        )
    return segment(
        network, spec, image, affine_lps, device=device, max_working_voxels=max_working_voxels
    )
