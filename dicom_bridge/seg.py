"""Mask -> DICOM Segmentation (highdicom), aligned with the source series slice for slice.

:func:`write_seg` takes the files of the source series, a mask on the grid that
:func:`dicom_bridge.volume.load_series_volume` returns for those files, the segment
descriptions and the model that made it, and returns a :class:`highdicom.seg.Segmentation`
(a pydicom ``Dataset``; ``seg.save_as(path)`` writes it).

The mask. Either a label map, a 3-D integer array ``(slice, row, column)`` whose values are
the segments' ``label_index`` (0: background; segments cannot overlap), or segment masks,
a 4-D array ``(S, slice, row, column)`` of bool (or integer 0/1) where ``mask[i]`` is the
binary mask of the segment with ``label_index == i + 1``; there ``S`` equals the number of
segment descriptions, segments may overlap (a voxel in several segments is in each of
their frames), and only a BINARY SEG can hold them (LABELMAP is refused). The rule is
:mod:`dicom_bridge.segment_masks`.

Slice order. The axes of the label map (of each segment mask) are ``(slice, row, column)``
with the slice index increasing along the image-plane normal ``row_direction x
column_direction``, which may be the reverse of the order the files were stored or
numbered in. :func:`read_source_grid` recomputes
that order from the headers alone (no pixel data is decoded): it sorts the frames by their
position along the normal, exactly as ``load_series_volume`` orders its slices. The source
images are then handed to highdicom in that order, so ``mask[k]`` is the segmentation of
the k-th source image and highdicom copies that image's position into the SEG frame and
references it in the frame's Derivation Image Sequence. For a multi-frame source the mask
is permuted into the stored frame order instead. Passing ``slice_uids`` (the volume's
``sop_instance_uids``) makes the writer check that both orders agree.

Where the provenance lives (all visible in a DICOM dump or a PACS' series view):

=================================  =========================================================
Attribute                          Content
=================================  =========================================================
SeriesDescription (LO, 64)         ``RESEARCH USE ONLY - NOT FOR DIAGNOSIS <model> <version>``
                                   (``AI SEG <model> <version>`` when ``research_only`` is
                                   False); only the model name is shortened to fit (versions
                                   over 26 characters are cut).
ContentLabel (CS, 16)              model name + version, e.g. ``LIVER_V1_2``
ContentDescription (LO, 64)        ``RESEARCH USE ONLY - NOT FOR DIAGNOSIS; model 1.2; round 7``
                                   (or ``AI segmentation; ...``)
ImageComments (LT)                 one sentence with everything: marker, model name,
                                   version, weights sha256, federated round
Segment Sequence, per segment      Segmentation Algorithm Identification: AlgorithmName =
                                   model name, AlgorithmVersion = version, AlgorithmFamily =
                                   (123110, DCM, "Artificial Intelligence"), AlgorithmSource
                                   = manufacturer, AlgorithmParameters =
                                   ``weights_sha256=<hex>,federated_round=<n|none>,
                                   research_only=<true|false>``
ContributingEquipmentSequence      an item "Processing Equipment" (DCM 109102) with
                                   ManufacturerModelName = model name, SoftwareVersions =
                                   model version and ContributionDescription = the same
                                   sentence as ImageComments
Manufacturer / ManufacturerModel-  the appliance (``SegOptions``); SoftwareVersions =
Name / SoftwareVersions            (appliance version, ``<model> <version>``)
=================================  =========================================================

Errors are :class:`SegmentationWriteError` (bad mask, segments or options) and
:class:`SourceSeriesError` (the source files do not form one regular grid); messages name
files by their position (``source_paths[3]``) and never carry patient data.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final, cast

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from dicom_bridge import highdicom_tables
from dicom_bridge.codes import (
    ARTIFICIAL_INTELLIGENCE,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    CodeValue,
)
from dicom_bridge.errors import DicomBridgeError, InvalidUIDError
from dicom_bridge.patient import sanitized_sources
from dicom_bridge.segment_masks import SegmentMasks, is_segment_masks
from dicom_bridge.sop_classes import VOLUME_CLASSES
from dicom_bridge.uids import validate_uid

__all__ = [
    "RESEARCH_MARKER",
    "AlgorithmInfo",
    "SegOptions",
    "SegmentDescription",
    "SegmentationError",
    "SegmentationType",
    "SegmentationWriteError",
    "SourceGrid",
    "SourceSeriesError",
    "content_label",
    "identifying_values",
    "provenance_sentence",
    "read_source_grid",
    "redact",
    "sanitized_warnings",
    "series_description",
    "source_grid_from_headers",
    "write_seg",
]

highdicom_tables.install()  # one IOD table walk per SOP class, not per source image

#: The research-use marker written into every object made while ``research_only`` holds.
RESEARCH_MARKER: Final = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"

#: Largest in-plane offset between slices, as a fraction of the pixel spacing.
_IN_PLANE_TOLERANCE: Final = 0.1
#: Largest distance of a slice from the regular grid, as a fraction of the slice spacing.
_GRID_TOLERANCE: Final = 0.1
_ORIENTATION_TOLERANCE: Final = 1e-3
_SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")
_CS_RE: Final = re.compile(r"[^A-Z0-9_ ]+")
_ALLOWED_SYNTAXES: Final = frozenset({ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless})


class SegmentationError(DicomBridgeError):
    """Base of the errors of the SEG writer and reader."""


class SegmentationWriteError(SegmentationError, ValueError):
    """A SEG cannot be written from this mask, these segments or these options."""


class SourceSeriesError(SegmentationError):
    """The source files do not form one regular grid of frames (or cannot be read)."""


class SegmentationType(StrEnum):
    """How the SEG stores its pixels: one bit-packed frame per segment and slice (BINARY,
    Segmentation Storage 1.2.840.10008.5.1.4.1.1.66.4), or one frame per slice holding the
    segment numbers (LABELMAP, Label Map Segmentation Storage ...66.7)."""

    BINARY = "BINARY"
    LABELMAP = "LABELMAP"


@dataclass(frozen=True, slots=True)
class SegmentDescription:
    """One label of the mask: ``label_index`` is its value in the mask and its segment
    number in the SEG. ``color_rgb`` is a recommended display colour (0-255 each)."""

    label_index: int
    label: str
    category: CodeValue
    property_type: CodeValue
    anatomic_region: CodeValue | None = None
    color_rgb: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.label_index <= 65535:
            raise SegmentationWriteError(
                f"label_index must be 1..65535 (0 is background), not {self.label_index}"
            )
        if not self.label or len(self.label) > 64 or "\\" in self.label:
            raise SegmentationWriteError(
                f"segment label {self.label!r} must be 1-64 characters without a backslash"
            )
        if self.color_rgb is not None and (
            len(self.color_rgb) != 3 or not all(0 <= int(c) <= 255 for c in self.color_rgb)
        ):
            raise SegmentationWriteError(f"color_rgb {self.color_rgb!r} is not three 0-255 values")

    @property
    def is_lesion(self) -> bool:
        """A lesion segment: category "Morphologically Abnormal Structure" (SCT 49755003)."""
        return self.category.same_concept(MORPHOLOGICALLY_ABNORMAL_STRUCTURE)


@dataclass(frozen=True, slots=True)
class AlgorithmInfo:
    """The model that made a mask: name, version, sha256 of its weights, and the federated
    round that produced those weights (None: not from a federated round)."""

    name: str
    version: str
    weights_sha256: str
    federated_round: int | None = None
    family: CodeValue = ARTIFICIAL_INTELLIGENCE

    def __post_init__(self) -> None:
        for what, value in (("name", self.name), ("version", self.version)):
            if not value or len(value) > 64 or "\\" in value or not value.isprintable():
                raise SegmentationWriteError(
                    f"algorithm {what} {value!r} must be 1-64 printable characters "
                    "without a backslash"
                )
        if not _SHA256_RE.fullmatch(self.weights_sha256):
            raise SegmentationWriteError("weights_sha256 must be 64 lower-case hex digits")
        if self.federated_round is not None and self.federated_round < 0:
            raise SegmentationWriteError("federated_round must be >= 0 or None")

    @property
    def round_text(self) -> str:
        return "none" if self.federated_round is None else str(self.federated_round)

    def parameters(self, research_only: bool) -> dict[str, str]:
        """The algorithm parameters recorded in the SEG and SR."""
        return {
            "weights_sha256": self.weights_sha256,
            "federated_round": self.round_text,
            "research_only": "true" if research_only else "false",
        }


@dataclass(frozen=True, slots=True)
class SegOptions:
    """How the SEG is written. Defaults: BINARY, empty frames omitted, research only."""

    segmentation_type: SegmentationType | str = SegmentationType.BINARY
    omit_empty_frames: bool = True
    research_only: bool = True
    manufacturer: str = "SegAppliance"
    manufacturer_model_name: str = "seg-appliance"
    software_version: str = "0.1.0"
    device_serial_number: str = "1"
    series_number: int = 9901
    instance_number: int = 1
    series_instance_uid: str | None = None  # generated when None
    sop_instance_uid: str | None = None  # generated when None
    transfer_syntax_uid: str = ExplicitVRLittleEndian
    institution_name: str | None = None

    def __post_init__(self) -> None:
        try:
            kind = SegmentationType(self.segmentation_type)
        except ValueError as exc:
            raise SegmentationWriteError(
                f"segmentation_type must be BINARY or LABELMAP, not {self.segmentation_type!r}"
            ) from exc
        object.__setattr__(self, "segmentation_type", kind)
        if UID(self.transfer_syntax_uid) not in _ALLOWED_SYNTAXES:
            raise SegmentationWriteError(
                f"transfer syntax {self.transfer_syntax_uid} is not one of "
                "Explicit VR Little Endian, RLE Lossless, JPEG 2000 Lossless"
            )
        if (
            self.segmentation_type == SegmentationType.BINARY
            and UID(self.transfer_syntax_uid) == RLELossless
        ):
            raise SegmentationWriteError("a BINARY SEG cannot be RLE encoded (1 bit per pixel)")
        for uid in (self.series_instance_uid, self.sop_instance_uid):
            if uid is not None:
                try:
                    validate_uid(uid)
                except InvalidUIDError as exc:
                    raise SegmentationWriteError(f"SegOptions: {exc}") from exc
        if not 0 <= self.series_number <= 2**31 - 1 or self.instance_number < 0:
            raise SegmentationWriteError("series_number and instance_number must be >= 0")


# --- keeping patient data out of messages ---------------------------------------------------

_IDENTIFYING: Final = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientAddress",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def identifying_values(datasets: Sequence[Dataset]) -> tuple[str, ...]:
    """Patient-identifying strings of ``datasets`` (and name components), longest first."""
    found: set[str] = set()
    for ds in datasets:
        for keyword in _IDENTIFYING:
            value = ds.get(keyword)
            if value in (None, ""):
                continue
            for item in value if isinstance(value, MultiValue) else [value]:
                text = str(item).strip()
                found.add(text)
                found.update(part for part in re.split(r"[\^=]", text) if len(part) >= 3)
    return tuple(sorted((v for v in found if len(v) >= 2), key=len, reverse=True))


def redact(text: str, values: Sequence[str]) -> str:
    """``text`` with every value of :func:`identifying_values` replaced."""
    for value in values:
        text = text.replace(value, "<redacted>")
    return text


@contextmanager
def sanitized_warnings(values: Sequence[str]) -> Iterator[None]:
    """Re-issue the warnings raised inside (highdicom quotes patient names) redacted."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for item in caught:
        warnings.warn(redact(str(item.message), values), item.category, stacklevel=3)


