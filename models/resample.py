"""Separable resampling of a prediction back onto the input grid, restricted to the voxels
and values that decide the labels.

The pre-processing (:mod:`models.transforms`) only permutes/flips axes, rescales them
(``Spacingd`` keeps the grid's rotation) and crops, so every axis of the pre-processed
grid runs along one axis of the input grid with ``grid_index = scale * input_index +
offset`` (:func:`separable_map`; ``None`` when the two grids are rotated against each
other, and the caller falls back to MONAI's ``Invertd``). Trilinear interpolation is then
a product of three 1-D linear interpolations, done one axis at a time.

What is interpolated is what decides the label of a voxel, not every probability:

- softmax: ``d_k = p_k - p_0`` for the foreground classes; the argmax of the interpolated
  probabilities is background where every interpolated ``d_k <= 0`` and otherwise the
  first largest ``d_k`` (interpolation is linear, so the differences interpolate exactly);
- sigmoid: ``d_k = p_k - threshold``; label ``k`` where the interpolated ``d_k > 0``.

A voxel whose interpolation nodes all lie outside the *foreground box* (the grid voxels
with some ``d_k > 0``) is background, so only the input voxels whose nodes touch that box
are computed, from the values of the box grown by one voxel (:func:`labels_on_input`).
Borders are clamped (the ``border`` padding of the forward resampling). Work is done in
torch on the prediction's device, so the CUDA path is the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import InferenceError
from .postprocess import bounding_box

#: Off-axis terms of the grid->input map below this fraction of the largest term are
#: treated as zero (float round-off of the affines); above it the grids are rotated.
AXIS_TOLERANCE = 1e-6

Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]


@dataclass(frozen=True, slots=True)
class AxisMap:
    """One axis of the pre-processed grid: the input axis it runs along and the index map
    ``grid_index = scale * input_index + offset``."""

    input_axis: int
    scale: float
    offset: float

    def __post_init__(self) -> None:
        if self.input_axis not in (0, 1, 2):
            raise InferenceError(f"input_axis must be 0, 1 or 2, not {self.input_axis}")
        if not (math.isfinite(self.scale) and self.scale != 0 and math.isfinite(self.offset)):
            raise InferenceError("an axis map needs a finite, non-zero scale and finite offset")

    def to_grid(self, input_index: np.ndarray) -> np.ndarray:
        return self.scale * input_index + self.offset


AxisMaps = tuple[AxisMap, AxisMap, AxisMap]


def separable_map(input_affine: np.ndarray, grid_affine: np.ndarray) -> AxisMaps | None:
    """Per pre-processed grid axis, how it maps onto the input grid (see
    :class:`AxisMap`), from the two index->world affines (same world convention); None
    when the grid is rotated (not just permuted, flipped and scaled) against the input."""
    a_in = np.asarray(input_affine, dtype=np.float64)
    a_grid = np.asarray(grid_affine, dtype=np.float64)
    if a_in.shape != (4, 4) or a_grid.shape != (4, 4):
        raise InferenceError("separable_map needs two 4x4 affines")
    m = np.linalg.solve(a_grid, a_in)  # input index -> grid index
    lin = np.abs(m[:3, :3])
    big = lin > AXIS_TOLERANCE * lin.max()
    if not (np.all(big.sum(axis=0) == 1) and np.all(big.sum(axis=1) == 1)):
        return None
    maps = []
    for axis in range(3):
        source = int(np.flatnonzero(big[axis])[0])
        maps.append(AxisMap(source, float(m[axis, source]), float(m[axis, 3])))
    return (maps[0], maps[1], maps[2])


def grid_box_of_input_box(
    maps: AxisMaps, input_box: Box, grid_shape: tuple[int, ...], margin: tuple[int, ...]
) -> Box:
    """The pre-processed grid box covering ``input_box`` (``(start, stop)`` per input
    axis), grown by ``margin`` grid voxels per grid axis and clipped to ``grid_shape``."""
    out = []
    for axis, amap in enumerate(maps):
        start, stop = input_box[amap.input_axis]
        ends = amap.to_grid(np.array([start, stop - 1], dtype=np.float64))
        lo = math.floor(float(ends.min())) - margin[axis]
        hi = math.ceil(float(ends.max())) + 1 + margin[axis]
        out.append((max(lo, 0), min(hi, int(grid_shape[axis]))))
    return (out[0], out[1], out[2])


def _axis_nodes(
    amap: AxisMap, n_input: int, n_grid: int, keep: tuple[int, int], device: torch.device
) -> tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The input index range ``[i0, i1)`` whose interpolation nodes touch grid voxels
    ``keep``, those nodes (relative to ``keep[0] - 1`` clipped at 0: the start of the
    values handed in) and the weight of the upper node; None when no input voxel does."""
    j = np.clip(amap.to_grid(np.arange(n_input, dtype=np.float64)), 0.0, n_grid - 1.0)
    lo = np.minimum(np.floor(j).astype(np.int64), n_grid - 1)
    hi = np.minimum(lo + 1, n_grid - 1)
    touching = np.flatnonzero((hi >= keep[0]) & (lo < keep[1]))
    if touching.size == 0:
        return None
    i0, i1 = int(touching[0]), int(touching[-1]) + 1  # j is monotone in i: contiguous
    base = max(keep[0] - 1, 0)
    weight = torch.as_tensor((j - lo)[i0:i1], dtype=torch.float32, device=device)
    lo_t = torch.as_tensor(lo[i0:i1] - base, device=device)
    hi_t = torch.as_tensor(hi[i0:i1] - base, device=device)
    return i0, i1, lo_t, hi_t, weight


