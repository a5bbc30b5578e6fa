"""A NIfTI label file onto the grid of a DICOM series, without resampling.

NIfTI stores an index -> RAS millimetre affine; the series grid
(:func:`dicom_bridge.volume.load_series_volume`) is ``(slice, row, column)`` -> LPS. The
voxel map between the two, ``inv(A_lps) @ diag(-1, -1, 1, 1) @ A_nifti``, must be a signed
permutation of the axes with an integer shift that covers the series grid exactly (each
NIfTI voxel centre on a series voxel centre, tolerance 0.05 voxel and 1e-3 in the
rotation); the labels are then transposed and flipped onto the grid. Anything else (a
label file for another series, a resampled or cropped one) is refused as
``geometry_mismatch``: moving labels between grids by interpolation is not an annotation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from appliance.errors import CaseRefused
from appliance.states import Refusal

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_ROTATION_TOLERANCE = 1e-3
_SHIFT_TOLERANCE = 0.05


def nifti_onto_grid(path: Path, affine_lps: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The integer label values of the NIfTI at ``path`` on the series grid (int64)."""
    import nibabel as nib
    from nibabel.spatialimages import SpatialImage

    try:
        image = nib.load(str(path))
        if not isinstance(image, SpatialImage):
            raise TypeError(f"{type(image).__name__} is not a spatial image")
        data = np.asanyarray(image.dataobj)
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for bad input
        raise CaseRefused(
            Refusal.UNREADABLE, f"not a readable NIfTI file ({type(exc).__name__}: {exc})"[:300]
        ) from exc
    data = np.squeeze(data)
    if data.ndim != 3:
        raise CaseRefused(
            Refusal.BAD_LABEL_VALUES, f"the label image has shape {data.shape}, not 3D"
        )
    if not np.issubdtype(data.dtype, np.integer):
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise CaseRefused(Refusal.BAD_LABEL_VALUES, "the label image holds non-integer values")
        data = rounded
    values = data.astype(np.int64)
    if values.size and int(values.min()) < 0:
        raise CaseRefused(Refusal.BAD_LABEL_VALUES, "the label image holds negative values")
    voxel_map = np.linalg.inv(affine_lps) @ _LPS_FROM_RAS @ affine
    rotation, shift = voxel_map[:3, :3], voxel_map[:3, 3]
    permutation = np.rint(rotation)
    if (
        np.abs(rotation - permutation).max() > _ROTATION_TOLERANCE
        or sorted(np.abs(permutation).sum(axis=0).tolist()) != [1.0, 1.0, 1.0]
        or sorted(np.abs(permutation).sum(axis=1).tolist()) != [1.0, 1.0, 1.0]
    ):
        raise CaseRefused(
            Refusal.GEOMETRY_MISMATCH,
            "the NIfTI voxel axes are not the series' axes (rotated, or a different spacing); "
            "it was not made on this series",
        )
    if np.abs(shift - np.rint(shift)).max() > _SHIFT_TOLERANCE:
        raise CaseRefused(
            Refusal.GEOMETRY_MISMATCH,
            "the NIfTI voxel centres lie between the series' voxel centres",
        )
    # grid index g = P @ n + t. For each grid axis, the NIfTI axis and direction it follows.
    out = values
    axes = [int(np.flatnonzero(permutation[g])[0]) for g in range(3)]
    signs = [int(permutation[g, axes[g]]) for g in range(3)]
    out = np.transpose(out, axes)
    for g in range(3):
        if signs[g] < 0:
            out = np.flip(out, axis=g)
    # After flipping grid axis g, NIfTI index 0 sits at grid index t_g - (n_g - 1).
    origin = [
        int(np.rint(shift[g])) if signs[g] > 0 else int(np.rint(shift[g])) - (out.shape[g] - 1)
        for g in range(3)
    ]
    if tuple(out.shape) != tuple(shape) or any(origin):
        raise CaseRefused(
            Refusal.GEOMETRY_MISMATCH,
            f"the NIfTI grid (shape {tuple(out.shape)}, offset {tuple(origin)} voxels in series "
            f"axes) does not cover the series grid {tuple(shape)} exactly",
        )
    return np.ascontiguousarray(out)