# --- the source grid ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class SourceGrid:
    """The voxel grid of a source series, from its headers, in ``load_series_volume`` order.

    ``datasets`` are header-only datasets: for single-frame images one per slice in slice
    order; for a multi-frame image the one dataset, with ``frame_numbers[k]`` the
    (1-based) frame of slice ``k``. ``affine`` maps ``[slice, row, column, 1]`` to LPS mm.
    """

    datasets: tuple[Dataset, ...]
    frame_numbers: tuple[int, ...] | None
    affine: np.ndarray
    shape: tuple[int, int, int]
    frame_of_reference_uid: str
    study_instance_uid: str
    series_instance_uid: str

    @property
    def multiframe(self) -> bool:
        return self.frame_numbers is not None

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        """SOP Instance UIDs in slice order (one for a multi-frame source)."""
        return tuple(str(ds.SOPInstanceUID) for ds in self.datasets)

    @property
    def spacing(self) -> tuple[float, float, float]:
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))

    @property
    def orientation(self) -> np.ndarray:
        """ImageOrientationPatient: row direction (along columns), then column direction."""
        return np.concatenate(
            [self.affine[:3, 2] / self.spacing[2], self.affine[:3, 1] / self.spacing[1]]
        )


def read_source_grid(paths: Sequence[Path]) -> SourceGrid:
    """Read the headers of the source series and return its grid (no pixel data read).

    Files that are not CT/MR images (for example an earlier SEG) are skipped. Raises
    :class:`SourceSeriesError` when the images are not one regular, untilted stack.
    """
    headers: list[Dataset] = []
    for index, path in enumerate(paths):
        try:
            headers.append(dcmread(Path(path), stop_before_pixels=True))
        except Exception as exc:  # pydicom raises many types for corrupt input
            raise SourceSeriesError(
                f"source_paths[{index}] cannot be parsed as DICOM ({type(exc).__name__})"
            ) from exc
    return source_grid_from_headers(headers)


