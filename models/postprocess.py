"""Post-processing of a label map on the input grid, driven by a :class:`PostprocessSpec`.

Steps, in order:

1. **Largest component** - for each label in ``largest_component`` only the largest
   connected component of (that label together with its child labels) is kept, so a
   tumour that cuts through the liver does not make one half of the liver "small".
2. **Minimum volume** - components of a label smaller than its configured volume (mL,
   from the voxel size of the affine) become background.
3. **Inside parent** - a child component (e.g. a liver tumour) is kept only when some
   of its voxels lie within ``max_distance_mm`` of its parent label (the liver dilated
   by that distance); components wholly outside become background. This is decided per
   component, not per voxel: a large tumour's centre can be far more than a few mm from
   the nearest *liver-labelled* voxel (the tumour voxels lie in between), and clipping
   voxel-wise would hollow out big subcapsular tumours.

scipy and scikit-image are not dependencies, so connected components and the distance
test are implemented here with numpy: union-find over runs of voxels along the last axis
(with pointer jumping, so the number of passes stays small; ~0.15 s for a 2.3 million
voxel organ with 26-connectivity on one core), and
an exact truncated Euclidean distance transform (separable; exact for every distance up
to the one asked for, in millimetres, anisotropic spacing included). Both work on the
bounding box of the voxels involved only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np

from .errors import InputError
from .geometry import voxel_spacing, voxel_volume_ml
from .tasks import PostprocessSpec

_Box = tuple[slice, slice, slice]


def _offsets(connectivity: int) -> list[tuple[int, int, int]]:
    """Half of the neighbourhood (each undirected adjacency once)."""
    if connectivity == 6:
        return [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
    if connectivity == 26:
        return [
            (a, b, c)
            for a, b, c in itertools.product((-1, 0, 1), repeat=3)
            if (a, b, c) > (0, 0, 0)  # first non-zero step positive: one of each pair
        ]
    raise InputError(f"connectivity must be 6 or 26, got {connectivity}")


def bounding_box(mask: np.ndarray, margin: tuple[int, ...] = (0, 0, 0)) -> _Box | None:
    """Slices of the smallest box holding every True voxel, grown by ``margin`` voxels
    per axis (clipped to the array); ``None`` for an empty mask."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        if hits.size == 0:
            return None
        lo = max(int(hits[0]) - margin[axis], 0)
        hi = min(int(hits[-1]) + 1 + margin[axis], mask.shape[axis])
        box.append(slice(lo, hi))
    return (box[0], box[1], box[2])


