"""Overlapping regions of a sigmoid task (see :class:`models.tasks.OutputActivation`).

A sigmoid task's training label map holds disjoint tissue classes (0 background,
1..K); label ``i`` is the union of the tissue values in ``spec.regions[i - 1]``, as
MONAI's ``ConvertToMultiChannelBasedOnBratsClasses`` builds tumour core, whole tumour
and enhancing tumour from the BraTS labels. This module turns label maps into region
masks (numpy, for evaluation) and into training targets (torch), and enforces the
nesting the regions imply on thresholded predictions.

Nesting rule: when label ``a``'s region is a proper subset of label ``b``'s (enhancing
tumour inside tumour core inside whole tumour), a voxel predicted as ``a`` is added to
``b`` (``mask[b] |= mask[a]``, smallest regions first, so the rule is transitive). A
voxel the network calls enhancing is therefore also core and whole tumour; nothing is
removed. This is the way nnU-Net's region-based BraTS models resolve disagreement
(the inner region wins).
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import InputError
from .tasks import TaskSpec


def _require_sigmoid(spec: TaskSpec) -> None:
    if not spec.is_sigmoid:
        raise InputError(f"task {spec.name} is a softmax task; it has no regions")


def region_masks(spec: TaskSpec, label_map: np.ndarray) -> np.ndarray:
    """Boolean ``(len(labels), *label_map.shape)``: ``out[i]`` = voxels whose tissue
    value is in ``spec.regions[i]`` (label ``i + 1``)."""
    _require_sigmoid(spec)
    labels = np.asarray(label_map)
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_:
        raise InputError(f"a tissue label map must hold integers, got {labels.dtype}")
    return np.stack([np.isin(labels, region) for region in spec.regions])


def region_targets(spec: TaskSpec, labels: torch.Tensor) -> torch.Tensor:
    """Float training targets ``(B, len(labels), ...)`` from tissue label maps
    ``(B, 1, ...)`` (integer values)."""
    _require_sigmoid(spec)
    if labels.ndim < 3 or labels.shape[1] != 1:
        raise InputError(f"need tissue labels shaped (B, 1, ...), got {tuple(labels.shape)}")
    values = labels[:, 0]
    channels = []
    for region in spec.regions:
        inside = torch.zeros_like(values, dtype=torch.bool)
        for value in region:
            inside |= values == value
        channels.append(inside)
    return torch.stack(channels, dim=1).float()


def enforce_nesting(spec: TaskSpec, masks: np.ndarray) -> np.ndarray:
    """``masks`` (boolean ``(len(labels), ...)``) with every nested label added to the
    labels that contain it (see the module docstring). Returns a new array."""
    _require_sigmoid(spec)
    out = np.array(masks, dtype=bool, copy=True)
    if out.ndim < 1 or out.shape[0] != len(spec.labels):
        raise InputError(
            f"need one mask per label ({len(spec.labels)}), got shape {tuple(out.shape)}"
        )
    for inner, outer in spec.nesting():
        out[outer - 1] |= out[inner - 1]
    return out