def source_grid_from_headers(headers: Sequence[Dataset]) -> SourceGrid:
    """:func:`read_source_grid` of datasets already read (``SeriesVolume.source_headers``).

    ``headers[i]`` stands for ``source_paths[i]``; the same checks run on them. Pixel data,
    if present, is neither needed nor decoded.
    """
    datasets = [
        (index, ds)
        for index, ds in enumerate(headers)
        if UID(str(ds.get("SOPClassUID", "") or "")) in VOLUME_CLASSES
    ]
    if not datasets:
        raise SourceSeriesError(f"none of the {len(headers)} source files is a CT or MR image")
    for keyword in ("SeriesInstanceUID", "FrameOfReferenceUID", "StudyInstanceUID"):
        values = {str(ds.get(keyword, "") or "") for _, ds in datasets}
        if len(values) != 1 or "" in values:
            raise SourceSeriesError(
                f"the source images have {len(values - {''})} different {keyword} value(s)"
                + (" and some have none" if "" in values else "")
            )
    uids = [str(ds.get("SOPInstanceUID", "") or "") for _, ds in datasets]
    if "" in uids or len(set(uids)) != len(uids):
        raise SourceSeriesError("the source images lack or repeat SOP Instance UIDs")
    frames = [int(ds.get("NumberOfFrames", 1) or 1) for _, ds in datasets]
    if any(n > 1 for n in frames) and len(datasets) > 1:
        raise SourceSeriesError("a multi-frame source must be the only image of the series")
    multiframe = frames[0] > 1 or "PerFrameFunctionalGroupsSequence" in datasets[0][1]
    try:
        if multiframe:
            planes = _multiframe_planes(datasets[0][1], frames[0])
        else:
            planes = [_single_frame_plane(ds) for _, ds in datasets]
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        text = redact(_short(exc), identifying_values([datasets[0][1]]))
        raise SourceSeriesError(f"the source geometry cannot be read ({text})") from exc
    names = (
        [f"frame {i + 1}" for i in range(frames[0])]
        if multiframe
        else [f"source_paths[{i}]" for i, _ in datasets]
    )
    order, affine = _grid(planes, names)
    rows, columns = int(datasets[0][1].Rows), int(datasets[0][1].Columns)
    for index, image in datasets:
        if (int(image.Rows), int(image.Columns)) != (rows, columns):
            raise SourceSeriesError(f"source_paths[{index}] has a different matrix size")
    first = datasets[0][1]
    return SourceGrid(
        datasets=(first,) if multiframe else tuple(datasets[i][1] for i in order),
        frame_numbers=tuple(i + 1 for i in order) if multiframe else None,
        affine=affine,
        shape=(len(order), rows, columns),
        frame_of_reference_uid=str(first.FrameOfReferenceUID),
        study_instance_uid=str(first.StudyInstanceUID),
        series_instance_uid=str(first.SeriesInstanceUID),
    )


