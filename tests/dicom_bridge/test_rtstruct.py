"""RT Structure Set from a mask (dicom_bridge.rtstruct): contours that rasterise back to
the mask, references to the right source images, provenance, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_bridge.rtstruct import RT_STRUCTURE_SET_STORAGE, slice_contours, write_rtstruct
from dicom_bridge.seg import SegmentationWriteError, SourceGrid, read_source_grid
from tests.dicom_bridge.test_seg import ALGORITHM, GEOMETRIES, SEGMENTS, make_series


def rasterise(ds: Dataset, roi_number: int, grid: SourceGrid) -> np.ndarray:
    """The ROI's contours filled back onto the grid: points to voxel indices through the
    inverse affine, each slice's polygons combined by the even-odd rule (pixel centres)."""
    out = np.zeros(grid.shape, dtype=bool)
    inverse = np.linalg.inv(grid.affine)
    uids = {uid: k for k, uid in enumerate(grid.sop_instance_uids)}
    item = next(i for i in ds.ROIContourSequence if i.ReferencedROINumber == roi_number)
    for contour in item.get("ContourSequence", []):
        points = np.asarray(contour.ContourData, dtype=np.float64).reshape(-1, 3)
        assert contour.NumberOfContourPoints == len(points)
        index = (inverse @ np.column_stack([points, np.ones(len(points))]).T).T
        k = round(float(index[0, 0]))
        assert np.allclose(index[:, 0], k, atol=0.01)  # planar (points rounded to 0.01 mm)
        assert uids[contour.ContourImageSequence[0].ReferencedSOPInstanceUID] == k
        # PIL draws (x, y) = (column, row); scale by 8 and sample pixel centres
        scale = 8
        image = Image.new("1", (grid.shape[2] * scale, grid.shape[1] * scale), 0)
        polygon = [((c + 0.5) * scale, (r + 0.5) * scale) for r, c in index[:, 1:3]]
        ImageDraw.Draw(image).polygon(polygon, fill=1)
        filled = np.asarray(image, dtype=bool)[scale // 2 :: scale, scale // 2 :: scale]
        out[k] ^= filled
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def test_slice_contours_trace_a_square_with_a_hole() -> None:
    plane = np.zeros((12, 12), dtype=bool)
    plane[2:10, 2:10] = True
    plane[5:7, 5:7] = False
    contours = slice_contours(plane)
    assert len(contours) == 2  # the outline and the hole
    outer = max(contours, key=len)
    assert outer[:, 0].min() == pytest.approx(1.5) and outer[:, 0].max() == pytest.approx(9.5)
    assert slice_contours(np.zeros((4, 4), dtype=bool)) == []


@pytest.mark.parametrize("name", ["axial", "axial-against-normal", "coronal", "oblique"])
def test_contours_rasterise_back_to_the_mask(tmp_path: Path, name: str) -> None:
    paths, mask = make_series(tmp_path / "src", *GEOMETRIES[name], shape=(7, 40, 36))
    grid = read_source_grid(paths)
    ds = write_rtstruct(grid, mask, SEGMENTS, ALGORITHM)
    ds.save_as(tmp_path / "rt.dcm", enforce_file_format=True)
    back = dcmread(tmp_path / "rt.dcm")
    assert back.SOPClassUID == RT_STRUCTURE_SET_STORAGE and back.Modality == "RTSTRUCT"
    for segment in SEGMENTS:
        truth = mask == segment.label_index
        assert dice(rasterise(back, segment.label_index, grid), truth) >= 0.95, segment.label


def test_references_provenance_and_patient(tmp_path: Path) -> None:
    paths, mask = make_series(tmp_path / "src", *GEOMETRIES["axial"])
    grid = read_source_grid(paths)
    first = grid.datasets[0]
    ds = write_rtstruct(grid, mask, SEGMENTS, ALGORITHM)
    assert ds.StudyInstanceUID == grid.study_instance_uid
    assert ds.PatientID == first.PatientID
    assert ds.SeriesInstanceUID != grid.series_instance_uid
    assert ds.SeriesDescription.startswith("RESEARCH USE ONLY - NOT FOR DIAGNOSIS")
    assert ALGORITHM.weights_sha256 in ds.StructureSetDescription
    assert "federated round 7" in ds.ContributingEquipmentSequence[0].ContributionDescription
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == grid.frame_of_reference_uid
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == grid.series_instance_uid
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == list(
        grid.sop_instance_uids
    )
    names = {r.ROINumber: r.ROIName for r in ds.StructureSetROISequence}
    assert names == {1: "Liver", 2: "Liver tumour"}
    assert all(r.ROIGenerationAlgorithm == "AUTOMATIC" for r in ds.StructureSetROISequence)
    colours = {r.ReferencedROINumber: list(r.ROIDisplayColor) for r in ds.ROIContourSequence}
    assert colours == {1: [221, 130, 101], 2: [255, 255, 0]}
    kinds = {o.ReferencedROINumber: o.RTROIInterpretedType for o in ds.RTROIObservationsSequence}
    assert kinds == {1: "ORGAN", 2: ""}


def test_an_empty_segment_is_an_roi_without_contours(tmp_path: Path) -> None:
    paths, mask = make_series(tmp_path / "src", *GEOMETRIES["axial"])
    grid = read_source_grid(paths)
    ds = write_rtstruct(grid, np.where(mask == 2, 0, mask), SEGMENTS, ALGORITHM)
    tumour = next(i for i in ds.ROIContourSequence if i.ReferencedROINumber == 2)
    assert "ContourSequence" not in tumour
    assert len(ds.StructureSetROISequence) == 2


def test_bad_masks_are_refused(tmp_path: Path) -> None:
    paths, mask = make_series(tmp_path / "src", *GEOMETRIES["axial"])
    grid = read_source_grid(paths)
    with pytest.raises(SegmentationWriteError, match="source grid"):
        write_rtstruct(grid, mask[1:], SEGMENTS, ALGORITHM)
    with pytest.raises(SegmentationWriteError, match=r"label values \[3\]"):
        write_rtstruct(grid, np.where(mask == 2, 3, mask), SEGMENTS, ALGORITHM)
    with pytest.raises(SegmentationWriteError, match="integers"):
        write_rtstruct(grid, mask.astype(np.float32), SEGMENTS, ALGORITHM)
    with pytest.raises(SegmentationWriteError, match="at least one segment"):
        write_rtstruct(grid, mask, (), ALGORITHM)