def foreground_box(decisive: torch.Tensor) -> Box | None:
    """The box of grid voxels where some channel of ``decisive`` is > 0; None if none."""
    hit = (decisive > 0).any(dim=0)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = torch.nonzero(hit.any(dim=other)).flatten()
        if idx.numel() == 0:
            return None
        box.append((int(idx[0]), int(idx[-1]) + 1))
    return (box[0], box[1], box[2])


def decisive_values(
    probabilities: torch.Tensor, *, sigmoid: bool, threshold: float
) -> torch.Tensor:
    """``(K, ...)`` values whose signs decide the labels (see the module docstring)."""
    if sigmoid:
        return probabilities - threshold
    return probabilities[1:] - probabilities[0:1]


def background_value(*, sigmoid: bool, threshold: float) -> float:
    """The decisive value of a voxel predicted as certain background."""
    return -threshold if sigmoid else -1.0


def labels_on_input(
    decisive: torch.Tensor,
    box: Box,
    grid_shape: tuple[int, int, int],
    maps: AxisMaps,
    input_shape: tuple[int, int, int],
    *,
    outside: float,
    sigmoid: bool,
) -> np.ndarray:
    """Labels on the input grid from ``decisive`` values ``(K, ...)`` given on ``box`` of
    the pre-processed grid (``grid_shape``); grid voxels outside ``box`` count as
    ``outside`` (certain background). Softmax: a uint8 label map of ``input_shape``;
    sigmoid: a bool ``(K, *input_shape)`` mask."""
    k = int(decisive.shape[0])
    if sigmoid:
        out = np.zeros((k, *input_shape), dtype=bool)
    else:
        if k + 1 > 256:
            raise InferenceError("more than 256 classes do not fit a uint8 label map")
        out = np.zeros(input_shape, dtype=np.uint8)
    fg = foreground_box(decisive)
    if fg is None:
        return out
    fg_global = [(lo + box[a][0], hi + box[a][0]) for a, (lo, hi) in enumerate(fg)]
    values_box = [
        (max(lo - 1, 0), min(hi + 1, grid_shape[a])) for a, (lo, hi) in enumerate(fg_global)
    ]
    values = torch.full(
        (k, *(hi - lo for lo, hi in values_box)),
        outside,
        dtype=torch.float32,
        device=decisive.device,
    )
    src = []
    dst = []
    for a, (lo, hi) in enumerate(values_box):
        s0, s1 = max(lo, box[a][0]), min(hi, box[a][1])
        src.append(slice(s0 - box[a][0], s1 - box[a][0]))
        dst.append(slice(s0 - lo, s1 - lo))
    values[(slice(None), *dst)] = decisive[(slice(None), *src)].float()

    input_slices: list[slice] = [slice(0, 0)] * 3
    for a, amap in enumerate(maps):
        nodes = _axis_nodes(
            amap, input_shape[amap.input_axis], grid_shape[a], fg_global[a], decisive.device
        )
        if nodes is None:
            return out
        i0, i1, lo_t, hi_t, weight = nodes
        input_slices[amap.input_axis] = slice(i0, i1)
        shape = [1] * values.ndim
        shape[a + 1] = -1
        values = torch.lerp(
            values.index_select(a + 1, lo_t),
            values.index_select(a + 1, hi_t),
            weight.view(shape),
        )
    grid_axis_of = [0, 0, 0]
    for a, amap in enumerate(maps):
        grid_axis_of[amap.input_axis] = a
    values = values.permute(0, *(1 + grid_axis_of[b] for b in range(3)))
    target = (slice(None), *input_slices) if sigmoid else tuple(input_slices)
    if sigmoid:
        out[target] = (values > 0).cpu().numpy()
        return out
    best = torch.zeros(values.shape[1:], dtype=torch.float32, device=values.device)
    index = torch.zeros(values.shape[1:], dtype=torch.uint8, device=values.device)
    for c in range(k):
        better = values[c] > best
        index[better] = c + 1
        best = torch.maximum(best, values[c])
    out[target] = index.cpu().numpy()
    return out


def box_above(image: np.ndarray, threshold: float) -> Box | None:
    """The box of the ``(C, slice, row, column)`` voxels above ``threshold`` in any
    channel, as ``(start, stop)`` per spatial axis; None when no voxel is."""
    above: np.ndarray = np.any(image > threshold, axis=0)
    box = bounding_box(above)
    if box is None:
        return None
    return ((box[0].start, box[0].stop), (box[1].start, box[1].stop), (box[2].start, box[2].stop))
