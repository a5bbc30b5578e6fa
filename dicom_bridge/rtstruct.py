"""Mask -> DICOM RT Structure Set: the segments as planar contours, for viewers and
treatment-planning systems that show RTSTRUCT but not SEG.

:func:`write_rtstruct` takes what :func:`dicom_bridge.seg.write_seg` takes (the source
series' headers, a label map or segment masks on their grid, the segment descriptions and
the model) and returns a pydicom ``Dataset`` of the RT Structure Set IOD: one ROI per
segment, each slice's contours of that segment (``CLOSED_PLANAR``, in patient LPS mm)
referencing the source image of the slice.

Contours. Per slice, the iso-line at 0.5 of the segment's binary mask (marching squares,
``contourpy``, the contour generator matplotlib uses), padded by one empty pixel so every
line closes: it passes half-way between each set pixel centre and its unset neighbours,
so filling the polygons by their pixel centres gives the mask back (a test rasterises
them and compares). Points on the straight line through their neighbours are dropped
(the same polygon with a fraction of the points: ContourData stays small and quick to
write). Holes (a liver with a tumour cut out of it) are inner contours of the
same ROI; readers combine a slice's contours by the even-odd rule, as the standard's
note on inner contours and most planning systems do. A segment with no voxel gets an ROI
with no contour (the model found nothing, and says so). Contour points are rounded to
0.01 mm (DS values stay within 16 characters).

Provenance, as in the SEG: SeriesDescription starts with ``RESEARCH USE ONLY - NOT FOR
DIAGNOSIS`` (unless the site configured clinical use), StructureSetDescription and the
ContributingEquipmentSequence carry the provenance sentence (model name, version,
weights sha256, federated round), every ROI's ROIGenerationDescription names the model,
ROIGenerationAlgorithm is ``AUTOMATIC``, and RTROIIdentificationCodeSequence carries the
segment's coded type.
Patient and study come from the first source image (invalid values fixed or dropped, as
for the SEG); messages never carry patient data.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
from contourpy import LineType, contour_generator
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from dicom_bridge.codes import ANATOMICAL_STRUCTURE, CodeValue
from dicom_bridge.patient import sanitized_sources
from dicom_bridge.seg import (
    AlgorithmInfo,
    SegmentationWriteError,
    SegmentDescription,
    SourceGrid,
    processing_equipment,
    provenance_sentence,
    series_description,
)
from dicom_bridge.segment_masks import is_segment_masks

RT_STRUCTURE_SET_STORAGE: Final = "1.2.840.10008.5.1.4.1.1.481.3"
#: The SOP class RT references name a study by (Detached Study Management, retired but
#: what the RT Referenced Study Sequence is defined with and what every reader expects).
_STUDY_COMPONENT_CLASS: Final = "1.2.840.10008.3.1.2.3.1"
#: Patient and study attributes copied from the first source image.
_PATIENT_STUDY: Final = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
_TYPE2: Final = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyDate",
        "StudyTime",
        "ReferringPhysicianName",
        "StudyID",
        "AccessionNumber",
    }
)
#: Digits after the decimal point of contour coordinates (mm).
_DECIMALS: Final = 2


@dataclass(frozen=True, slots=True)
class RtStructOptions:
    """What the RT Structure Set says about itself (the SEG's :class:`SegOptions` fields
    that apply here)."""

    research_only: bool = True
    manufacturer: str = "SegAppliance"
    manufacturer_model_name: str = "seg-appliance"
    software_version: str = "0.1.0"
    series_number: int = 9903
    instance_number: int = 1
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    institution_name: str | None = None
    content_creator_name: str | None = None


def slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """The closed contours of one slice's binary ``mask`` ``(row, column)``: a list of
    ``(n, 2)`` arrays of ``(row, column)`` points (pixel index units), each closed (its
    last point is not repeated), at least three points each."""
    plane = np.asarray(mask, dtype=bool)
    if plane.ndim != 2:
        raise SegmentationWriteError(f"a slice mask must be 2-D, got {plane.ndim} dimensions")
    if not plane.any():
        return []
    padded = np.pad(plane, 1).astype(np.float64)
    generator = contour_generator(z=padded, line_type=LineType.Separate)
    out: list[np.ndarray] = []
    for line in generator.lines(0.5):
        points = np.asarray(line, dtype=np.float64)
        if len(points) > 1 and np.allclose(points[0], points[-1]):
            points = points[:-1]
        points = _without_collinear(points)
        if len(points) < 3:
            continue
        # contourpy gives (x, y) = (column, row) of the padded array
        out.append(np.stack([points[:, 1] - 1.0, points[:, 0] - 1.0], axis=1))
    return out


def _without_collinear(points: np.ndarray) -> np.ndarray:
    """A closed polygon without the points that lie on the straight line through their
    neighbours (the same polygon, exactly: marching squares puts a point at every pixel
    edge it crosses, so straight and 45-degree runs are mostly such points)."""
    if len(points) < 4:
        return points
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    return points[np.abs(cross) > 1e-9]


def write_rtstruct(
    grid: SourceGrid,
    mask: np.ndarray,
    segments: Sequence[SegmentDescription],
    algorithm: AlgorithmInfo,
    options: RtStructOptions | None = None,
) -> Dataset:
    """The RT Structure Set of ``mask`` (a label map ``(slice, row, column)`` or segment
    masks ``(S, slice, row, column)`` on ``grid``; see :mod:`dicom_bridge.seg`), one ROI
    per segment of ``segments``. Raises :class:`SegmentationWriteError`."""
    options = options or RtStructOptions()
    masks = _segment_masks(mask, segments, grid.shape)
    first = sanitized_sources(grid.datasets[:1])[0]
    now = datetime.datetime.now()
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(RT_STRUCTURE_SET_STORAGE)
    sop_uid = UID(options.sop_instance_uid or generate_uid())
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    charset = first.get("SpecificCharacterSet")
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = sop_uid
    for keyword in _PATIENT_STUDY:
        if keyword in first:
            setattr(ds, keyword, first[keyword].value)
        elif keyword in _TYPE2:
            setattr(ds, keyword, "")
    ds.Modality = "RTSTRUCT"
    ds.FrameOfReferenceUID = grid.frame_of_reference_uid
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    ds.SeriesInstanceUID = options.series_instance_uid or generate_uid()
    ds.SeriesNumber = options.series_number
    ds.InstanceNumber = options.instance_number
    ds.SeriesDescription = series_description(algorithm, options.research_only, kind="RTSTRUCT")
    ds.OperatorsName = ""
    ds.Manufacturer = options.manufacturer
    ds.ManufacturerModelName = options.manufacturer_model_name
    ds.SoftwareVersions = [options.software_version, f"{algorithm.name} {algorithm.version}"[:64]]
    if options.institution_name:
        ds.InstitutionName = options.institution_name
    ds.InstanceCreationDate = ds.StructureSetDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.StructureSetTime = ds.SeriesTime = now.strftime("%H%M%S")
    if options.content_creator_name:
        ds.ContentCreatorName = options.content_creator_name
    sentence = provenance_sentence(algorithm, options.research_only)
    ds.StructureSetLabel = "AI CONTOURS"
    ds.StructureSetName = f"{algorithm.name} {algorithm.version}"[:64]
    ds.StructureSetDescription = sentence
    ds.ContributingEquipmentSequence = DicomSequence(
        [processing_equipment(options.manufacturer, algorithm, sentence)]
    )
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([_frame_of_reference(grid)])
    ds.StructureSetROISequence = DicomSequence([_roi(s, grid, algorithm) for s in segments])
    ds.ROIContourSequence = DicomSequence(
        [_roi_contours(s, m, grid) for s, m in zip(segments, masks, strict=True)]
    )
    ds.RTROIObservationsSequence = DicomSequence(
        [_observation(number, s) for number, s in enumerate(segments, start=1)]
    )
    ds.ApprovalStatus = "UNAPPROVED"
    return ds


def _segment_masks(
    mask: np.ndarray, segments: Sequence[SegmentDescription], shape: tuple[int, int, int]
) -> list[np.ndarray]:
    if not segments:
        raise SegmentationWriteError("an RT Structure Set needs at least one segment")
    indices = [s.label_index for s in segments]
    if len(set(indices)) != len(indices):
        raise SegmentationWriteError("segment label_index values must be unique")
    array = np.asarray(mask)
    if is_segment_masks(array):
        if array.shape[1:] != shape or array.shape[0] != len(segments):
            raise SegmentationWriteError(
                f"segment masks of shape {array.shape} do not fit {len(segments)} segments "
                f"on the source grid {shape}"
            )
        return [array[s.label_index - 1].astype(bool) for s in segments]
    if array.shape != shape:
        raise SegmentationWriteError(f"mask shape {array.shape} is not the source grid {shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise SegmentationWriteError(f"a label map must hold integers, got {array.dtype}")
    undescribed = set(np.unique(array).tolist()) - {0, *indices}
    if undescribed:
        raise SegmentationWriteError(
            f"label values {sorted(undescribed)} have no segment description"
        )
    return [array == s.label_index for s in segments]


def _code_item(code: CodeValue) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
    return item


def _image_reference(grid: SourceGrid, k: int) -> Dataset:
    item = Dataset()
    source = grid.datasets[0] if grid.frame_numbers is not None else grid.datasets[k]
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if grid.frame_numbers is not None:
        item.ReferencedFrameNumber = grid.frame_numbers[k]
    return item


def _frame_of_reference(grid: SourceGrid) -> Dataset:
    series = Dataset()
    series.SeriesInstanceUID = grid.series_instance_uid
    series.ContourImageSequence = DicomSequence(
        [_image_reference(grid, k) for k in range(grid.shape[0])]
    )
    study = Dataset()
    study.ReferencedSOPClassUID = _STUDY_COMPONENT_CLASS
    study.ReferencedSOPInstanceUID = grid.study_instance_uid
    study.RTReferencedSeriesSequence = DicomSequence([series])
    item = Dataset()
    item.FrameOfReferenceUID = grid.frame_of_reference_uid
    item.RTReferencedStudySequence = DicomSequence([study])
    return item


def _roi(segment: SegmentDescription, grid: SourceGrid, algorithm: AlgorithmInfo) -> Dataset:
    item = Dataset()
    item.ROINumber = segment.label_index
    item.ReferencedFrameOfReferenceUID = grid.frame_of_reference_uid
    item.ROIName = segment.label
    item.ROIGenerationAlgorithm = "AUTOMATIC"
    item.ROIGenerationDescription = f"model {algorithm.name} {algorithm.version}"[:64]
    return item


def _roi_contours(segment: SegmentDescription, mask: np.ndarray, grid: SourceGrid) -> Dataset:
    item = Dataset()
    item.ReferencedROINumber = segment.label_index
    if segment.color_rgb is not None:
        item.ROIDisplayColor = [int(c) for c in segment.color_rgb]
    contours: list[Dataset] = []
    for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        for points in slice_contours(mask[k]):
            index = np.column_stack([np.full(len(points), float(k)), points, np.ones(len(points))])
            lps = (grid.affine @ index.T).T[:, :3]
            contour = Dataset()
            contour.ContourImageSequence = DicomSequence([_image_reference(grid, int(k))])
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(lps)
            contour.ContourNumber = len(contours) + 1
            contour.ContourData = [f"{v:.{_DECIMALS}f}" for v in lps.reshape(-1)]
            contours.append(contour)
    if contours:
        item.ContourSequence = DicomSequence(contours)
    return item


def _observation(number: int, segment: SegmentDescription) -> Dataset:
    item = Dataset()
    item.ObservationNumber = number
    item.ReferencedROINumber = segment.label_index
    item.RTROIInterpretedType = (
        "ORGAN" if segment.category.same_concept(ANATOMICAL_STRUCTURE) else ""
    )
    item.ROIInterpreter = ""
    item.RTROIIdentificationCodeSequence = DicomSequence([_code_item(segment.property_type)])
    return item
