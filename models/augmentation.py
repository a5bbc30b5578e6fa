"""Light, seeded MONAI augmentation of training patches.

The sampler in :mod:`models.training` cuts patches from pre-processed (RAS, resampled,
normalised) cases; :func:`build_patch_augmentation` returns a MONAI ``Compose`` of
dictionary transforms applied to each ``{"image": (C, X, Y, Z), "label": (1, X, Y, Z)}``
patch:

- random flips along each spatial axis (p = 0.5 each), as nnU-Net mirrors;
- a random in-plane (axial, axes 0 and 1) rotation by a multiple of 90 degrees, only when
  the patch is square in-plane (otherwise the batch could not be stacked);
- intensity scaling ``x * (1 + f)``, ``f ~ U(-0.1, 0.1)``, and shift ``x + o``,
  ``o ~ U(-0.1, 0.1)`` (normalised units), each with p = 0.5;
- Gaussian noise (std 0.05) with p = 0.15.

It is cheap on the CPU (flips and transposes are views; no interpolation). Randomness is
reseeded for every step with :func:`step_seed`, so a run resumed from a checkpoint draws
the same augmentation as one that never stopped, with no RNG state to save.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    RandFlipd,
    RandGaussianNoised,
    RandRotate90d,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from .errors import ModelsError
from .transforms import IMAGE_KEY, LABEL_KEY

_KEYS = (IMAGE_KEY, LABEL_KEY)


def build_patch_augmentation(patch_size: Sequence[int]) -> Compose:
    """The augmentation chain for patches of ``patch_size`` (see the module docstring)."""
    chain: list[Callable[..., Any]] = [
        RandFlipd(keys=_KEYS, prob=0.5, spatial_axis=axis) for axis in range(3)
    ]
    if int(patch_size[0]) == int(patch_size[1]):
        chain.append(RandRotate90d(keys=_KEYS, prob=0.5, max_k=3, spatial_axes=(0, 1)))
    chain += [
        RandScaleIntensityd(keys=IMAGE_KEY, factors=0.1, prob=0.5),
        RandShiftIntensityd(keys=IMAGE_KEY, offsets=0.1, prob=0.5),
        RandGaussianNoised(keys=IMAGE_KEY, prob=0.15, mean=0.0, std=0.05),
    ]
    return Compose(chain)


def step_seed(seed: int, step: int) -> int:
    """The augmentation seed of step ``step`` (0-based) of a run seeded with ``seed``."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 2, int(step)]).generate_state(1)
    return int(state[0])


def _plain(value: object) -> torch.Tensor:
    if isinstance(value, MetaTensor):
        return value.as_tensor()
    return torch.as_tensor(value)


def augment_patch(
    augmentation: Compose, image: torch.Tensor, label: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``augmentation`` to one patch; returns plain, contiguous tensors with the
    input dtypes (float image, uint8 label)."""
    out = augmentation({IMAGE_KEY: image, LABEL_KEY: label})
    if not isinstance(out, dict):  # Compose returns the dict it is given
        raise ModelsError("the patch augmentation must return a dictionary")
    new_image = _plain(out[IMAGE_KEY]).to(image.dtype).contiguous()
    new_label = _plain(out[LABEL_KEY]).to(label.dtype).contiguous()
    return new_image, new_label