@dataclass(frozen=True, slots=True)
class _Plane:
    position: np.ndarray  # (3,)
    orientation: np.ndarray  # (6,)
    pixel_spacing: np.ndarray  # (2,)


def _floats(value: Any, count: int) -> np.ndarray:
    out = np.array([float(v) for v in value], dtype=np.float64)
    if out.shape != (count,) or not np.all(np.isfinite(out)):
        raise ValueError(f"expected {count} finite numbers")
    return out


def _single_frame_plane(ds: Dataset) -> _Plane:
    return _Plane(
        _floats(ds.ImagePositionPatient, 3),
        _floats(ds.ImageOrientationPatient, 6),
        _floats(ds.PixelSpacing, 2),
    )


def _functional_item(ds: Dataset, frame: int, keyword: str) -> Dataset:
    for groups_keyword, item_index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = ds.get(groups_keyword)
        if groups and len(groups) > item_index and groups[item_index].get(keyword):
            item: Dataset = groups[item_index].get(keyword)[0]
            return item
    raise KeyError(f"frame {frame + 1} has no {keyword}")


def _multiframe_planes(ds: Dataset, frames: int) -> list[_Plane]:
    return [
        _Plane(
            _floats(_functional_item(ds, f, "PlanePositionSequence").ImagePositionPatient, 3),
            _floats(_functional_item(ds, f, "PlaneOrientationSequence").ImageOrientationPatient, 6),
            _floats(_functional_item(ds, f, "PixelMeasuresSequence").PixelSpacing, 2),
        )
        for f in range(frames)
    ]


