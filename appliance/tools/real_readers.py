"""Evaluation-only readers of the real cases' files, each returning the boundary format.

The boundary format (DESIGN.md): an array with axes ``(slice, row, column)`` and an index
``[slice, row, column, 1]`` -> DICOM patient coordinates (LPS, mm) affine. How each format
becomes that (the loaders of :mod:`appliance.tools.real_cases` use these):

- A DICOM series the clinical loader rightly rejects (3D-IRCADb: no Frame of Reference
  UID, IPP ``[0, 0, z]``) is read by :func:`read_lenient_series`, an evaluation-only
  reader: pydicom, slices sorted along the image normal, affine from orientation, pixel
  spacing and the slice positions. It is never used on the clinical path.
- NIfTI (nibabel, :func:`nifti_to_boundary`, converted by
  :func:`appliance.flow.nifti_io.ras_to_boundary`): array ``[i, j, k]`` with an index -> RAS
  affine. Reversing the axes gives ``(k, j, i)``; the affine's columns are reordered the
  same way and the world side goes RAS -> LPS (negate x and y;
  :data:`models.geometry.LPS_TO_RAS`).
- NRRD (pynrrd, :func:`nrrd_to_boundary`): read in C order, i.e. ``(k, j, i)``; ``space
  directions`` row ``n`` is the step of file axis ``n``, so the affine's columns are rows
  2, 1, 0; the ``space`` must be stated (LPS is used as is, RAS converted).

A label volume on a grid of its own (TotalSegmentator's NIfTI next to the DICOM series;
the dcmqi NRRD next to its CT) is moved onto the image grid by :func:`align_to_grid`,
which only permutes and flips axes and fails unless the two grids coincide voxel for
voxel: no resampling, so nothing is interpolated. Errors are
:class:`appliance.errors.RealDataError`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import numpy as np

from appliance.errors import RealDataError
from appliance.flow.nifti_io import ras_to_boundary

__all__ = [
    "GRID_TOLERANCE_VOXELS",
    "LENIENT_SPACING_RTOL",
    "LenientSeries",
    "align_to_grid",
    "check_affine",
    "nifti_to_boundary",
    "nrrd_to_boundary",
    "read_lenient_series",
]

#: World x and y change sign between LPS and RAS (same matrix both ways); the same as
#: :data:`models.geometry.LPS_TO_RAS`, repeated here so that loading data does not import
#: torch/monai.
_LPS_RAS: Final = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Largest difference, in voxels, between two grids that :func:`align_to_grid` treats as one.
GRID_TOLERANCE_VOXELS: Final = 0.05
#: Largest relative difference between slice steps that :func:`read_lenient_series` accepts.
LENIENT_SPACING_RTOL: Final = 0.01


def check_affine(affine: np.ndarray, where: str) -> None:
    """:class:`RealDataError` unless ``affine`` is a finite, invertible 4x4 affine."""
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise RealDataError(f"{where}: the affine must be a finite 4x4 matrix")
    if not np.allclose(affine[3], (0.0, 0.0, 0.0, 1.0)):
        raise RealDataError(f"{where}: the affine's last row must be (0, 0, 0, 1)")
    if abs(float(np.linalg.det(affine[:3, :3]))) < 1e-9:
        raise RealDataError(f"{where}: the affine is singular")


def nifti_to_boundary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 3-D NIfTI file as ``(array (k, j, i), index -> LPS affine)`` (module docstring).
    The array keeps the file's data type."""
    import nibabel as nib

    try:
        img: Any = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        affine_ras = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise RealDataError(f"{path.name}: not a readable NIfTI file ({exc})") from exc
    if data.ndim != 3:
        raise RealDataError(f"{path.name}: expected a 3-D NIfTI image, got {data.ndim}-D")
    array, affine = ras_to_boundary(data, affine_ras)
    check_affine(affine, path.name)
    return array, affine


_NRRD_SPACES: Final[Mapping[str, bool]] = MappingProxyType(
    {"left-posterior-superior": True, "lps": True, "right-anterior-superior": False, "ras": False}
)


