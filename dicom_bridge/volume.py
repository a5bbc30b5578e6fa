"""Series -> volume: the DICOM image files of one series become a numpy array plus an affine.

:func:`load_series_volume` reads the files with pydicom, checks the series explicitly
(vectorised over the slices) and then assembles it with highdicom's geometry. For a stack
of single-frame instances whose pixels are integers of up to 16 bits with a linear rescale
(Rescale Slope/Intercept, or none; the usual CT and MR), highdicom's
``get_volume_positions`` and ``VolumeGeometry`` give the slice order, spacing and affine
from the checked positions, and the slices are rescaled straight into the result with
highdicom's own arithmetic (float32 slope and intercept), bit for bit what
:func:`highdicom.get_volume_from_series` returns, without its per-slice pixel-transform
objects and without the extra copy that reversing its slice order costs. Any other
single-frame stack (a Modality LUT Sequence, 32-bit or float pixels) goes through
:func:`highdicom.get_volume_from_series`; one multi-frame (Enhanced or Legacy Converted
Enhanced CT/MR) instance through :meth:`highdicom.Image.get_volume`. Either way highdicom
decides the slice order and the affine; this module does no slice sorting of its own.

Conventions of the result (:class:`SeriesVolume`):

- ``array`` is float32 with axes ``(slice, row, column)``; values are modality values (HU
  for CT). No VOI window, presentation LUT or real-world value map is applied.
- ``affine`` maps ``[slice, row, column, 1]`` to DICOM patient coordinates (LPS, mm).
  Slice index increases along the image-plane normal ``row_direction x column_direction``
  (for an axial head-first-supine CT: from feet to head), the same as
  :meth:`dicom_bridge.synthetic.SeriesGeometry.affine`. highdicom's own volumes run the
  other way (right-handed in its ``(slice, down, right)`` index convention), so the
  highdicom volume is flipped along its slice axis before it is returned.

Checks and their reason codes (:class:`VolumeRejection`), in the order they run. Each
failure raises :class:`dicom_bridge.errors.VolumeError` whose ``detail`` explains it
without patient data; files are named by their position in ``paths`` (``paths[3]``),
never by file name. ``frame_of_reference_uid`` is in practice always set: highdicom places
no image without one, so a series lacking it is rejected as ``missing_geometry``.

1. ``unreadable`` - a file cannot be parsed, or an image has no pixel data element.
2. ``no_images`` - no file of a CT/MR image SOP class; other files (SEG, SR, SC) are ignored.
3. ``mixed_instances`` - more than one multi-frame instance, or multi- and single-frame.
4. ``localizer`` - an instance's ImageType contains LOCALIZER (a scout is never a volume).
5. ``mixed_series`` - different Series Instance UIDs or Frame of Reference UIDs.
6. ``unsupported_pixels`` - not one grey-scale sample per pixel (colour, palette).
7. ``missing_geometry`` - no Frame of Reference UID, Image Position/Orientation (Patient)
   or Pixel Spacing, so the voxels cannot be placed in patient space.
   ``too_large`` - a frame, an instance or the whole series declares more pixels or
   voxels than :class:`~dicom_bridge.limits.SizeLimits` allow, in the header or in a
   compressed frame's codestream (checked before anything is decoded; a codestream
   declaring another size than Rows x Columns is ``unreadable``).
8. ``mixed_orientation`` / ``mixed_dimensions`` - orientation, Rows/Columns or Pixel
   Spacing differ between slices (beyond :data:`ORIENTATION_TOLERANCE` /
   :data:`PIXEL_SPACING_TOLERANCE_MM`).
9. ``unreadable`` - the pixel data of each single-frame file is decoded here (once: pydicom
   caches the array and highdicom reuses it), so a truncated file is reported as such
   even when it is the only one. A multi-frame instance is decoded by highdicom while it
   builds the volume; if that fails and the frames do not decode either, the failure is
   reported as ``unreadable`` too.
10. ``single_slice`` - one slice is a 2D image, not a volume.
11. ``gantry_tilt`` - slice positions move within the image plane in proportion to their
    distance along the normal: a sheared stack from a tilted gantry. DECISION: such
    series are rejected, with the tilt angle in degrees in the detail, and are NOT
    resampled onto an orthogonal grid. Resampling would interpolate the data the model
    sees and the mask the radiologist reviews, and a SEG on a resampled grid cannot
    reference the source frames one to one. Checked before the spacing checks, because
    tilted series often also have irregular spacing.
    ``inconsistent_positions`` - positions are off the normal but not in a straight line.
12. ``duplicate_positions`` - two slices at the same position along the normal.
13. ``missing_slices`` - a gap larger than :data:`GAP_FACTOR` times the median spacing.
14. ``uneven_spacing`` - a spacing differs from the median by more than
    ``max(SPACING_RTOL * median, SPACING_ATOL_MM)``, or the small differences add up so
    that a slice lies more than :data:`GRID_TOLERANCE_FRACTION` of a spacing off the grid.
15. ``not_a_volume`` - highdicom refused the series for a reason not caught above (its
    message is kept in the detail).

highdicom is given tolerances slightly looser than the checks above, so that it never
contradicts them; it remains responsible for sorting and for the affine. Where the
checks accept values that are within tolerance but not identical (orientation, pixel
spacing), the in-memory datasets are given the first instance's value, because
highdicom compares those attributes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_bridge import highdicom_tables
from dicom_bridge.errors import MalformedDatasetError, VolumeError
from dicom_bridge.limits import (
    ImageSize,
    SizeLimitError,
    SizeLimits,
    check_codestreams,
    check_image_header,
    check_series_voxels,
)
from dicom_bridge.sop_classes import (
    ENHANCED_CT,
    ENHANCED_MR,
    LEGACY_ENHANCED_CT,
    LEGACY_ENHANCED_MR,
    VOLUME_CLASSES,
)

__all__ = [
    "GAP_FACTOR",
    "GRID_TOLERANCE_FRACTION",
    "ORIENTATION_TOLERANCE",
    "PIXEL_SPACING_TOLERANCE_MM",
    "SPACING_ATOL_MM",
    "SPACING_RTOL",
    "SeriesVolume",
    "VolumeRejection",
    "load_series_volume",
]


class VolumeRejection(StrEnum):
    """Why a series cannot become a volume: the ``reason`` of a :class:`VolumeError`."""

    NO_IMAGES = "no_images"
    UNREADABLE = "unreadable"
    MIXED_INSTANCES = "mixed_instances"
    LOCALIZER = "localizer"
    MIXED_SERIES = "mixed_series"
    UNSUPPORTED_PIXELS = "unsupported_pixels"
    MISSING_GEOMETRY = "missing_geometry"
    MIXED_ORIENTATION = "mixed_orientation"
    MIXED_DIMENSIONS = "mixed_dimensions"
    SINGLE_SLICE = "single_slice"
    GANTRY_TILT = "gantry_tilt"
    INCONSISTENT_POSITIONS = "inconsistent_positions"
    DUPLICATE_POSITIONS = "duplicate_positions"
    MISSING_SLICES = "missing_slices"
    UNEVEN_SPACING = "uneven_spacing"
    NOT_A_VOLUME = "not_a_volume"
    TOO_LARGE = "too_large"


#: Largest difference between corresponding direction cosines of two slices (~0.006 deg).
ORIENTATION_TOLERANCE: Final = 1e-4
#: Largest difference between the Pixel Spacing values of two slices.
PIXEL_SPACING_TOLERANCE_MM: Final = 1e-4
#: Largest in-plane offset of a slice, as a fraction of the smallest pixel spacing.
SHEAR_TOLERANCE_FRACTION: Final = 0.1
#: Two slices closer than this along the normal occupy the same position.
DUPLICATE_TOLERANCE_MM: Final = 0.01
#: A step larger than this times the median spacing is a gap (missing slices).
GAP_FACTOR: Final = 1.5
#: A step may differ from the median spacing by max(SPACING_RTOL * median, SPACING_ATOL_MM).
SPACING_RTOL: Final = 0.01
SPACING_ATOL_MM: Final = 0.01
#: Largest distance of a slice from the regular grid, as a fraction of the spacing.
GRID_TOLERANCE_FRACTION: Final = 0.1

highdicom_tables.install()  # one IOD table walk per SOP class, not per slice

_MULTIFRAME_CLASSES: Final = frozenset(
    {ENHANCED_CT, ENHANCED_MR, LEGACY_ENHANCED_CT, LEGACY_ENHANCED_MR}
)
_MAX_EXC_TEXT: Final = 200


@dataclass(frozen=True, slots=True, eq=False)
class SeriesVolume:
    """A CT/MR series as a regular 3D grid in DICOM patient space.

    ``array`` has axes ``(slice, row, column)`` and holds modality values (HU for CT);
    ``affine`` maps ``[slice, row, column, 1]`` to LPS millimetres. ``sop_instance_uids``
    lists the source instances in slice order (one UID for a multi-frame instance).
    """

    array: np.ndarray
    affine: np.ndarray
    modality: str
    sop_instance_uids: tuple[str, ...]
    frame_of_reference_uid: str | None
    #: The datasets read from ``paths`` (image files only, in ``paths`` order, pixel data
    #: dropped): ``dicom_bridge.seg.write_seg(..., source_headers=...)`` takes them so
    #: that the SEG does not read the source files again. Empty when not loaded from files.
    source_headers: tuple[Dataset, ...] = ()

    def __post_init__(self) -> None:
        if self.array.ndim != 3 or min(self.array.shape) < 1:
            raise ValueError(f"array must be 3D and non-empty, not shape {self.array.shape}")
        if self.affine.shape != (4, 4) or not np.all(np.isfinite(self.affine)):
            raise ValueError("affine must be a finite 4x4 matrix")
        if not np.allclose(self.affine[3], (0.0, 0.0, 0.0, 1.0)):
            raise ValueError("the last row of the affine must be [0, 0, 0, 1]")
        if abs(float(np.linalg.det(self.affine[:3, :3]))) < 1e-12:
            raise ValueError("affine is singular")
        if not self.sop_instance_uids:
            raise ValueError("a volume needs at least one source instance")
        if len(self.sop_instance_uids) not in (1, self.array.shape[0]):
            raise ValueError(
                f"{len(self.sop_instance_uids)} source instances for {self.array.shape[0]} slices"
            )

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along (slice, row, column)."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(slices, rows, columns)``."""
        s, r, c = self.array.shape
        return (int(s), int(r), int(c))