def _grid(planes: list[_Plane], names: list[str]) -> tuple[list[int], np.ndarray]:
    """Slice order along the normal and the index -> LPS affine of the stack."""
    orientation = planes[0].orientation
    spacing = planes[0].pixel_spacing
    for plane, name in zip(planes, names, strict=True):
        if np.abs(plane.orientation - orientation).max() > _ORIENTATION_TOLERANCE:
            raise SourceSeriesError(f"{name} is oriented differently from {names[0]}")
        if np.abs(plane.pixel_spacing - spacing).max() > 1e-3:
            raise SourceSeriesError(f"{name} has a different pixel spacing from {names[0]}")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    norm = float(np.linalg.norm(normal))
    if norm < 0.5 or np.any(spacing <= 0):
        raise SourceSeriesError("ImageOrientationPatient or PixelSpacing is degenerate")
    normal /= norm
    positions = np.array([p.position for p in planes])
    along = positions @ normal
    order = [int(i) for i in np.argsort(along, kind="stable")]
    sorted_along = along[order]
    in_plane = positions[order] - np.outer(sorted_along, normal)
    if np.linalg.norm(in_plane - in_plane[0], axis=1).max() > _IN_PLANE_TOLERANCE * spacing.min():
        raise SourceSeriesError(
            "the slices are not stacked along the image normal (gantry tilt or several stacks)"
        )
    n = len(order)
    if n > 1:
        step = (float(sorted_along[-1]) - float(sorted_along[0])) / (n - 1)
        if step <= 1e-3:
            raise SourceSeriesError("the source slices share one position")
        drift = np.abs(sorted_along - (sorted_along[0] + step * np.arange(n)))
        if drift.max() > _GRID_TOLERANCE * step:
            raise SourceSeriesError(
                "the source slices are not evenly spaced (missing slices or duplicates)"
            )
    else:
        step = 1.0  # one slice: any spacing maps index 0 to its plane
    affine = np.eye(4)
    affine[:3, 0] = normal * step
    affine[:3, 1] = col_dir * spacing[0]
    affine[:3, 2] = row_dir * spacing[1]
    affine[:3, 3] = positions[order[0]]
    return order, affine