def nrrd_to_boundary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 3-D NRRD file with ``space``, ``space directions`` and ``space origin`` as
    ``(array (k, j, i), index -> LPS affine)``. The array keeps the file's data type."""
    import nrrd

    try:
        data, header = nrrd.read(str(path), index_order="C")
    except Exception as exc:  # pynrrd raises NRRDError, OSError, ValueError
        raise RealDataError(f"{path.name}: not a readable NRRD file ({exc})") from exc
    space = str(header.get("space", "")).lower()
    if data.ndim != 3 or space not in _NRRD_SPACES:
        raise RealDataError(
            f"{path.name}: need a 3-D NRRD with space LPS or RAS, got {data.ndim}-D, "
            f"space {space or 'missing'}"
        )
    try:
        directions = np.asarray(header["space directions"], dtype=np.float64)
        origin = np.asarray(header["space origin"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise RealDataError(f"{path.name}: space directions/origin missing or invalid") from exc
    if directions.shape != (3, 3) or origin.shape != (3,):
        raise RealDataError(f"{path.name}: space directions must be 3x3 and the origin 3 values")
    affine = np.eye(4)
    affine[:3, 0] = directions[2]
    affine[:3, 1] = directions[1]
    affine[:3, 2] = directions[0]
    affine[:3, 3] = origin
    if not _NRRD_SPACES[space]:
        affine = _LPS_RAS @ affine
    check_affine(affine, path.name)
    return np.ascontiguousarray(data), affine + 0.0


def align_to_grid(
    array: np.ndarray,
    affine: np.ndarray,
    target_shape: Sequence[int],
    target_affine: np.ndarray,
    *,
    what: str = "labels",
) -> np.ndarray:
    """``array`` (on the grid of ``affine``) on the grid ``target_shape``/``target_affine``.

    Only axis permutations and flips are allowed: every target voxel centre must be a source
    voxel centre (within :data:`GRID_TOLERANCE_VOXELS`) and the grids must cover the same
    voxels. Otherwise :class:`RealDataError` says how they differ; nothing is resampled.
    """
    shape = tuple(int(n) for n in target_shape)
    if array.ndim != 3 or len(shape) != 3:
        raise RealDataError(f"{what}: need 3-D grids")
    # target index -> source index
    mapping = np.linalg.inv(affine) @ np.asarray(target_affine, dtype=np.float64)
    linear = mapping[:3, :3]
    rounded = np.rint(linear)
    if not np.allclose(linear, rounded, atol=GRID_TOLERANCE_VOXELS / max(shape)) or not (
        np.array_equal(np.abs(rounded).sum(axis=0), np.ones(3))
        and np.array_equal(np.abs(rounded).sum(axis=1), np.ones(3))
    ):
        raise RealDataError(
            f"{what}: the voxel axes differ from the image's beyond a permutation/flip "
            f"(index mapping {np.round(linear, 3).tolist()}); resampling is not done here"
        )
    perm = [int(np.flatnonzero(rounded[:, a])[0]) for a in range(3)]  # source axis per target
    signs = [int(rounded[perm[a], a]) for a in range(3)]
    for a in range(3):
        b = perm[a]
        if array.shape[b] != shape[a]:
            raise RealDataError(
                f"{what}: {array.shape[b]} voxels along axis {b}, the image has {shape[a]} "
                f"along axis {a}"
            )
        expected = 0.0 if signs[a] > 0 else float(shape[a] - 1)
        if abs(mapping[b, 3] - expected) > GRID_TOLERANCE_VOXELS:
            raise RealDataError(
                f"{what}: the grid is shifted by {mapping[b, 3] - expected:.3f} voxels along "
                f"axis {b} against the image"
            )
    out = np.transpose(array, perm)
    for a in range(3):
        if signs[a] < 0:
            out = np.flip(out, axis=a)
    return np.ascontiguousarray(out)


@dataclass(frozen=True, slots=True, eq=False)
class LenientSeries:
    """What :func:`read_lenient_series` returns: the volume and the sorted slice positions."""

    array: np.ndarray
    affine: np.ndarray
    positions: np.ndarray  # (n, 3) Image Position (Patient) in slice order


def _floats(ds: Any, keyword: str, count: int, name: str) -> np.ndarray:
    value = ds.get(keyword)
    try:
        out = np.array([float(str(v).strip().strip("\x00")) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise RealDataError(f"{name}: {keyword} is missing or not numeric") from exc
    if out.shape != (count,) or not np.all(np.isfinite(out)):
        raise RealDataError(f"{name}: {keyword} must hold {count} finite numbers")
    return out


def read_lenient_series(paths: Sequence[Path]) -> LenientSeries:
    """EVALUATION ONLY: read single-frame images that the clinical loader rejects for
    missing DICOM geometry identifiers (no Frame of Reference UID) but whose Image
    Orientation/Position (Patient) and Pixel Spacing are present and consistent.

    Slices are sorted along the normal ``row_direction x column_direction`` (the convention
    of :func:`dicom_bridge.volume.load_series_volume`); the affine is built from the
    orientation, the pixel spacing and the first slice's position, with the slice step the
    mean step between sorted positions. Rescale Slope/Intercept are applied. Mixed
    orientation, pixel spacing or matrix size, duplicate positions, in-plane shifts and
    uneven slice steps raise :class:`RealDataError`. Files are named by their position in
    ``paths``, never by name.
    """
    import pydicom

    if len(paths) < 2:
        raise RealDataError("a volume needs at least two slices")
    datasets = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-long DS values, trailing NULs
        for index, path in enumerate(paths):
            try:
                datasets.append(pydicom.dcmread(path, force=True))
            except Exception as exc:  # pydicom signals corrupt input with many types
                raise RealDataError(f"paths[{index}] is not readable DICOM") from exc
    names = [f"paths[{i}]" for i in range(len(paths))]
    orientation = _floats(datasets[0], "ImageOrientationPatient", 6, names[0])
    spacing = _floats(datasets[0], "PixelSpacing", 2, names[0])
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    positions = []
    for ds, name in zip(datasets, names, strict=True):
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, name), orientation, atol=1e-4):
            raise RealDataError(f"{name}: Image Orientation (Patient) differs from paths[0]")
        if not np.allclose(_floats(ds, "PixelSpacing", 2, name), spacing, atol=1e-4):
            raise RealDataError(f"{name}: Pixel Spacing differs from paths[0]")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise RealDataError(f"{name}: matrix size differs from paths[0]")
        positions.append(_floats(ds, "ImagePositionPatient", 3, name))
    along_row, along_column = orientation[:3], orientation[3:]
    normal = np.cross(along_row, along_column)
    pos = np.array(positions)
    order = np.argsort(pos @ normal, kind="stable")
    pos = pos[order]
    distances = pos @ normal
    steps = np.diff(distances)
    if np.any(steps < 1e-3):
        raise RealDataError("two slices share one position along the normal")
    step = float(steps.mean())
    if np.any(np.abs(steps - step) > LENIENT_SPACING_RTOL * step):
        raise RealDataError(f"uneven slice steps: {np.round(steps, 3).tolist()} mm")
    in_plane = (pos - pos[0]) - np.outer(distances - distances[0], normal)
    if np.abs(in_plane).max() > 0.1 * float(spacing.min()):
        raise RealDataError("slice positions move within the image plane (tilt or shift)")
    slices = []
    for k in order:
        ds = datasets[int(k)]
        try:
            pixels = ds.pixel_array.astype(np.float32)
        except Exception as exc:
            raise RealDataError(f"{names[int(k)]}: pixel data cannot be decoded") from exc
        slope = float(str(ds.get("RescaleSlope", 1) or 1).strip("\x00 "))
        intercept = float(str(ds.get("RescaleIntercept", 0) or 0).strip("\x00 "))
        slices.append(pixels * np.float32(slope) + np.float32(intercept))
    affine = np.eye(4)
    affine[:3, 0] = normal * step
    affine[:3, 1] = along_column * spacing[0]
    affine[:3, 2] = along_row * spacing[1]
    affine[:3, 3] = pos[0]
    return LenientSeries(np.stack(slices).astype(np.float32), affine + 0.0, pos)
