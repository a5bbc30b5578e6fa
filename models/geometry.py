"""Patient geometry: DICOM LPS affines, MONAI/NIfTI RAS affines, and MetaTensors.

The convention at the boundary of ``models`` (DESIGN.md: a volume crosses as a numpy
array plus a 4x4 affine in DICOM LPS):

- the array's spatial axes are ``(slice, row, column)``, as stacked from a DICOM series;
- the affine maps a voxel index ``[slice, row, column, 1]`` to patient coordinates in
  millimetres, LPS+ (x towards the patient's left, y posterior, z superior):

  - column 0 = slice-stacking direction x slice spacing (it may point against the
    cross product of the in-plane directions, e.g. for a series stored in reverse
    slice order, so the determinant may be negative);
  - column 1 = ImageOrientationPatient[3:6] (down a column, i.e. increasing row index)
    x PixelSpacing[0];
  - column 2 = ImageOrientationPatient[0:3] (along a row, i.e. increasing column
    index) x PixelSpacing[1];
  - column 3 = ImagePositionPatient of voxel (0, 0, 0).

MONAI (like NIfTI/nibabel) reads ``MetaTensor.affine`` as index -> RAS+ millimetres
(x towards the right, y anterior, z superior). The two differ by negating the first two
world axes: ``affine_ras = diag(-1, -1, 1, 1) @ affine_lps``, and the same matrix maps
back. Only the world side changes; the array and its axis order are untouched.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from monai.data import MetaTensor
from monai.utils import SpaceKeys

from .errors import GeometryError

#: Maps LPS world coordinates to RAS (and back: it is its own inverse).
LPS_TO_RAS: np.ndarray = np.diag([-1.0, -1.0, 1.0, 1.0])
LPS_TO_RAS.setflags(write=False)

_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))  # RAS world axes: (negative, positive)


def validate_affine(affine: np.ndarray | torch.Tensor) -> np.ndarray:
    """``affine`` as a float64 4x4 array, or :class:`GeometryError` when it is not a
    finite, invertible, homogeneous voxel-to-world matrix."""
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu().numpy()
    try:
        out = np.array(affine, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GeometryError("affine is not numeric") from exc
    if out.shape != (4, 4):
        raise GeometryError(f"affine must be 4x4, got shape {out.shape}")
    if not np.all(np.isfinite(out)):
        raise GeometryError("affine has non-finite entries")
    if not np.allclose(out[3], (0.0, 0.0, 0.0, 1.0)):
        raise GeometryError("affine's last row must be (0, 0, 0, 1)")
    spacing = np.linalg.norm(out[:3, :3], axis=0)
    if np.any(spacing <= 1e-6):
        raise GeometryError("affine has a zero-length voxel axis")
    if abs(np.linalg.det(out[:3, :3] / spacing)) < 1e-3:
        raise GeometryError("affine's voxel axes are (nearly) parallel")
    return out


def lps_to_ras(affine_lps: np.ndarray | torch.Tensor) -> np.ndarray:
    """Index->LPS affine to the index->RAS affine of the same grid."""
    return LPS_TO_RAS @ validate_affine(affine_lps)


def ras_to_lps(affine_ras: np.ndarray | torch.Tensor) -> np.ndarray:
    """Index->RAS affine to the index->LPS affine of the same grid."""
    return LPS_TO_RAS @ validate_affine(affine_ras)


def voxel_spacing(affine: np.ndarray | torch.Tensor) -> tuple[float, float, float]:
    """Distance in mm between neighbouring voxels along each array axis (LPS or RAS)."""
    norms = np.linalg.norm(validate_affine(affine)[:3, :3], axis=0)
    return (float(norms[0]), float(norms[1]), float(norms[2]))


def voxel_volume_ml(affine: np.ndarray | torch.Tensor) -> float:
    """Volume of one voxel in millilitres (1 mL = 1000 mm^3)."""
    return float(abs(np.linalg.det(validate_affine(affine)[:3, :3]))) / 1000.0


def ras_orientation(
    affine_ras: np.ndarray | torch.Tensor,
) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """How to reorder a grid so that its axes run (as closely as possible) to R, A, S.

    Returns ``(perm, flips)``: output axis ``i`` is input axis ``perm[i]``, reversed when
    ``flips[i]``. For oblique grids each axis is matched to the world axis it is closest
    to, choosing the assignment that maximises the total alignment (3! candidates).
    """
    m = validate_affine(affine_ras)[:3, :3]
    unit = m / np.linalg.norm(m, axis=0)
    best = max(
        itertools.permutations(range(3)),
        key=lambda p: sum(abs(unit[i, p[i]]) for i in range(3)),
    )
    flips = tuple(bool(unit[i, best[i]] < 0) for i in range(3))
    return tuple(best), flips


def axis_codes(affine_ras: np.ndarray | torch.Tensor) -> str:
    """Closest anatomical direction of each array axis, e.g. ``"RAS"`` or ``"SPL"``."""
    perm, flips = ras_orientation(affine_ras)
    codes = [""] * 3
    for world, (axis, flip) in enumerate(zip(perm, flips, strict=True)):
        codes[axis] = _AXIS_LABELS[world][0 if flip else 1]
    return "".join(codes)


def to_metatensor(array: np.ndarray | torch.Tensor, affine_lps: np.ndarray) -> MetaTensor:
    """A channel-first MONAI MetaTensor (``(C, slice, row, column)``) carrying the RAS
    affine of ``affine_lps``; the array data and axis order are unchanged."""
    data = torch.as_tensor(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else array
    if data.ndim != 4:
        raise GeometryError(f"expected a channel-first 4-D array, got {data.ndim} dimensions")
    affine_ras = torch.as_tensor(lps_to_ras(affine_lps), dtype=torch.float64)
    return MetaTensor(data, affine=affine_ras, meta={"space": SpaceKeys.RAS})


def from_metatensor(tensor: MetaTensor) -> tuple[np.ndarray, np.ndarray]:
    """``(array, affine_lps)`` of a MetaTensor whose affine is RAS (MONAI's default) or
    explicitly LPS (``meta["space"] == "LPS"``)."""
    affine = validate_affine(tensor.affine)
    space = tensor.meta.get("space", SpaceKeys.RAS)
    affine_lps = affine if SpaceKeys(space) == SpaceKeys.LPS else ras_to_lps(affine)
    return tensor.detach().cpu().numpy(), affine_lps


def same_grid(
    shape_a: tuple[int, ...], affine_a: np.ndarray, shape_b: tuple[int, ...], affine_b: np.ndarray
) -> bool:
    """Whether two volumes lie on the same voxel grid (shape and affine, to 1e-4 mm)."""
    return tuple(shape_a) == tuple(shape_b) and bool(
        np.allclose(np.asarray(affine_a), np.asarray(affine_b), atol=1e-4)
    )


def resample_to_grid(
    array: np.ndarray,
    affine_src: np.ndarray,
    shape_dst: tuple[int, int, int],
    affine_dst: np.ndarray,
) -> np.ndarray:
    """``array`` (``(slice, row, column)`` with index -> LPS ``affine_src``) resampled onto
    the grid ``shape_dst`` / ``affine_dst``, trilinear; outside the source it is 0.

    Both affines are in the same patient coordinate system (one Frame of Reference): no
    registration, only interpolation. Returns float32 of ``shape_dst``.
    """
    src = validate_affine(affine_src)
    dst = validate_affine(affine_dst)
    if array.ndim != 3 or len(shape_dst) != 3 or min(shape_dst) < 1:
        raise GeometryError(f"resampling needs 3-D grids; got {array.shape} -> {shape_dst}")
    # destination voxel index -> world -> source voxel index
    to_src = np.linalg.inv(src) @ dst
    axes = [np.arange(n, dtype=np.float64) for n in shape_dst]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (s, r, c, 3)
    index = grid @ to_src[:3, :3].T + to_src[:3, 3]
    # grid_sample (align_corners=False): -1 and 1 are the outer edges of the end voxels;
    # its last dimension is (x, y, z) = (column, row, slice)
    sizes = np.array(array.shape, dtype=np.float64)
    normalized = (2.0 * index + 1.0) / sizes - 1.0
    sample = torch.from_numpy(normalized[..., ::-1].astype(np.float32).copy())[None]
    source = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    out = torch.nn.functional.grid_sample(
        source, sample, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return np.asarray(out[0, 0].numpy(), dtype=np.float32)