# --- writing ------------------------------------------------------------------------------


def content_label(algorithm: AlgorithmInfo) -> str:
    """ContentLabel (CS, <= 16): ``LIVER_V1_2`` from name "liver" and version "1.2"."""
    version = _cs(algorithm.version)
    version = "V" + version if not version.startswith("V") else version
    version = version[:15]
    name = _cs(algorithm.name)[: max(0, 16 - len(version) - 1)].rstrip("_")
    return f"{name}_{version}" if name else version


def _cs(text: str) -> str:
    return _CS_RE.sub("_", text.upper()).strip("_ ") or "X"


def content_creator(manufacturer: str, algorithm: AlgorithmInfo) -> str:
    """ContentCreatorName (PN) of an output: ``<manufacturer>^<model> <version>``, each
    component within 64 characters, without the PN delimiters."""

    def part(text: str) -> str:
        return re.sub(r"[\\^=]", " ", text)[:64].strip()

    return f"{part(manufacturer)}^{part(f'{algorithm.name} {algorithm.version}')}"


def processing_equipment(
    manufacturer: str, algorithm: AlgorithmInfo, sentence: str
) -> hd.ContributingEquipment:
    """The ContributingEquipmentSequence item of an output: "Processing Equipment" (DCM
    109102), the model as its model name and version, ``sentence`` as the contribution."""
    return hd.ContributingEquipment(
        manufacturer=manufacturer,
        purpose_of_reference=hd.sr.CodedConcept("109102", "DCM", "Processing Equipment"),
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        contribution_description=sentence,
    )


def provenance_sentence(algorithm: AlgorithmInfo, research_only: bool) -> str:
    """The one-sentence provenance written to ImageComments and ContributionDescription."""
    prefix = f"{RESEARCH_MARKER}. " if research_only else ""
    return (
        f"{prefix}AI segmentation by model {algorithm.name} version {algorithm.version} "
        f"(weights sha256 {algorithm.weights_sha256}), federated round "
        f"{algorithm.round_text}."
    )


def _fit(head: str, name: str, tail: str, limit: int = 64) -> str:
    """``head + name + tail`` within ``limit`` characters, shortening only ``name``."""
    room = limit - len(head) - len(tail)
    if room < 0:
        return (head + tail)[:limit]
    return head + name[:room] + tail


def series_description(algorithm: AlgorithmInfo, research_only: bool, kind: str = "SEG") -> str:
    """SeriesDescription (LO, <= 64) of a SEG or SR: marker (or "AI <kind>"), name, version."""
    head = f"{RESEARCH_MARKER} " if research_only else f"AI {kind} "
    return _fit(head, algorithm.name, f" {algorithm.version}"[:27])


def _content_description(algorithm: AlgorithmInfo, research_only: bool) -> str:
    head = RESEARCH_MARKER if research_only else "AI segmentation"
    return _fit(f"{head}; model ", algorithm.version, f"; round {algorithm.round_text}")


