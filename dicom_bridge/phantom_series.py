"""Write a generated phantom (numpy image + LPS affine) as a DICOM series, and its truth.

The phantom generator lives in ``models`` and this package may not import it, so the
interface is the one every volume crosses between the two: an array with axes
``(slice, row, column)`` and a 4x4 affine mapping ``[slice, row, column, 1]`` to DICOM
patient coordinates (LPS, mm), with the slice index increasing along the image-plane
normal ``row_direction x column_direction`` - the convention of
:meth:`dicom_bridge.synthetic.SeriesGeometry.affine` and of
:func:`dicom_bridge.volume.load_series_volume`.

- :func:`geometry_from_affine` turns such an affine into a
  :class:`~dicom_bridge.synthetic.SeriesGeometry` (origin, direction cosines, spacings).
  An affine whose slice axis runs against the normal is accepted too: the array is
  flipped along its slices first (:func:`canonical_slice_order`), so the series, read
  back, equals the canonical array. A sheared affine (gantry tilt) or one with
  non-orthogonal axes is refused.
- :func:`write_phantom_series` writes the slices with
  :func:`dicom_bridge.synthetic.write_series`. ``reverse_slice_order`` numbers the
  instances (and names the files) head to feet, against the normal, as some scanners do;
  the positions, and so the volume read back, do not change. ``write_series`` formats
  the geometry to 6 significant digits, which moves an oblique series' affine by up to
  ~1e-4 mm; so each file is then re-opened once and given the geometry at full DS
  precision (16 characters), plus any ``extra_attributes``. Read back with
  ``load_series_volume``, the series gives the written array exactly and the affine to
  ~1e-12.
- :func:`save_truth` / :func:`load_truth` keep the truth beside the series as ``.npz``
  (labels, affine, optional boolean masks and JSON metadata), in the canonical slice
  order, so that it lines up voxel for voxel with what ``load_series_volume`` returns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.uid import generate_uid
from pydicom.valuerep import format_number_as_ds

from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series

__all__ = [
    "TRUTH_FILENAME",
    "PhantomTruth",
    "canonical_slice_order",
    "geometry_from_affine",
    "load_truth",
    "save_truth",
    "write_phantom_series",
]

#: Suggested name of the truth file next to a series directory.
TRUTH_FILENAME: Final = "truth.npz"

_ORTHOGONALITY_TOLERANCE: Final = 1e-6
_INT16: Final = np.iinfo(np.int16)
_MODALITIES: Final = ("CT", "MR")
_MASK_PREFIX: Final = "mask_"


def _check_affine(affine: np.ndarray) -> np.ndarray:
    matrix = np.asarray(affine, dtype=np.float64)
    if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
        raise ValueError("affine must be a finite 4x4 matrix")
    if not np.allclose(matrix[3], (0.0, 0.0, 0.0, 1.0)):
        raise ValueError("the last row of the affine must be [0, 0, 0, 1]")
    norms = np.linalg.norm(matrix[:3, :3], axis=0)
    if np.any(norms <= 0):
        raise ValueError("the affine has a zero-length axis")
    unit = matrix[:3, :3] / norms
    gram = unit.T @ unit
    if np.abs(gram - np.eye(3)).max() > _ORTHOGONALITY_TOLERANCE:
        raise ValueError(
            "the affine's axes are not orthogonal (a sheared stack, e.g. a gantry tilt, "
            "cannot be written as a regular series)"
        )
    return matrix


def _slice_axis_reversed(matrix: np.ndarray) -> bool:
    slice_dir = matrix[:3, 0] / np.linalg.norm(matrix[:3, 0])
    col_dir = matrix[:3, 1] / np.linalg.norm(matrix[:3, 1])  # down the rows
    row_dir = matrix[:3, 2] / np.linalg.norm(matrix[:3, 2])  # along a row
    return float(slice_dir @ np.cross(row_dir, col_dir)) < 0


def canonical_slice_order(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``array`` and ``affine`` with the slice index increasing along the normal.

    Returned unchanged (same objects) when they already are; otherwise the array is
    flipped along axis 0 and the affine's slice axis and origin follow, so every voxel
    keeps its position in patient space.
    """
    matrix = _check_affine(affine)
    if array.ndim != 3:
        raise ValueError(f"array must be 3D (slice, row, column), not shape {array.shape}")
    if not _slice_axis_reversed(matrix):
        return array, affine
    flipped = matrix.copy()
    flipped[:3, 3] = matrix[:3, 3] + (array.shape[0] - 1) * matrix[:3, 0]
    flipped[:3, 0] = -matrix[:3, 0]
    return np.ascontiguousarray(array[::-1]), flipped


