"""Altered copies of a real SEG for refusal tests (new UIDs, so each is a new object)."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid


def seg_variant(
    source: Path,
    target: Path,
    *,
    shift_frame_mm: float = 0.0,
    frame_of_reference_uid: str | None = None,
    manufacturer: str | None = None,
    property_type: tuple[str, str, str] | None = None,
    drop_references: bool = False,
    fill: bool = False,
) -> Path:
    """Copy the SEG at ``source`` with new SOP/Series Instance UIDs and the changes asked
    for: the first frame moved along z by ``shift_frame_mm`` (between source slices), a
    different Frame of Reference, Manufacturer, or segment 1's property type
    ``(value, scheme, meaning)``; ``fill``: every pixel of every frame set (a BINARY SEG)."""
    ds = dcmread(source)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    if shift_frame_mm:
        position = ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
        x, y, z = (float(v) for v in position.ImagePositionPatient)
        position.ImagePositionPatient = [x, y, z + shift_frame_mm]
    if frame_of_reference_uid is not None:
        ds.FrameOfReferenceUID = frame_of_reference_uid
    if manufacturer is not None:
        ds.Manufacturer = manufacturer
    if property_type is not None:
        code = ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0]
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = property_type
        ds.SegmentSequence[0].SegmentLabel = property_type[2]
    if drop_references:
        del ds.ReferencedSeriesSequence
        for frame in ds.PerFrameFunctionalGroupsSequence:
            if "DerivationImageSequence" in frame:
                del frame.DerivationImageSequence
    if fill:
        ds.PixelData = b"\xff" * len(ds.PixelData)
    ds.save_as(target, enforce_file_format=True)
    return target
