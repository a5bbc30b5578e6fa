"""Size limits: every size a received dataset declares is bounded before it is allocated.

A sender controls every number in a dataset's header and in its compressed frames'
codestreams, and the decoders allocate what those numbers say. :class:`SizeLimits`
bounds them; its fields are the appliance's ``[limits]`` configuration keys (bytes here,
MiB there), and every refusal names its key:

* ``max_instance_bytes`` (``limits.max_instance_mb``): the encoded dataset of one
  C-STORE while it arrives, and a deflated dataset once inflated (the listener);
* ``max_frame_pixels`` (``limits.max_frame_pixels``): Rows x Columns of one frame, in the
  header (at C-STORE) and in each compressed frame's codestream (before decoding);
* ``max_series_voxels`` (``limits.max_series_voxels``): Rows x Columns x frames of one
  instance (at C-STORE) and of all the images of a series (before any is decoded).

:func:`check_image_header` reads header values only; :func:`check_codestreams` reads the
first bytes of each compressed frame (:mod:`dicom_bridge.codestream`) and decodes
nothing. Messages name attributes, sizes and keys, never values of patient data.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from dicom_bridge.codestream import declared_size
from dicom_bridge.errors import DicomBridgeError, MalformedDatasetError

MIB: Final = 2**20

#: The ``[limits]`` key of each :class:`SizeLimits` field.
KEYS: Final = {
    "max_instance_bytes": "limits.max_instance_mb",
    "max_frame_pixels": "limits.max_frame_pixels",
    "max_series_voxels": "limits.max_series_voxels",
}


class SizeLimitError(DicomBridgeError):
    """A declared size is over a limit; ``key`` is the configuration key that sets it."""

    def __init__(self, message: str, key: str) -> None:
        super().__init__(f"{message} ({key})")
        self.key = key


@dataclass(frozen=True, slots=True)
class SizeLimits:
    max_instance_bytes: int = 512 * MIB
    max_frame_pixels: int = 4096 * 4096
    max_series_voxels: int = 512 * 512 * 2048

    def __post_init__(self) -> None:
        for name in KEYS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise DicomBridgeError(f"SizeLimits.{name} must be an integer >= 1")


@dataclass(frozen=True, slots=True)
class ImageSize:
    rows: int
    columns: int
    frames: int
    samples: int

    @property
    def frame_pixels(self) -> int:
        return self.rows * self.columns

    @property
    def voxels(self) -> int:
        return self.rows * self.columns * self.frames


def image_size(ds: Dataset) -> ImageSize | None:
    """Rows, Columns, NumberOfFrames and SamplesPerPixel of an image (None when it has no
    Rows/Columns). Raises :class:`MalformedDatasetError` for values that are not
    non-negative integers."""
    if "Rows" not in ds and "Columns" not in ds:
        return None
    return ImageSize(
        rows=_count(ds, "Rows", 0),
        columns=_count(ds, "Columns", 0),
        frames=max(1, _count(ds, "NumberOfFrames", 1)),
        samples=max(1, _count(ds, "SamplesPerPixel", 1)),
    )


def check_image_header(ds: Dataset, limits: SizeLimits) -> ImageSize | None:
    """Refuse (:class:`SizeLimitError`) an image whose header declares a frame or an
    instance over the limits."""
    size = image_size(ds)
    if size is None:
        return None
    if size.frame_pixels > limits.max_frame_pixels:
        raise SizeLimitError(
            f"a frame of {size.rows} x {size.columns} pixels is over the limit of "
            f"{limits.max_frame_pixels} pixels",
            KEYS["max_frame_pixels"],
        )
    if size.voxels > limits.max_series_voxels:
        raise SizeLimitError(
            f"{size.frames} frames of {size.rows} x {size.columns} pixels "
            f"({size.voxels} voxels) are over the limit of {limits.max_series_voxels} voxels",
            KEYS["max_series_voxels"],
        )
    return size


def check_series_voxels(sizes: list[ImageSize], limits: SizeLimits) -> None:
    """Refuse a series whose images hold more voxels in all than the limit."""
    total = sum(s.voxels for s in sizes)
    if total > limits.max_series_voxels:
        raise SizeLimitError(
            f"the series' {len(sizes)} images hold {total} voxels, over the limit of "
            f"{limits.max_series_voxels}",
            KEYS["max_series_voxels"],
        )


def check_codestreams(ds: Dataset, transfer_syntax: UID, limits: SizeLimits) -> int:
    """Check the size each compressed frame's codestream declares against the header and
    the frame limit, before any decoder allocates it; return the frames checked (0 for
    native pixel data and for RLE, whose frames declare no size).

    Raises :class:`SizeLimitError` over ``max_frame_pixels`` and
    :class:`MalformedDatasetError` for a frame that declares another size than
    Rows/Columns (or more components than 4), or whose header cannot be read.
    """
    if not transfer_syntax.is_encapsulated or "PixelData" not in ds:
        return 0
    size = image_size(ds)
    if size is None:
        raise MalformedDatasetError("compressed pixel data without Rows/Columns")
    checked = 0
    for index, frame in enumerate(_frames(ds, size.frames)):
        declared = declared_size(frame, str(transfer_syntax))
        if declared is None:
            return checked
        where = f"frame {index + 1}'s codestream"
        if declared.rows * declared.columns > limits.max_frame_pixels:
            raise SizeLimitError(
                f"{where} declares {declared.rows} x {declared.columns} pixels, over the "
                f"limit of {limits.max_frame_pixels}",
                KEYS["max_frame_pixels"],
            )
        if (declared.rows, declared.columns) != (size.rows, size.columns):
            raise MalformedDatasetError(
                f"{where} declares {declared.rows} x {declared.columns} pixels but "
                f"Rows x Columns is {size.rows} x {size.columns}"
            )
        if declared.components > 4:
            raise MalformedDatasetError(f"{where} declares {declared.components} components")
        checked += 1
    return checked


def _frames(ds: Dataset, frames: int) -> Iterator[bytes]:
    kwargs: dict[str, Any] = {"number_of_frames": frames}
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        kwargs["extended_offsets"] = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    try:
        yield from generate_frames(ds.PixelData, **kwargs)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise MalformedDatasetError(f"the encapsulated pixel data cannot be split: {exc}") from exc


def _count(ds: Dataset, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword, default)
        if value is None or value == "":
            return default
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise MalformedDatasetError(f"{keyword} is not an integer") from exc
    if number < 0:
        raise MalformedDatasetError(f"{keyword} is negative")
    return number
