"""Synthetic single-frame CT/MR series with exactly known geometry.

Used by tests, the demo and the benchmarks: the geometry that produced a series is the
truth the series -> volume conversion is checked against. Array axes are
``(slice, row, column)`` as in :class:`highdicom.Volume`; the affine maps those indices to
DICOM patient coordinates (LPS, millimetres), with the slice index increasing along the
image-plane normal (row direction x column direction), as ``dicom_bridge.volume`` returns
it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from dicom_bridge.sop_classes import CT_IMAGE, MR_IMAGE

Vec3 = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class SeriesGeometry:
    """Where the voxels of a series lie in patient space (LPS, mm)."""

    slices: int
    rows: int
    columns: int
    pixel_spacing: tuple[float, float] = (0.8, 0.8)  # (between rows, between columns)
    slice_spacing: float = 2.0
    origin: Vec3 = (-200.0, -200.0, -100.0)  # centre of the first pixel of the first slice
    row_direction: Vec3 = (1.0, 0.0, 0.0)  # direction of increasing column index
    column_direction: Vec3 = (0.0, 1.0, 0.0)  # direction of increasing row index

    def __post_init__(self) -> None:
        if min(self.slices, self.rows, self.columns) < 1:
            raise ValueError("a series needs at least one slice, row and column")
        r, c = np.asarray(self.row_direction), np.asarray(self.column_direction)
        if not (np.isclose(np.linalg.norm(r), 1) and np.isclose(np.linalg.norm(c), 1)):
            raise ValueError("direction cosines must be unit vectors")
        if not np.isclose(float(r @ c), 0.0, atol=1e-6):
            raise ValueError("row and column directions must be orthogonal")

    @property
    def normal(self) -> np.ndarray:
        return np.cross(np.asarray(self.row_direction), np.asarray(self.column_direction))

    def slice_position(self, index: int) -> Vec3:
        pos = np.asarray(self.origin) + index * self.slice_spacing * self.normal
        return (float(pos[0]), float(pos[1]), float(pos[2]))

    def affine(self) -> np.ndarray:
        """4x4 matrix: ``[slice, row, column, 1]`` -> LPS millimetres."""
        out = np.eye(4)
        out[:3, 0] = self.normal * self.slice_spacing
        out[:3, 1] = np.asarray(self.column_direction) * self.pixel_spacing[0]
        out[:3, 2] = np.asarray(self.row_direction) * self.pixel_spacing[1]
        out[:3, 3] = self.origin
        return out


@dataclass(frozen=True, slots=True)
class SeriesIdentity:
    """Patient/study/series identifiers for a synthetic series (all invented)."""

    patient_name: str = "PHANTOM^CT"
    patient_id: str = "PHANTOM-0001"
    study_uid: str = field(default_factory=lambda: str(generate_uid()))
    series_uid: str = field(default_factory=lambda: str(generate_uid()))
    frame_of_reference_uid: str = field(default_factory=lambda: str(generate_uid()))
    series_number: int = 1
    series_description: str = "Synthetic phantom"
    body_part: str = "ABDOMEN"


def ellipsoid_phantom(geometry: SeriesGeometry, *, modality: str = "CT") -> np.ndarray:
    """A body-like ellipsoid with a denser inner ellipsoid; int16, axes (slice, row, col)."""
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, geometry.slices),
        np.linspace(-1, 1, geometry.rows),
        np.linspace(-1, 1, geometry.columns),
        indexing="ij",
    )
    body = (x / 0.85) ** 2 + (y / 0.65) ** 2 + (z / 1.2) ** 2 <= 1
    organ = ((x - 0.25) / 0.35) ** 2 + ((y + 0.1) / 0.3) ** 2 + (z / 0.7) ** 2 <= 1
    if modality == "CT":
        image = np.full(body.shape, -1000, dtype=np.int16)
        image[body] = 30
        image[organ] = 90
    else:
        image = np.zeros(body.shape, dtype=np.int16)
        image[body] = 400
        image[organ] = 900
    return image


def write_series(
    directory: Path,
    geometry: SeriesGeometry,
    pixels: np.ndarray | None = None,
    *,
    modality: str = "CT",
    identity: SeriesIdentity | None = None,
    slice_order: Sequence[int] | None = None,
) -> list[Path]:
    """Write one file per slice into ``directory``; return the paths in slice order.

    ``pixels`` defaults to :func:`ellipsoid_phantom`. ``slice_order`` permutes the
    InstanceNumbers/file names, to check that readers sort by position, not by name.
    """
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be CT or MR, not {modality!r}")
    identity = identity or SeriesIdentity()
    if pixels is None:
        pixels = ellipsoid_phantom(geometry, modality=modality)
    expected = (geometry.slices, geometry.rows, geometry.columns)
    if pixels.shape != expected:
        raise ValueError(f"pixels have shape {pixels.shape}, geometry says {expected}")
    order = list(slice_order) if slice_order is not None else list(range(geometry.slices))
    if sorted(order) != list(range(geometry.slices)):
        raise ValueError("slice_order must be a permutation of the slice indices")
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now()
    paths: list[Path] = []
    for index in range(geometry.slices):
        ds = _slice_dataset(geometry, identity, modality, index, order[index] + 1, now)
        ds.PixelData = np.ascontiguousarray(pixels[index].astype(np.int16)).tobytes()
        path = directory / f"{modality}{order[index] + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _ds(value: float) -> str:
    """A decimal string with as much precision as DS allows (16 characters)."""
    return str(format_number_as_ds(float(value)))


def _slice_dataset(
    geometry: SeriesGeometry,
    identity: SeriesIdentity,
    modality: str,
    index: int,
    instance_number: int,
    now: dt.datetime,
) -> Dataset:
    sop_class = CT_IMAGE if modality == "CT" else MR_IMAGE
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = ""
    ds.Modality = modality
    ds.Manufacturer = "SegAppliance Synthetic"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Synthetic study"
    ds.SeriesDescription = identity.series_description
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = identity.body_part
    ds.StudyInstanceUID = identity.study_uid
    ds.SeriesInstanceUID = identity.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = identity.series_number
    ds.InstanceNumber = instance_number
    ds.FrameOfReferenceUID = identity.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.AcquisitionNumber = 1
    ds.ImagePositionPatient = [_ds(v) for v in geometry.slice_position(index)]
    ds.ImageOrientationPatient = [
        _ds(v) for v in (*geometry.row_direction, *geometry.column_direction)
    ]
    ds.SliceThickness = _ds(abs(geometry.slice_spacing))
    ds.SliceLocation = _ds(geometry.slice_position(index)[2])
    ds.PixelSpacing = [_ds(v) for v in geometry.pixel_spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = geometry.rows
    ds.Columns = geometry.columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if modality == "CT":
        ds.KVP = "120"
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
    else:
        ds.ScanningSequence = "GR"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "3D"
        ds.EchoTime = "3"
        ds.RepetitionTime = "8"
        ds.EchoTrainLength = "1"
        ds.MagneticFieldStrength = "3"
    return ds