def load_series_volume(paths: Sequence[Path], limits: SizeLimits | None = None) -> SeriesVolume:
    """Read the files of one series and return it as a :class:`SeriesVolume`.

    Files of non-image SOP classes (SEG, SR, secondary capture) among ``paths`` are
    ignored. Raises :class:`VolumeError` with a :class:`VolumeRejection` reason when the
    images do not form one regular, untilted volume (see the module docstring), and with
    ``too_large`` when they declare more than ``limits`` allow (default
    :class:`~dicom_bridge.limits.SizeLimits`); sizes are checked before anything is
    decoded, each compressed frame's own codestream header included.
    """
    instances = _read_images(paths)
    _check_instances(instances)
    _check_sizes(instances, limits if limits is not None else SizeLimits())
    stack = _stack_geometry(instances)
    _check_planes(stack)
    multiframe = instances[0].multiframe
    if not multiframe:
        for inst in instances:
            _decode(inst)
    if len(stack.positions) == 1:
        what = "frame of a multi-frame instance" if multiframe else "single-frame image"
        raise VolumeError(
            VolumeRejection.SINGLE_SLICE, f"the series has one {what}: a 2D image, not a volume"
        )
    tolerances = _check_positions(stack, _tilt_attribute(instances[0].dataset))
    if multiframe:
        volume = _multiframe_volume(instances[0], tolerances)
        uids: tuple[str, ...] = (instances[0].sop_instance_uid,)
        array = np.ascontiguousarray(volume.array, dtype=np.float32)
        affine, frame_of_reference = volume.affine, volume.frame_of_reference_uid
    else:
        rescales = _linear_rescales(instances)
        if rescales is None:  # a Modality LUT or an unusual pixel type: highdicom assembles
            volume, uids = _single_frame_volume(instances, stack, tolerances)
            array = np.ascontiguousarray(volume.array, dtype=np.float32)
            affine, frame_of_reference = volume.affine, volume.frame_of_reference_uid
        else:
            geometry, order = _single_frame_geometry_of(instances, stack, tolerances)
            array = _stack_rescaled(instances, order, rescales)
            uids = _uids_in_order(instances, order)
            affine, frame_of_reference = geometry.affine, geometry.frame_of_reference_uid
    return SeriesVolume(
        array=array,
        affine=np.array(affine, dtype=np.float64) + 0.0,  # no -0.0 entries
        modality=instances[0].modality,
        sop_instance_uids=uids,
        frame_of_reference_uid=str(frame_of_reference) if frame_of_reference else None,
        source_headers=_headers_only(instances),
    )