def geometry_from_affine(shape: tuple[int, ...], affine: np.ndarray) -> SeriesGeometry:
    """The :class:`SeriesGeometry` whose ``affine()`` equals ``affine`` (canonical order).

    Raises :class:`ValueError` for a non-canonical slice axis (use
    :func:`canonical_slice_order` first), a sheared or singular affine, or a shape that is
    not three positive sizes.
    """
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (slices, rows, columns), not {shape}")
    matrix = _check_affine(affine)
    if _slice_axis_reversed(matrix):
        raise ValueError("the slice axis runs against row x column; reorder the slices first")
    spacings = np.linalg.norm(matrix[:3, :3], axis=0)
    col_dir = matrix[:3, 1] / spacings[1]
    row_dir = matrix[:3, 2] / spacings[2]
    return SeriesGeometry(
        slices=int(shape[0]),
        rows=int(shape[1]),
        columns=int(shape[2]),
        pixel_spacing=(float(spacings[1]), float(spacings[2])),
        slice_spacing=float(spacings[0]),
        origin=_vec3(matrix[:3, 3]),
        row_direction=_vec3(row_dir),
        column_direction=_vec3(col_dir),
    )


def _vec3(values: np.ndarray) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


def _as_int16(image: np.ndarray) -> np.ndarray:
    values = np.asarray(image)
    if values.dtype == np.int16:
        return values
    if values.dtype.kind not in "iuf":
        raise ValueError(f"image must be numeric, not {values.dtype}")
    if values.dtype.kind == "f" and not np.array_equal(values, np.rint(values)):
        raise ValueError("image must hold whole numbers (stored values are int16)")
    if values.size and (values.min() < _INT16.min or values.max() > _INT16.max):
        raise ValueError("image values do not fit in int16")
    return values.astype(np.int16)