def write_seg(
    source_paths: Sequence[Path],
    mask: np.ndarray,
    segments: Sequence[SegmentDescription],
    algorithm: AlgorithmInfo,
    options: SegOptions | None = None,
    *,
    slice_uids: Sequence[str] | None = None,
    source_headers: Sequence[Dataset] | None = None,
) -> hd.seg.Segmentation:
    """Build the SEG of ``mask`` (a label map, or segment masks, on the source volume
    grid, see module doc).

    ``segments`` describe every non-zero value of a label map (every segment mask of
    segment masks); segments with no voxels are still described (a model that finds no
    tumour says so). ``slice_uids``, when given
    (``SeriesVolume.sop_instance_uids``), must match the slice order found here.

    ``source_headers``, when given (``SeriesVolume.source_headers``: the image datasets
    among ``source_paths`` that ``load_series_volume`` read, pixel data dropped), stand
    for the files, which are then not read again; messages then count positions in
    ``source_headers``.
    """
    options = options or SegOptions()
    if source_headers is not None:
        grid = source_grid_from_headers(source_headers)
    else:
        grid = read_source_grid(source_paths)
    if slice_uids is not None and tuple(slice_uids) != grid.sop_instance_uids:
        raise SegmentationWriteError(
            "slice_uids do not match the slice order of the source headers "
            f"({len(slice_uids)} given, {len(grid.sop_instance_uids)} found)"
        )
    kind = SegmentationType(options.segmentation_type)
    pixels: np.ndarray
    if is_segment_masks(mask):
        if kind is not SegmentationType.BINARY:
            raise SegmentationWriteError(
                f"a {kind.value} SEG cannot hold overlapping segments: segment masks "
                "(a 4D mask, one binary mask per segment) need segmentation_type BINARY"
            )
        stack = SegmentMasks.from_array(
            mask,
            [s.label_index for s in segments],
            error=SegmentationWriteError,
            grid_shape=grid.shape,
        )
        ordered = _check_segments(segments, None, kind)
        # highdicom's stacked-segments form; for a multi-frame source in stored frame order
        pixels = stack.stacked_frames(grid.frame_numbers)
    else:
        labels = _check_mask(mask, grid.shape)
        ordered = _check_segments(segments, labels, kind)
        if grid.frame_numbers is not None:
            # highdicom pairs pixel_array[j] with stored frame j+1 of a multi-frame source.
            stored = np.empty_like(labels)
            for k, frame_number in enumerate(grid.frame_numbers):
                stored[frame_number - 1] = labels[k]
            pixels = stored
        else:
            pixels = labels
    family = algorithm.family.to_coded_concept()
    algorithm_id = hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=family,
        version=algorithm.version,
        source=options.manufacturer,
        parameters=algorithm.parameters(options.research_only),
    )
    descriptions = [_segment_description(s, algorithm_id) for s in ordered]
    sentence = provenance_sentence(algorithm, options.research_only)
    equipment = processing_equipment(options.manufacturer, algorithm, sentence)
    identifiers = identifying_values(grid.datasets[:1])
    try:
        with sanitized_warnings(identifiers):
            seg = hd.seg.Segmentation(
                # highdicom copies the patient and study modules from the first source
                # image only: that one is checked (a copy with invalid patient/study values
                # fixed or dropped); the others give it references and positions.
                source_images=[*sanitized_sources(grid.datasets[:1]), *grid.datasets[1:]],
                pixel_array=pixels,
                segmentation_type=hd.seg.SegmentationTypeValues(kind.value),
                segment_descriptions=descriptions,
                series_instance_uid=options.series_instance_uid or generate_uid(),
                series_number=options.series_number,
                sop_instance_uid=options.sop_instance_uid or generate_uid(),
                instance_number=options.instance_number,
                manufacturer=options.manufacturer,
                manufacturer_model_name=options.manufacturer_model_name,
                # a list, not the annotated tuple: pydicom warns on a tuple for a LO value
                software_versions=cast(
                    Any, [options.software_version, f"{algorithm.name} {algorithm.version}"[:64]]
                ),
                device_serial_number=options.device_serial_number,
                content_description=_content_description(algorithm, options.research_only),
                content_label=content_label(algorithm),
                transfer_syntax_uid=options.transfer_syntax_uid,
                omit_empty_frames=options.omit_empty_frames,
                series_description=series_description(algorithm, options.research_only),
                contributing_equipment=[equipment],
                institution_name=options.institution_name,
                # viewers list a SEG by its creator: the appliance and the model, as a
                # person name (family^given)
                content_creator_name=content_creator(options.manufacturer, algorithm),
            )
    except (ValueError, TypeError) as exc:
        raise SegmentationWriteError(
            f"highdicom refused the SEG: {redact(_short(exc), identifiers)}"
        ) from exc
    seg.ImageComments = sentence
    return seg


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_mask(mask: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.ndim != 3:
        raise SegmentationWriteError(
            "mask must be a 3D label map (slice, row, column) or 4D segment masks "
            "(segment, slice, row, column)"
        )
    if tuple(mask.shape) != shape:
        raise SegmentationWriteError(
            f"mask has shape {tuple(mask.shape)}, the source volume grid is {shape}"
        )
    if mask.dtype == np.bool_:
        return mask.astype(np.uint8)
    if not np.issubdtype(mask.dtype, np.integer):
        raise SegmentationWriteError(f"mask must hold integer labels, not {mask.dtype}")
    low = int(mask.min()) if mask.size and mask.dtype.kind == "i" else 0
    high = int(mask.max()) if mask.size else 0
    if low < 0 or high > 65535:
        raise SegmentationWriteError("mask labels must lie in 0..65535")
    target = np.uint8 if high <= 255 else np.uint16
    return np.ascontiguousarray(mask, dtype=target)


def _check_segments(
    segments: Sequence[SegmentDescription], labels: np.ndarray | None, kind: SegmentationType
) -> list[SegmentDescription]:
    """The segments by label index, checked; ``labels``: the label map (None: segment
    masks, whose shape :class:`SegmentMasks` has checked against the segments)."""
    if not segments:
        raise SegmentationWriteError("at least one segment description is needed")
    ordered = sorted(segments, key=lambda s: s.label_index)
    numbers = [s.label_index for s in ordered]
    if len(set(numbers)) != len(numbers):
        raise SegmentationWriteError(f"segment label indices repeat: {numbers}")
    if kind is SegmentationType.BINARY and numbers != list(range(1, len(numbers) + 1)):
        raise SegmentationWriteError(
            f"a BINARY SEG needs label indices 1..{len(numbers)}, not {numbers}"
        )
    if labels is None:
        return ordered
    undescribed = _undescribed_labels(labels, {0, *numbers})
    if undescribed:
        raise SegmentationWriteError(f"mask values {undescribed[:10]} have no segment description")
    return ordered


def _undescribed_labels(labels: np.ndarray, described: set[int]) -> list[int]:
    """The values of ``labels`` outside ``described``, ascending.

    One pass for the maximum; the values between 1 and it that no segment describes (none
    for a label map whose segments are 1..n) are then looked for one by one, so the usual
    case costs no histogram of the whole volume (``np.bincount`` copies it as int64).
    """
    if not labels.size:
        return []
    high = int(labels.max())
    candidates = [v for v in range(1, high + 1) if v not in described]
    if len(candidates) > 16:  # many gaps: one histogram is cheaper than many passes
        present = np.flatnonzero(np.bincount(labels.ravel(), minlength=1))
        return sorted(set(present.tolist()) - described)
    return [v for v in candidates if bool(np.any(labels == v))]


def _segment_description(
    segment: SegmentDescription, algorithm_id: hd.AlgorithmIdentificationSequence
) -> hd.seg.SegmentDescription:
    color = None
    if segment.color_rgb is not None:
        r, g, b = (int(c) for c in segment.color_rgb)
        color = hd.color.CIELabColor.from_rgb(r, g, b)
    return hd.seg.SegmentDescription(
        segment_number=segment.label_index,
        segment_label=segment.label,
        segmented_property_category=segment.category.to_coded_concept(),
        segmented_property_type=segment.property_type.to_coded_concept(),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_id,
        anatomic_regions=(
            [segment.anatomic_region.to_coded_concept()] if segment.anatomic_region else None
        ),
        display_color=color,
    )