def _headers_only(instances: list[_Instance]) -> tuple[Dataset, ...]:
    """The datasets without their pixel data (deleting it also drops pydicom's cache)."""
    for inst in instances:
        for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if keyword in inst.dataset:
                delattr(inst.dataset, keyword)
        inst.pixels = None
    return tuple(inst.dataset for inst in instances)


# --- reading --------------------------------------------------------------------------


@dataclass(slots=True)
class _Instance:
    """One image file: the dataset and the header values the checks use."""

    index: int  # position in ``paths``
    dataset: Dataset
    sop_instance_uid: str
    modality: str
    multiframe: bool
    number_of_frames: int
    image_type: tuple[str, ...]
    pixels: np.ndarray | None = None  # the decoded pixel data of a single-frame instance

    @property
    def name(self) -> str:
        return f"paths[{self.index}]"


def _read_images(paths: Sequence[Path]) -> list[_Instance]:
    if not paths:
        raise VolumeError(VolumeRejection.NO_IMAGES, "no files were given")
    instances: list[_Instance] = []
    other_classes: set[str] = set()
    for index, raw_path in enumerate(paths):
        path = Path(raw_path)
        try:
            ds = dcmread(path)
            sop_class = _sop_class(ds)
            if sop_class not in VOLUME_CLASSES:
                other_classes.add(sop_class.name if sop_class else "no SOP class")
                continue
            instances.append(_instance(index, ds, sop_class))
        except VolumeError:
            raise
        except Exception as exc:  # pydicom signals corrupt input with many exception types
            raise VolumeError(
                VolumeRejection.UNREADABLE,
                f"paths[{index}] cannot be parsed as DICOM: {_describe(exc, path, index)}",
            ) from exc
    if not instances:
        seen = ", ".join(sorted(other_classes)) or "none"
        raise VolumeError(
            VolumeRejection.NO_IMAGES,
            f"none of the {len(paths)} files is a CT or MR image (SOP classes seen: {seen})",
        )
    return instances


def _sop_class(ds: Dataset) -> UID:
    value = str(ds.get("SOPClassUID", "") or "").strip()
    if not value and hasattr(ds, "file_meta"):
        value = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "").strip()
    return UID(value)