def write_phantom_series(
    directory: Path,
    image: np.ndarray,
    affine_lps: np.ndarray,
    *,
    modality: str,
    identity: SeriesIdentity | None = None,
    series_description: str | None = None,
    body_part: str | None = None,
    reverse_slice_order: bool = False,
    extra_attributes: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``image`` (stored values, e.g. HU) on ``affine_lps`` as one file per slice.

    ``identity`` defaults to invented identifiers (``PHANTOM^CT``/``PHANTOM^MR``);
    ``series_description`` and ``body_part`` override its fields when given.
    ``extra_attributes`` maps DICOM keywords to values set on every instance (e.g.
    ``{"ContrastBolusAgent": "IODINE"}``). Returns the paths in InstanceNumber order:
    along the normal, or against it with ``reverse_slice_order``.
    """
    if modality not in _MODALITIES:
        raise ValueError(f"modality must be CT or MR, not {modality!r}")
    extra = dict(extra_attributes or {})
    unknown = sorted(k for k in extra if tag_for_keyword(k) is None)
    if unknown:
        raise ValueError(f"unknown DICOM keywords in extra_attributes: {unknown}")
    pixels, affine = canonical_slice_order(_as_int16(image), affine_lps)
    geometry = geometry_from_affine(pixels.shape, affine)
    if identity is None:
        identity = SeriesIdentity(
            patient_name=f"PHANTOM^{modality}",
            patient_id=f"PHANTOM-{modality}-{str(generate_uid())[-8:]}",
        )
    changes: dict[str, Any] = {}
    if series_description is not None:
        changes["series_description"] = series_description
    if body_part is not None:
        changes["body_part"] = body_part
    if changes:
        identity = replace(identity, **changes)
    n = geometry.slices
    order = list(range(n - 1, -1, -1)) if reverse_slice_order else list(range(n))
    paths = write_series(
        Path(directory), geometry, pixels, modality=modality, identity=identity, slice_order=order
    )
    _refine_headers(paths, geometry, extra)
    by_instance = sorted(range(n), key=lambda index: order[index])
    return [paths[index] for index in by_instance]


def _ds(value: float) -> str:
    return format_number_as_ds(float(value) + 0.0)  # + 0.0: no "-0.0"


def _refine_headers(paths: list[Path], geometry: SeriesGeometry, extra: Mapping[str, Any]) -> None:
    """Full-precision geometry (and ``extra``) on each file; ``paths`` in slice order."""
    orientation = [_ds(v) for v in (*geometry.row_direction, *geometry.column_direction)]
    spacing = [_ds(v) for v in geometry.pixel_spacing]
    thickness = _ds(geometry.slice_spacing)
    for index, path in enumerate(paths):
        ds = dcmread(path)
        position = geometry.slice_position(index)
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = orientation
        ds.PixelSpacing = spacing
        ds.SliceThickness = thickness
        ds.SpacingBetweenSlices = thickness
        ds.SliceLocation = _ds(position[2])
        for keyword, value in extra.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)


@dataclass(frozen=True, slots=True, eq=False)
class PhantomTruth:
    """Truth saved with a phantom series: labels on the series grid, masks, metadata."""

    labels: np.ndarray
    affine: np.ndarray
    masks: Mapping[str, np.ndarray] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)


def save_truth(
    path: Path,
    labels: np.ndarray,
    affine: np.ndarray,
    *,
    masks: Mapping[str, np.ndarray] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save labels (uint8), affine, boolean ``masks`` and JSON ``metadata`` as ``.npz``.

    Everything is stored in the canonical slice order (see :func:`canonical_slice_order`),
    the order ``load_series_volume`` returns. ``metadata`` must be JSON-serialisable
    (e.g. lesion centres and diameters). Returns the path written.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D, not shape {labels.shape}")
    if labels.dtype.kind not in "iub" or labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError("labels must be integers in 0..255")
    flipped = _slice_axis_reversed(_check_affine(affine))
    canonical_labels, canonical_affine = canonical_slice_order(labels.astype(np.uint8), affine)
    arrays: dict[str, np.ndarray] = {
        "labels": np.ascontiguousarray(canonical_labels, dtype=np.uint8),
        "affine": np.asarray(canonical_affine, dtype=np.float64),
        "metadata": np.array(json.dumps(dict(metadata or {}), sort_keys=True)),
    }
    for name, mask in (masks or {}).items():
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != labels.shape:
            raise ValueError(f"mask {name!r} has shape {mask.shape}, labels {labels.shape}")
        if not name.isidentifier():
            raise ValueError(f"mask name {name!r} must be an identifier")
        arrays[_MASK_PREFIX + name] = np.ascontiguousarray(mask[::-1] if flipped else mask)
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"truth files end in .npz, not {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)  # type: ignore[arg-type]  # stub: allow_pickle
    return path


def load_truth(path: Path) -> PhantomTruth:
    """Read what :func:`save_truth` wrote."""
    with np.load(Path(path), allow_pickle=False) as data:
        masks = {
            key[len(_MASK_PREFIX) :]: data[key]
            for key in data.files
            if key.startswith(_MASK_PREFIX)
        }
        metadata = json.loads(str(data["metadata"])) if "metadata" in data.files else {}
        return PhantomTruth(
            labels=data["labels"], affine=data["affine"], masks=masks, metadata=metadata
        )
