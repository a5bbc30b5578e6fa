"""NIfTI files to and from the boundary format, for ``appliance segment``.

The boundary format (DESIGN.md): an array with axes ``(slice, row, column)`` and an index
``[slice, row, column, 1]`` -> DICOM patient coordinates (LPS, mm) affine. A NIfTI image
is an array ``[i, j, k]`` (a 4th axis: channels, or labels) with an index -> RAS affine.
The two meet by reversing the spatial axes, ``(k, j, i)``, reordering the affine's
columns the same way, and negating world x and y (RAS <-> LPS). Both directions only
permute and negate, so they are exact, oblique grids included (:func:`ras_to_boundary`,
:func:`boundary_to_ras`).

:func:`read_image` checks the header (dimensions, channels, ``limits.max_series_voxels``,
a finite invertible affine) before it reads any voxel; :func:`write_mask` writes through
a temporary file in the output's folder and renames it, so an output is either complete
or absent.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

import numpy as np

from appliance.errors import SegmentError
from dicom_bridge.limits import KEYS, SizeLimits

#: World x and y change sign between LPS and RAS (the same matrix both ways).
LPS_RAS: Final = np.diag([-1.0, -1.0, 1.0, 1.0])
#: NIfTI file names this module reads and writes.
SUFFIXES: Final = (".nii", ".nii.gz")
_XFORM_SCANNER: Final = 1  # NIfTI xform code "scanner": the affine is scanner coordinates


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(SUFFIXES)


def ras_to_boundary(data: np.ndarray, affine_ras: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI array ``[i, j, k]`` or ``[i, j, k, c]`` and its index -> RAS affine as
    ``(array (k, j, i) or (c, k, j, i), index -> LPS affine)``."""
    if data.ndim not in (3, 4):
        raise ValueError(f"need a 3-D or 4-D array, got {data.ndim}-D")
    array = np.ascontiguousarray(data.transpose(tuple(reversed(range(data.ndim)))))
    affine = LPS_RAS @ np.asarray(affine_ras, dtype=np.float64)[:, [2, 1, 0, 3]]
    return array, affine + 0.0  # no -0.0 entries


def boundary_to_ras(array: np.ndarray, affine_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`ras_to_boundary`: ``(slice, row, column)`` or
    ``(c, slice, row, column)`` and an index -> LPS affine as a NIfTI array ``[i, j, k]``
    (``[i, j, k, c]``) and its index -> RAS affine."""
    if array.ndim not in (3, 4):
        raise ValueError(f"need a 3-D or 4-D array, got {array.ndim}-D")
    data = np.ascontiguousarray(array.transpose(tuple(reversed(range(array.ndim)))))
    affine = (LPS_RAS @ np.asarray(affine_lps, dtype=np.float64))[:, [2, 1, 0, 3]]
    return data, affine + 0.0


def read_image(path: Path, channels: int, limits: SizeLimits) -> tuple[np.ndarray, np.ndarray]:
    """The image of a NIfTI file as ``(float32 array, index -> LPS affine)``: ``(slice, row,
    column)`` for a task of one channel (a 3-D file, or 4-D with one volume), ``(channel,
    slice, row, column)`` for a task of ``channels`` > 1 (a 4-D file of that many volumes,
    in the task's channel order). :class:`SegmentError` for anything else."""
    import nibabel as nib
    from nibabel.spatialimages import SpatialImage

    name = path.name
    try:
        image: Any = nib.load(str(path))
        if not isinstance(image, SpatialImage):
            raise TypeError(f"{type(image).__name__} is not a spatial image")
        shape = tuple(int(v) for v in image.shape)
        affine_ras = np.asarray(image.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for bad input
        raise SegmentError(f"{name}: not a readable NIfTI file ({type(exc).__name__})") from exc
    if len(shape) == 4 and shape[3] == 1 and channels == 1:
        shape = shape[:3]
    wanted = "a 3-D image" if channels == 1 else f"a 4-D image of {channels} volumes"
    if len(shape) != (3 if channels == 1 else 4) or (channels > 1 and shape[3] != channels):
        raise SegmentError(f"{name}: the task needs {wanted}; the file's shape is {shape}")
    if min(shape) < 1:
        raise SegmentError(f"{name}: the image is empty (shape {shape})")
    voxels = int(np.prod(shape[:3]))
    if voxels > limits.max_series_voxels:
        raise SegmentError(
            f"{name}: {voxels} voxels per volume are over the limit of "
            f"{limits.max_series_voxels} ({KEYS['max_series_voxels']})"
        )
    _check_affine(affine_ras, name)
    try:
        data = np.asarray(image.get_fdata(dtype=np.float32), dtype=np.float32)
    except Exception as exc:
        raise SegmentError(f"{name}: its voxels cannot be read ({type(exc).__name__})") from exc
    if not np.all(np.isfinite(data)):
        raise SegmentError(f"{name}: the image holds NaN or infinite values")
    return ras_to_boundary(data.reshape(shape), affine_ras)


def write_mask(path: Path, mask: np.ndarray, affine_lps: np.ndarray) -> None:
    """Write a segmentation (a ``(slice, row, column)`` label map, or ``(label, slice,
    row, column)`` masks of overlapping labels) as a uint8 NIfTI at ``path`` on the grid
    ``affine_lps``; written to a temporary file beside it, then renamed."""
    import nibabel as nib

    data, affine_ras = boundary_to_ras(np.asarray(mask, dtype=np.uint8), affine_lps)
    image = nib.Nifti1Image(data, affine_ras)
    image.header.set_data_dtype(np.uint8)
    image.header.set_xyzt_units("mm")
    image.set_sform(affine_ras, code=_XFORM_SCANNER)
    image.set_qform(affine_ras, code=_XFORM_SCANNER)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial{suffix}")
    try:
        nib.save(image, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_affine(affine: np.ndarray, name: str) -> None:
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise SegmentError(f"{name}: the affine must be a finite 4x4 matrix")
    if not np.allclose(affine[3], (0.0, 0.0, 0.0, 1.0)):
        raise SegmentError(f"{name}: the affine's last row must be (0, 0, 0, 1)")
    if abs(float(np.linalg.det(affine[:3, :3]))) < 1e-9:
        raise SegmentError(f"{name}: the affine is singular")