def _instance(index: int, ds: Dataset, sop_class: UID) -> _Instance:
    if not any(kw in ds for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise VolumeError(
            VolumeRejection.UNREADABLE,
            f"paths[{index}] is an image without pixel data (truncated file?)",
        )
    if not str(ds.get("SOPClassUID", "") or "").strip():
        ds.SOPClassUID = sop_class  # empty in the dataset, present in the file meta
    sop_instance_uid = str(ds.get("SOPInstanceUID", "") or "").strip()
    if not sop_instance_uid and hasattr(ds, "file_meta"):
        sop_instance_uid = str(ds.file_meta.get("MediaStorageSOPInstanceUID", "") or "")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    modality = str(ds.get("Modality", "") or "")
    if not modality:
        modality = "MR" if sop_class in (ENHANCED_MR, LEGACY_ENHANCED_MR) else "CT"
    return _Instance(
        index=index,
        dataset=ds,
        sop_instance_uid=sop_instance_uid,
        modality=modality,
        multiframe=sop_class in _MULTIFRAME_CLASSES or frames > 1,
        number_of_frames=frames,
        image_type=tuple(str(v).upper() for v in _as_list(ds.get("ImageType"))),
    )


def _as_list(value: Any) -> list[Any]:
    """A DICOM value as a list: empty for no value, one item for a single value."""
    if value is None or value == "":
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def _describe(exc: BaseException, path: Path, index: int) -> str:
    """The exception as text without the file path (paths may name patients)."""
    text = str(exc).replace(str(path), f"paths[{index}]")
    if len(path.name) >= 5:  # a short name such as "1" would garble the message
        text = text.replace(path.name, f"paths[{index}]")
    text = " ".join(text.split())
    if len(text) > _MAX_EXC_TEXT:
        text = text[: _MAX_EXC_TEXT - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- header checks --------------------------------------------------------------------


def _check_instances(instances: list[_Instance]) -> None:
    multi = [inst for inst in instances if inst.multiframe]
    if multi and len(instances) > 1:
        raise VolumeError(
            VolumeRejection.MIXED_INSTANCES,
            f"{len(multi)} multi-frame and {len(instances) - len(multi)} single-frame "
            "instances: a volume is built from one multi-frame instance or from "
            "single-frame instances only",
        )
    localizers = [inst for inst in instances if "LOCALIZER" in inst.image_type]
    if localizers:
        if len(localizers) == len(instances):
            detail = f"all {len(instances)} images are localizers (ImageType LOCALIZER)"
        else:
            detail = (
                f"the series mixes {len(localizers)} localizer image(s) "
                f"({localizers[0].name}, ...) with {len(instances) - len(localizers)} other "
                "images"
            )
        raise VolumeError(VolumeRejection.LOCALIZER, detail)
    for keyword, what in (
        ("SeriesInstanceUID", "Series Instance UIDs"),
        ("FrameOfReferenceUID", "Frame of Reference UIDs"),
    ):
        values = {str(inst.dataset.get(keyword, "") or "") for inst in instances}
        if len(values) > 1:
            raise VolumeError(
                VolumeRejection.MIXED_SERIES, f"the images have {len(values)} different {what}"
            )
    for inst in instances:
        ds = inst.dataset
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2") or "")
        if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
            raise VolumeError(
                VolumeRejection.UNSUPPORTED_PIXELS,
                f"{inst.name} has {samples} sample(s) per pixel, photometric "
                f"interpretation {photometric!r}; only grey-scale images form a volume",
            )


@dataclass(frozen=True, slots=True)
class _Stack:
    """Per-slice geometry: one row per single-frame file, or per frame."""

    positions: np.ndarray  # (n, 3) Image Position (Patient)
    orientations: np.ndarray  # (n, 6) Image Orientation (Patient)
    pixel_spacings: np.ndarray  # (n, 2)
    dimensions: np.ndarray  # (n, 2) Rows, Columns
    names: tuple[str, ...]  # how messages refer to each slice

    @property
    def orientation(self) -> np.ndarray:
        return np.asarray(self.orientations[0])


def _stack_geometry(instances: list[_Instance]) -> _Stack:
    first = instances[0]
    if not str(first.dataset.get("FrameOfReferenceUID", "") or ""):
        raise VolumeError(
            VolumeRejection.MISSING_GEOMETRY,
            f"{first.name} has no Frame of Reference UID: its positions cannot be related "
            "to a patient coordinate system",
        )
    try:
        if first.multiframe:
            return _multiframe_geometry(first)
        return _single_frame_geometry(instances)
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise VolumeError(
            VolumeRejection.MISSING_GEOMETRY, f"geometry attributes cannot be read: {exc}"
        ) from exc


def _single_frame_geometry(instances: list[_Instance]) -> _Stack:
    positions, orientations, spacings, dims = [], [], [], []
    for inst in instances:
        ds = inst.dataset
        missing = [
            kw
            for kw in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
            if not ds.get(kw)
        ]
        if missing:
            raise VolumeError(
                VolumeRejection.MISSING_GEOMETRY,
                f"{inst.name} has no {', '.join(missing)}: it cannot be placed in patient space",
            )
        positions.append(_floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", inst))
        orientations.append(_floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", inst))
        spacings.append(_floats(ds.PixelSpacing, 2, "PixelSpacing", inst))
        dims.append((int(ds.Rows), int(ds.Columns)))
    return _Stack(
        positions=np.array(positions),
        orientations=np.array(orientations),
        pixel_spacings=np.array(spacings),
        dimensions=np.array(dims),
        names=tuple(inst.name for inst in instances),
    )


def _multiframe_geometry(inst: _Instance) -> _Stack:
    ds = inst.dataset
    n = inst.number_of_frames
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) != n:
        raise VolumeError(
            VolumeRejection.UNREADABLE,
            f"{inst.name} has {len(per_frame)} per-frame functional groups for {n} frames",
        )
    positions, orientations, spacings = [], [], []
    for frame in range(n):
        position = _functional_item(ds, frame, "PlanePositionSequence")
        orientation = _functional_item(ds, frame, "PlaneOrientationSequence")
        measures = _functional_item(ds, frame, "PixelMeasuresSequence")
        missing = [
            name
            for name, item, kw in (
                ("plane position", position, "ImagePositionPatient"),
                ("plane orientation", orientation, "ImageOrientationPatient"),
                ("pixel spacing", measures, "PixelSpacing"),
            )
            if item is None or not item.get(kw)
        ]
        if missing:
            raise VolumeError(
                VolumeRejection.MISSING_GEOMETRY,
                f"frame {frame + 1} of {inst.name} has no {', '.join(missing)} in its "
                "functional groups: the frames cannot be placed in patient space",
            )
        assert position is not None and orientation is not None and measures is not None
        positions.append(_floats(position.ImagePositionPatient, 3, "ImagePositionPatient", inst))
        orientations.append(
            _floats(orientation.ImageOrientationPatient, 6, "ImageOrientationPatient", inst)
        )
        spacings.append(_floats(measures.PixelSpacing, 2, "PixelSpacing", inst))
    return _Stack(
        positions=np.array(positions),
        orientations=np.array(orientations),
        pixel_spacings=np.array(spacings),
        dimensions=np.tile((int(ds.Rows), int(ds.Columns)), (n, 1)),
        names=tuple(f"frame {i + 1}" for i in range(n)),
    )


def _functional_item(ds: Dataset, frame: int, keyword: str) -> Dataset | None:
    """The first item of ``keyword`` for ``frame``: per-frame groups first, then shared."""
    for groups_keyword, item_index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = ds.get(groups_keyword)
        if not groups or len(groups) <= item_index:
            continue
        inner = groups[item_index].get(keyword)
        if inner:
            item: Dataset = inner[0]
            return item
    return None


def _floats(value: object, count: int, keyword: str, inst: _Instance) -> list[float]:
    numbers = [float(v) for v in _as_list(value)]
    if len(numbers) != count or not all(math.isfinite(v) for v in numbers):
        raise VolumeError(
            VolumeRejection.MISSING_GEOMETRY,
            f"{inst.name} has {keyword} with {len(numbers)} value(s); {count} finite numbers "
            "are needed",
        )
    return numbers


def _check_planes(stack: _Stack) -> None:
    """Same orientation, matrix size and pixel spacing on every slice."""
    row, col = stack.orientation[:3], stack.orientation[3:]
    if not (
        np.isclose(np.linalg.norm(row), 1.0, atol=1e-3)
        and np.isclose(np.linalg.norm(col), 1.0, atol=1e-3)
        and abs(float(row @ col)) < 1e-3
    ):
        raise VolumeError(
            VolumeRejection.MISSING_GEOMETRY,
            f"{stack.names[0]}: ImageOrientationPatient is not two orthogonal unit vectors",
        )
    deviation = np.abs(stack.orientations - stack.orientation).max(axis=1)
    if deviation.max() > ORIENTATION_TOLERANCE:
        worst = int(deviation.argmax())
        raise VolumeError(
            VolumeRejection.MIXED_ORIENTATION,
            f"{stack.names[worst]} is oriented differently from {stack.names[0]} (direction "
            f"cosines differ by up to {deviation.max():.4g}); the images are not one stack",
        )
    odd_dims = np.flatnonzero(np.any(stack.dimensions != stack.dimensions[0], axis=1))
    if odd_dims.size:
        i = int(odd_dims[0])
        raise VolumeError(
            VolumeRejection.MIXED_DIMENSIONS,
            f"{stack.names[i]} has {stack.dimensions[i][0]}x{stack.dimensions[i][1]} pixels, "
            f"{stack.names[0]} has {stack.dimensions[0][0]}x{stack.dimensions[0][1]}",
        )
    spacing_dev = np.abs(stack.pixel_spacings - stack.pixel_spacings[0]).max(axis=1)
    if spacing_dev.max() > PIXEL_SPACING_TOLERANCE_MM:
        i = int(spacing_dev.argmax())
        raise VolumeError(
            VolumeRejection.MIXED_DIMENSIONS,
            f"{stack.names[i]} has pixel spacing {_mm(stack.pixel_spacings[i])}, "
            f"{stack.names[0]} has {_mm(stack.pixel_spacings[0])}",
        )
    if np.any(stack.pixel_spacings[0] <= 0):
        raise VolumeError(
            VolumeRejection.MISSING_GEOMETRY,
            f"{stack.names[0]} has a non-positive pixel spacing",
        )


def _mm(values: np.ndarray) -> str:
    return " x ".join(f"{float(v):.4g}" for v in values) + " mm"


def _check_sizes(instances: list[_Instance], limits: SizeLimits) -> None:
    """Header sizes, the series' voxel count and each compressed frame's declared size,
    all before any pixel data is decoded."""
    sizes: list[ImageSize] = []
    for inst in instances:
        try:
            size = check_image_header(inst.dataset, limits)
        except SizeLimitError as exc:
            raise VolumeError(VolumeRejection.TOO_LARGE, f"{inst.name}: {exc}") from exc
        except MalformedDatasetError as exc:
            raise VolumeError(VolumeRejection.UNREADABLE, f"{inst.name}: {exc}") from exc
        if size is not None:
            sizes.append(size)
    try:
        check_series_voxels(sizes, limits)
    except SizeLimitError as exc:
        raise VolumeError(VolumeRejection.TOO_LARGE, str(exc)) from exc
    for inst in instances:
        meta = getattr(inst.dataset, "file_meta", None)
        transfer_syntax = UID(str(meta.get("TransferSyntaxUID", "") if meta else ""))
        try:
            check_codestreams(inst.dataset, transfer_syntax, limits)
        except SizeLimitError as exc:
            raise VolumeError(VolumeRejection.TOO_LARGE, f"{inst.name}: {exc}") from exc
        except MalformedDatasetError as exc:
            raise VolumeError(
                VolumeRejection.UNREADABLE, f"the pixel data of {inst.name} is broken: {exc}"
            ) from exc


def _decode(inst: _Instance) -> None:
    """Decode the pixel data once (pydicom caches it; highdicom reuses the cache)."""
    try:
        inst.pixels = inst.dataset.pixel_array
    except Exception as exc:  # decoders raise ValueError, RuntimeError, NotImplementedError...
        path = Path(str(getattr(inst.dataset, "filename", "") or "?"))
        raise VolumeError(
            VolumeRejection.UNREADABLE,
            f"the pixel data of {inst.name} cannot be decoded: {_describe(exc, path, inst.index)}",
        ) from exc


def _tilt_attribute(ds: Dataset) -> float | None:
    try:
        value = ds.get("GantryDetectorTilt")
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


# --- position checks --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Tolerances:
    """What highdicom is told, a little looser than the checks it follows."""

    atol: float
    perpendicular_tol: float


def _check_positions(stack: _Stack, tilt_attribute: float | None) -> _Tolerances:
    row, col = stack.orientation[:3], stack.orientation[3:]
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    along = stack.positions @ normal  # distance of each slice along the normal
    in_plane = stack.positions - np.outer(along, normal)
    shear_tol = SHEAR_TOLERANCE_FRACTION * float(stack.pixel_spacings[0].min())

    centred = in_plane - in_plane.mean(axis=0)
    if np.linalg.norm(centred, axis=1).max() > shear_tol:
        _reject_off_normal(along, centred, shear_tol, tilt_attribute, stack)

    order = np.argsort(along, kind="stable")
    steps = np.diff(along[order])
    duplicates = np.flatnonzero(steps < DUPLICATE_TOLERANCE_MM)
    if duplicates.size:
        a, b = order[duplicates[0]], order[duplicates[0] + 1]
        raise VolumeError(
            VolumeRejection.DUPLICATE_POSITIONS,
            f"{duplicates.size} pair(s) of slices share a position, e.g. {stack.names[a]} and "
            f"{stack.names[b]} (repeated acquisition or several series in one?)",
        )
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if gaps.size:
        i = int(gaps[0])
        missing = max(1, round(float(steps[i]) / median) - 1)
        raise VolumeError(
            VolumeRejection.MISSING_SLICES,
            f"a gap of {steps[i]:.3g} mm between {stack.names[order[i]]} and "
            f"{stack.names[order[i + 1]]}, where the median spacing is {median:.3g} mm: "
            f"about {missing} slice(s) missing ({gaps.size} gap(s) in all)",
        )
    spacing_tol = max(SPACING_RTOL * median, SPACING_ATOL_MM)
    deviation = np.abs(steps - median)
    if deviation.max() > spacing_tol:
        raise VolumeError(
            VolumeRejection.UNEVEN_SPACING,
            f"slice spacing varies from {steps.min():.4g} to {steps.max():.4g} mm around a "
            f"median of {median:.4g} mm, more than the {spacing_tol:.3g} mm tolerance",
        )
    # Steps that are each within tolerance can still add up to a drift off the grid.
    sorted_along = along[order]
    mean_step = (float(sorted_along[-1]) - float(sorted_along[0])) / (len(steps))
    drift = np.abs(sorted_along - (sorted_along[0] + mean_step * np.arange(len(along))))
    if drift.max() > GRID_TOLERANCE_FRACTION * mean_step:
        worst = int(drift.argmax())
        raise VolumeError(
            VolumeRejection.UNEVEN_SPACING,
            f"{stack.names[order[worst]]} lies {drift[worst]:.3g} mm off the regular "
            f"{mean_step:.4g} mm grid: small spacing differences add up along the stack",
        )
    # highdicom compares each step with the mean step (within 2x our tolerance of the
    # median) and each first-to-slice direction with the normal (within 2x shear_tol).
    worst_angle = math.atan2(2 * shear_tol, float(steps.min()))
    return _Tolerances(
        atol=2 * spacing_tol + 1e-6,
        perpendicular_tol=max(1e-3, 1.0 - math.cos(worst_angle) + 1e-6),
    )


def _reject_off_normal(
    along: np.ndarray,
    centred: np.ndarray,
    shear_tol: float,
    tilt_attribute: float | None,
    stack: _Stack,
) -> None:
    """Positions leave the normal: a linear shear is a gantry tilt, anything else is not."""
    d = along - along.mean()
    denominator = float(d @ d)
    if denominator > 1e-12:
        slope = (d @ centred) / denominator  # in-plane mm per mm along the normal
        residual = np.linalg.norm(centred - np.outer(d, slope), axis=1).max()
        if residual <= shear_tol:
            angle = math.degrees(math.atan(float(np.linalg.norm(slope))))
            stated = (
                f"; GantryDetectorTilt is {tilt_attribute:g} degrees"
                if tilt_attribute is not None
                else ""
            )
            raise VolumeError(
                VolumeRejection.GANTRY_TILT,
                f"the slices are stacked {angle:.1f} degrees off the normal of the image "
                f"plane (gantry tilt{stated}); tilted series are rejected, not resampled",
            )
    offsets = np.linalg.norm(centred, axis=1)
    worst = int(offsets.argmax())
    raise VolumeError(
        VolumeRejection.INCONSISTENT_POSITIONS,
        f"slice positions do not lie on one line along the normal: {stack.names[worst]} is "
        f"{offsets[worst]:.3g} mm off in the image plane",
    )


# --- assembly by highdicom ----------------------------------------------------------------

_TRANSFORMS: Final = {
    "dtype": np.float32,
    "apply_real_world_transform": False,
    "apply_modality_transform": None,  # applied when present (Rescale or Modality LUT)
    "apply_voi_transform": False,
    "apply_presentation_lut": False,
    "apply_palette_color_lut": False,
    "apply_icc_profile": False,
}

_HIGHDICOM_MESSAGES: Final = (
    ("same orientation", VolumeRejection.MIXED_ORIENTATION),
    ("orientations are not consistent", VolumeRejection.MIXED_ORIENTATION),
    ("same spacing", VolumeRejection.MIXED_DIMENSIONS),
    ("frame of reference", VolumeRejection.MIXED_SERIES),
    ("same series", VolumeRejection.MIXED_SERIES),
    ("multiple frames found at one or more plane positions", VolumeRejection.DUPLICATE_POSITIONS),
)


def _translate(exc: Exception) -> VolumeError:
    message = " ".join(str(exc).split())[:_MAX_EXC_TEXT]
    lowered = message.lower()
    for fragment, reason in _HIGHDICOM_MESSAGES:
        if fragment in lowered:
            return VolumeError(reason, f"highdicom: {message}")
    return VolumeError(
        VolumeRejection.NOT_A_VOLUME,
        f"highdicom cannot build a volume: {type(exc).__name__}: {message}",
    )


def _single_frame_volume(
    instances: list[_Instance], stack: _Stack, tolerances: _Tolerances
) -> tuple[hd.Volume, tuple[str, ...]]:
    datasets = [inst.dataset for inst in instances]
    reference = datasets[0]
    for ds, orientation, spacing in zip(
        datasets, stack.orientations, stack.pixel_spacings, strict=True
    ):
        # Within tolerance (checked), but highdicom compares these exactly.
        if not np.array_equal(orientation, stack.orientation):
            ds.ImageOrientationPatient = reference.ImageOrientationPatient
        if not np.array_equal(spacing, stack.pixel_spacings[0]):
            ds.PixelSpacing = reference.PixelSpacing
    try:
        volume = hd.get_volume_from_series(
            datasets,
            atol=tolerances.atol,
            perpendicular_tol=tolerances.perpendicular_tol,
            **_TRANSFORMS,  # type: ignore[arg-type]
        )
    except Exception as exc:  # translated where the third-party error enters
        raise _translate(exc) from exc
    volume = _along_normal(volume)
    order = _slice_order(stack, volume.inverse_affine)
    return volume, _uids_in_order(instances, order)


def _slice_order(stack: _Stack, inverse_affine: np.ndarray) -> list[int]:
    """Which slice each instance became: its position mapped through the inverse affine."""
    homogeneous = np.column_stack([stack.positions, np.ones(len(stack.positions))])
    slice_index = (homogeneous @ np.asarray(inverse_affine).T)[:, 0]
    order = np.rint(slice_index).astype(int)
    if sorted(order.tolist()) != list(range(len(stack.positions))) or not np.allclose(
        slice_index, order, atol=0.25
    ):
        raise VolumeError(
            VolumeRejection.NOT_A_VOLUME,
            "the slice positions do not match the grid highdicom built",
        )
    return [int(k) for k in order]


def _uids_in_order(instances: list[_Instance], order: list[int]) -> tuple[str, ...]:
    uids = [""] * len(instances)
    for inst, k in zip(instances, order, strict=True):
        uids[k] = inst.sop_instance_uid
    return tuple(uids)


# --- single-frame assembly without per-instance highdicom objects -------------------------------
#
# hd.get_volume_from_series builds a pixel transform per dataset (each one looks the SOP class
# up in the IOD tables) and returns the slices against the normal, so that the flip to our
# convention costs one more copy of the volume. For the common case, a linear rescale (or
# none) of integer pixels of up to 16 bits, the same result is assembled here: highdicom
# still computes the spacing, the slice order and the affine from the checked positions
# (get_volume_positions, VolumeGeometry), and the rescale repeats highdicom's arithmetic
# exactly (float32 slope and intercept; multiply skipped for slope 1, add for intercept 0),
# so the array is bit-identical. Anything else (Modality LUT Sequence, float or 32-bit
# pixels, functional groups in a single-frame image) goes through hd.get_volume_from_series.

_Rescale = tuple[np.float32, np.float32]


def _linear_rescales(instances: list[_Instance]) -> list[_Rescale] | None:
    """Each instance's (slope, intercept) as highdicom applies it; None where not linear."""
    rescales: list[_Rescale] = []
    shape = instances[0].pixels.shape if instances[0].pixels is not None else None
    for inst in instances:
        rescale = _linear_rescale(inst)
        if rescale is None or inst.pixels is None or inst.pixels.shape != shape:
            return None
        rescales.append(rescale)
    return rescales


def _linear_rescale(inst: _Instance) -> _Rescale | None:
    ds = inst.dataset
    pixels = inst.pixels
    if (
        pixels is None
        or pixels.ndim != 2
        or pixels.dtype.kind not in "iu"
        or pixels.dtype.itemsize > 2
        or "PixelData" not in ds
        or any(
            keyword in ds
            for keyword in (
                "ModalityLUTSequence",
                "PixelValueTransformationSequence",
                "SharedFunctionalGroupsSequence",
                "PerFrameFunctionalGroupsSequence",
            )
        )
    ):
        return None
    try:
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        if slope or intercept:  # highdicom's rule: empty values mean 1 and 0
            return np.float32(float(slope or 1.0)), np.float32(float(intercept or 0.0))
    except (TypeError, ValueError):
        return None  # highdicom reports it
    return np.float32(1.0), np.float32(0.0)


def _single_frame_geometry_of(
    instances: list[_Instance], stack: _Stack, tolerances: _Tolerances
) -> tuple[hd.VolumeGeometry, list[int]]:
    """highdicom's spacing and affine for the checked positions, and each instance's slice."""
    rows, columns = (int(v) for v in stack.dimensions[0])
    try:
        spacing, positions = hd.spatial.get_volume_positions(
            stack.positions.tolist(),
            stack.orientation.tolist(),
            atol=tolerances.atol,
            perpendicular_tol=tolerances.perpendicular_tol,
        )
        if spacing is None or positions is None:
            raise ValueError("Series is not a regularly-spaced volume.")
        geometry = hd.VolumeGeometry.from_attributes(
            image_position=stack.positions[positions.index(0)].tolist(),
            image_orientation=stack.orientation.tolist(),
            rows=rows,
            columns=columns,
            pixel_spacing=stack.pixel_spacings[0].tolist(),
            spacing_between_slices=spacing,
            number_of_frames=len(instances),
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            frame_of_reference_uid=str(instances[0].dataset.FrameOfReferenceUID),
        )
        geometry = geometry.ensure_handedness(hd.AxisHandedness.LEFT_HANDED, flip_axis=0)
    except Exception as exc:  # translated where the third-party error enters
        raise _translate(exc) from exc
    return geometry, _slice_order(stack, geometry.inverse_affine)


def _stack_rescaled(
    instances: list[_Instance], order: list[int], rescales: list[_Rescale]
) -> np.ndarray:
    first = instances[0].pixels
    assert first is not None  # _linear_rescales checked every instance
    out = np.empty((len(instances), *first.shape), dtype=np.float32)
    for inst, k, (slope, intercept) in zip(instances, order, rescales, strict=True):
        target = out[k]
        target[...] = inst.pixels  # integers of up to 16 bits are exact in float32
        if slope != 1.0:
            np.multiply(target, slope, out=target)
        if intercept != 0.0:
            np.add(target, intercept, out=target)
    return out


def _multiframe_volume(inst: _Instance, tolerances: _Tolerances) -> hd.Volume:
    ds = inst.dataset
    path = Path(str(getattr(ds, "filename", "") or "?"))
    try:
        if not ds.file_meta.TransferSyntaxUID.is_little_endian:
            # highdicom parses little-endian datasets only: byte-swap the (uncompressed)
            # pixel data in memory. The other attributes are already decoded values.
            pixels = ds.pixel_array
            ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    except Exception as exc:
        raise VolumeError(
            VolumeRejection.UNREADABLE,
            f"the pixel data of {inst.name} cannot be decoded: {_describe(exc, path, inst.index)}",
        ) from exc
    try:
        image = hd.Image.from_dataset(ds, copy=False)
        volume = image.get_volume(
            atol=tolerances.atol,
            perpendicular_tol=tolerances.perpendicular_tol,
            **_TRANSFORMS,  # type: ignore[arg-type]
        )
    except Exception as exc:
        # Geometry was checked above, so first find out whether the frames decode at all.
        _decode(inst)
        raise _translate(exc) from exc
    return _along_normal(volume)


def _along_normal(volume: hd.Volume) -> hd.Volume:
    """Order slices along row x column (flip highdicom's right-handed slice axis)."""
    flipped: hd.Volume = volume.ensure_handedness(hd.AxisHandedness.LEFT_HANDED, flip_axis=0)
    return flipped