def _components_in_box(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """Labels 1..n of the connected components of ``mask`` (0 = background).

    Nodes are runs of consecutive voxels along the last axis (already connected), and
    each pair of neighbouring runs contributes one edge per stretch where they touch,
    which keeps the union-find small even for an organ of millions of voxels.
    """
    starts = mask.copy()
    starts[..., 1:] &= ~mask[..., :-1]
    run_id = np.cumsum(starts.reshape(-1), dtype=np.int64).reshape(mask.shape) - 1
    n_runs = int(run_id.reshape(-1)[-1]) + 1 if mask.size else 0
    us: list[np.ndarray] = []
    vs: list[np.ndarray] = []
    for offset in _offsets(connectivity):
        if offset[0] == 0 and offset[1] == 0:
            continue  # within a run
        src: list[slice] = []
        dst: list[slice] = []
        for d, size in zip(offset, mask.shape, strict=True):
            src.append(slice(max(-d, 0), size - max(d, 0)))
            dst.append(slice(max(d, 0), size - max(-d, 0)))
        both = mask[tuple(src)] & mask[tuple(dst)]
        first = both.copy()  # the first touching pair of each stretch along the last axis
        first[..., 1:] &= ~both[..., :-1]
        us.append(run_id[tuple(src)][first])
        vs.append(run_id[tuple(dst)][first])
    u = np.concatenate(us) if us else np.zeros(0, dtype=np.int64)
    v = np.concatenate(vs) if vs else np.zeros(0, dtype=np.int64)

    parent = np.arange(n_runs, dtype=np.int64)
    while u.size:
        pu = parent[u]
        pv = parent[v]
        differ = pu != pv
        if not differ.any():
            break
        u, v, pu, pv = u[differ], v[differ], pu[differ], pv[differ]
        # pu, pv are roots (parent is fully compressed): hook the larger root under the
        # smaller. Parents only ever decrease, so no cycles can form.
        np.minimum.at(parent, np.maximum(pu, pv), np.minimum(pu, pv))
        while True:  # pointer jumping until every run points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
    if n_runs == 0:
        return np.zeros(mask.shape, dtype=np.int32), 0
    _, compact = np.unique(parent, return_inverse=True)
    labels = np.zeros(mask.shape, dtype=np.int32)
    labels[mask] = compact.astype(np.int32)[run_id[mask]] + 1
    return labels, int(compact.max()) + 1


def _check_mask(mask: np.ndarray, connectivity: int) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise InputError(f"expected a 3-D mask, got {mask.ndim} dimensions")
    _offsets(connectivity)
    return mask


def _components(mask: np.ndarray, connectivity: int) -> tuple[_Box | None, np.ndarray, int]:
    """Components of ``mask`` within its bounding box: ``(box, labels_in_box, n)``."""
    box = bounding_box(mask)
    if box is None:
        return None, np.zeros((0, 0, 0), dtype=np.int32), 0
    labels, n = _components_in_box(mask[box], connectivity)
    return box, labels, n


def label_components(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Connected components of a boolean 3-D mask: ``(labels, n)`` with labels 1..n
    (int32, 0 = background), numbered in order of each component's first voxel in
    C (row-major) order."""
    mask = _check_mask(mask, connectivity)
    labels = np.zeros(mask.shape, dtype=np.int32)
    box, sub, n = _components(mask, connectivity)
    if box is not None:
        labels[box] = sub
    return labels, n


def _filter_components(
    mask: np.ndarray,
    connectivity: int,
    choose: Callable[[np.ndarray, np.ndarray, _Box], np.ndarray],
) -> np.ndarray:
    """``mask`` keeping the components for which ``choose(sizes, labels_in_box, box)`` is
    True (``sizes`` indexed by component label; entry 0 is the background). Works on the
    bounding box of ``mask`` only."""
    mask = _check_mask(mask, connectivity)
    out = np.zeros(mask.shape, dtype=bool)
    box, sub, n = _components(mask, connectivity)
    if box is None:
        return out
    sizes = np.bincount(sub.reshape(-1), minlength=n + 1)
    keep = np.asarray(choose(sizes, sub, box), dtype=bool)
    keep[0] = False
    out[box] = keep[sub]
    return out


def _squared_distance_within(
    mask: np.ndarray, spacing: tuple[float, ...], limit_mm: float
) -> np.ndarray:
    """Squared distance (mm^2) from each voxel to the nearest True voxel of ``mask``,
    exact wherever it is <= ``limit_mm``^2 (elsewhere only known to be larger)."""
    d2 = np.where(mask, np.float32(0.0), np.float32(np.inf)).astype(np.float32)
    for axis, step in enumerate(spacing):
        size = d2.shape[axis]
        reach = min(math.floor(limit_mm / step + 1e-9), size - 1)
        if reach <= 0:
            continue
        src = d2
        out = src.copy()
        for j in range(1, reach + 1):
            cost = np.float32((j * step) ** 2)
            hi = [slice(None)] * 3
            lo = [slice(None)] * 3
            hi[axis] = slice(j, None)
            lo[axis] = slice(None, size - j)
            np.minimum(out[tuple(hi)], src[tuple(lo)] + cost, out=out[tuple(hi)])
            np.minimum(out[tuple(lo)], src[tuple(hi)] + cost, out=out[tuple(lo)])
        d2 = out
    return d2


def within_distance(
    mask: np.ndarray, spacing: tuple[float, float, float], distance_mm: float
) -> np.ndarray:
    """Voxels within ``distance_mm`` (Euclidean, in mm) of a True voxel of ``mask``:
    the mask dilated by a ball of that radius, for anisotropic voxels."""
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(mask.shape, dtype=bool)
    reach = tuple(math.floor(distance_mm / s + 1e-9) for s in spacing)
    box = bounding_box(mask, margin=reach)
    if box is None:
        return out
    d2 = _squared_distance_within(mask[box], spacing, distance_mm)
    out[box] = d2 <= np.float32(distance_mm**2 * (1 + 1e-6))
    return out


def _near_parent(
    child: np.ndarray, parent: np.ndarray, spacing: tuple[float, float, float], distance_mm: float
) -> np.ndarray:
    """Child voxels within ``distance_mm`` of ``parent``, computed only around the child."""
    near = np.zeros(child.shape, dtype=bool)
    reach = tuple(math.floor(distance_mm / s + 1e-9) for s in spacing)
    box = bounding_box(child, margin=reach)
    if box is None:
        return near
    d2 = _squared_distance_within(parent[box], spacing, distance_mm)
    near[box] = child[box] & (d2 <= np.float32(distance_mm**2 * (1 + 1e-6)))
    return near


def keep_largest_component(mask: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """``mask`` reduced to its largest connected component (ties: the first found)."""

    def largest(sizes: np.ndarray, *_: object) -> np.ndarray:
        keep = np.zeros(sizes.size, dtype=bool)
        keep[int(np.argmax(sizes[1:])) + 1] = True
        return keep

    return _filter_components(mask, connectivity, largest)


def remove_small_components(
    mask: np.ndarray, min_voxels: float, connectivity: int = 26
) -> np.ndarray:
    """``mask`` without the connected components of fewer than ``min_voxels`` voxels."""
    return _filter_components(mask, connectivity, lambda sizes, *_: sizes >= min_voxels)


def postprocess(label_map: np.ndarray, affine: np.ndarray, spec: PostprocessSpec) -> np.ndarray:
    """Apply ``spec`` to a ``(slice, row, column)`` label map whose voxel geometry is
    ``affine`` (LPS or RAS: only voxel sizes are used). Returns a new uint8 array."""
    labels = np.asarray(label_map)
    if labels.ndim != 3:
        raise InputError(f"expected a 3-D label map, got {labels.ndim} dimensions")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"label map must hold integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise InputError("label values must be in 0..255")
    # every step acts on labelled voxels and their components only, so it runs on the box
    # of the labels (the region of interest): the same result, a fraction of the voxels
    out = np.zeros(labels.shape, dtype=np.uint8)
    box = bounding_box(labels != 0)
    if box is not None:
        out[box] = _postprocess_box(labels[box].astype(np.uint8), affine, spec)
    return out


def _postprocess_box(out: np.ndarray, affine: np.ndarray, spec: PostprocessSpec) -> np.ndarray:
    """:func:`postprocess` on ``out`` (changed in place and returned)."""
    spacing = voxel_spacing(affine)
    ml_per_voxel = voxel_volume_ml(affine)
    conn = spec.connectivity

    for label in spec.largest_component:
        this = out == label
        if not this.any():
            continue
        group = np.isin(out, (label, *spec.children_of(label)))
        out[this & ~keep_largest_component(group, conn)] = 0

    for label, min_ml in spec.min_volume_ml:
        if min_ml <= 0:
            continue
        this = out == label
        if this.any():
            # a small tolerance so that a component of exactly min_ml survives rounding
            kept = remove_small_components(this, min_ml / ml_per_voxel * (1 - 1e-9), conn)
            out[this & ~kept] = 0

    for constraint in spec.inside_parent:
        child = out == constraint.child
        if not child.any():
            continue
        parent = out == constraint.parent
        if not parent.any():
            out[child] = 0
            continue
        near = _near_parent(child, parent, spacing, constraint.max_distance_mm)

        def touching(
            sizes: np.ndarray, components: np.ndarray, box: _Box, near: np.ndarray = near
        ) -> np.ndarray:
            keep = np.zeros(sizes.size, dtype=bool)
            keep[np.unique(components[near[box]])] = True
            return keep

        out[child & ~_filter_components(child, conn, touching)] = 0
    return out
