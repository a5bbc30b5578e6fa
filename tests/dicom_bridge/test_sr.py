"""Measurement report (TID 1500): lesion statistics against brute force, report content."""

from __future__ import annotations

import itertools
from collections import deque
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from dicom_bridge import codes as C
from dicom_bridge.seg import (
    RESEARCH_MARKER,
    AlgorithmInfo,
    SegmentDescription,
    SegOptions,
    write_seg,
)
from dicom_bridge.sop_classes import COMPREHENSIVE_3D_SR
from dicom_bridge.sr import (
    DIAMETER_DEFINITION,
    ReportWriteError,
    SrOptions,
    lesion_statistics,
    measure_segments,
    write_sr,
)
from dicom_bridge.synthetic import SeriesGeometry, write_series
from dicom_bridge.volume import load_series_volume

SHA = "fedcba9876543210" * 4
ALGORITHM = AlgorithmInfo("liver", "1.2", SHA, federated_round=3)
SEGMENTS = (
    SegmentDescription(1, "Liver", C.ANATOMICAL_STRUCTURE, C.LIVER),
    SegmentDescription(
        2, "Liver tumour", C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, C.NEOPLASM, anatomic_region=C.LIVER
    ),
)


# --- connected components and diameter against brute force -----------------------------------


def brute_components(binary: np.ndarray, connectivity: int) -> list[list[tuple[int, ...]]]:
    """Breadth-first search over the voxel neighbourhood (reference implementation)."""
    if connectivity == 6:
        steps = [d for d in itertools.product((-1, 0, 1), repeat=3) if sum(map(abs, d)) == 1]
    else:
        steps = [d for d in itertools.product((-1, 0, 1), repeat=3) if any(d)]
    seen = np.zeros(binary.shape, dtype=bool)
    components = []
    for start in zip(*np.nonzero(binary), strict=True):
        if seen[start]:
            continue
        seen[start] = True
        queue, members = deque([start]), []
        while queue:
            voxel = queue.popleft()
            members.append(voxel)
            for step in steps:
                n = tuple(int(a + b) for a, b in zip(voxel, step, strict=True))
                if all(0 <= n[i] < binary.shape[i] for i in range(3)) and binary[n] and not seen[n]:
                    seen[n] = True
                    queue.append(n)
        components.append(members)
    return components


def brute_diameter(members: list[tuple[int, ...]], affine: np.ndarray) -> float:
    points = np.array(members, dtype=float) @ affine[:3, :3].T
    d = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=2))
    return float(d.max())


def _affine(spacing: tuple[float, float, float], rotate: bool = False) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    if rotate:
        a = np.radians(25.0)
        rotation = np.array(
            [[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]]
        )
        affine[:3, :3] = rotation @ affine[:3, :3]
    affine[:3, 3] = (-10.0, 4.0, 33.0)
    return affine


@pytest.mark.parametrize("connectivity", [6, 26])
@pytest.mark.parametrize("seed", range(6))
def test_lesion_statistics_match_brute_force(seed: int, connectivity: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(2, 7)), int(rng.integers(3, 11)), int(rng.integers(3, 11)))
    binary = rng.random(shape) < rng.uniform(0.1, 0.45)
    affine = _affine((2.5, 0.7, 0.9), rotate=seed % 2 == 1)

    stats = lesion_statistics(binary, affine, connectivity=connectivity)

    components = brute_components(binary, connectivity)
    assert stats.count == len(components)
    if not components:
        assert stats.largest_diameter_mm is None
        return
    largest = max(len(c) for c in components)
    assert stats.largest_voxels == largest
    # ties: the first component in scan order, as documented
    first_largest = next(c for c in components if len(c) == largest)
    expected = brute_diameter(first_largest, affine)
    assert stats.largest_diameter_mm == pytest.approx(expected, abs=1e-6)


def test_diagonal_contact_joins_lesions_only_with_26_connectivity() -> None:
    binary = np.zeros((3, 5, 5), dtype=bool)
    binary[0, 0, 0] = binary[1, 1, 1] = True  # corner contact
    binary[2, 4, 4] = True
    assert lesion_statistics(binary, np.eye(4), connectivity=26).count == 2
    assert lesion_statistics(binary, np.eye(4), connectivity=6).count == 3


def test_diameter_of_a_sphere_and_of_one_voxel() -> None:
    z, y, x = np.indices((21, 41, 41))
    # 1.0 mm slices, 0.5 mm pixels: a 10 mm radius ball
    ball = ((z - 10) * 1.0) ** 2 + ((y - 20) * 0.5) ** 2 + ((x - 20) * 0.5) ** 2 <= 10.0**2
    stats = lesion_statistics(ball, _affine((1.0, 0.5, 0.5)))
    assert stats.count == 1
    assert stats.largest_diameter_mm == pytest.approx(20.0, abs=0.01)

    dot = np.zeros((3, 3, 3), dtype=bool)
    dot[1, 1, 1] = True
    assert lesion_statistics(dot, np.eye(4)).largest_diameter_mm == 0.0
    assert lesion_statistics(np.zeros((2, 2, 2), bool), np.eye(4)).count == 0


def test_a_large_lesion_is_measured_quickly() -> None:
    import time

    z, y, x = np.indices((120, 256, 256))
    blob = ((z - 60) / 55.0) ** 2 + ((y - 128) / 110.0) ** 2 + ((x - 120) / 90.0) ** 2 <= 1
    blob[::7, :, :] &= np.indices(blob.shape[1:])[1] % 9 != 0  # ragged, still one component
    start = time.perf_counter()
    stats = lesion_statistics(blob, _affine((1.5, 0.8, 0.8)))
    elapsed = time.perf_counter() - start
    assert stats.count == 1
    assert stats.largest_diameter_mm == pytest.approx(2 * 110 * 0.8, rel=0.02)
    assert elapsed < 10.0  # not a timing assertion: a guard against quadratic blow-ups


def test_measure_segments_volumes_in_ml() -> None:
    mask = np.zeros((4, 10, 10), dtype=np.uint8)
    mask[0:3, 0:5, 0:4] = 1  # 60 voxels
    mask[1, 7:9, 7:9] = 2  # 4 voxels, lesion 1
    mask[3, 0, 9] = 2  # 1 voxel, lesion 2
    affine = _affine((2.0, 0.5, 0.5), rotate=True)  # 0.5 mm3 per voxel
    liver, tumour = measure_segments(mask, affine, SEGMENTS)
    assert liver.voxel_count == 60 and liver.volume_ml == pytest.approx(60 * 0.5 / 1000)
    assert liver.lesions is None
    assert tumour.volume_ml == pytest.approx(5 * 0.5 / 1000)
    assert tumour.lesions is not None
    assert tumour.lesions.count == 2
    assert tumour.lesions.largest_voxels == 4
    assert tumour.lesions.largest_diameter_mm == pytest.approx(np.hypot(0.5, 0.5))


def test_measure_segments_where_the_labels_sit_changes_nothing() -> None:
    """Measured inside the labels' box: the same figures wherever in a large, mostly empty
    grid the same labels lie, and zeros for an empty mask."""
    rng = np.random.default_rng(7)
    labels = np.zeros((6, 12, 11), dtype=np.uint8)
    labels[rng.random(labels.shape) < 0.4] = 1
    labels[rng.random(labels.shape) < 0.15] = 2
    affine = _affine((2.5, 0.7, 0.9), rotate=True)
    alone = measure_segments(labels, affine, SEGMENTS)
    for offset in ((0, 0, 0), (3, 20, 31), (14, 49, 49)):
        grid = np.zeros((20, 61, 60), dtype=np.uint8)
        grid[offset[0] : offset[0] + 6, offset[1] : offset[1] + 12, offset[2] : offset[2] + 11] = (
            labels
        )
        assert measure_segments(grid, affine, SEGMENTS) == alone
    empty = measure_segments(np.zeros((5, 9, 9), dtype=np.uint8), affine, SEGMENTS)
    assert [(m.voxel_count, m.volume_ml) for m in empty] == [(0, 0.0), (0, 0.0)]
    assert empty[1].lesions is not None and empty[1].lesions.count == 0


# --- the report -------------------------------------------------------------------------------


@pytest.fixture
def case(tmp_path: Path) -> tuple[hd.seg.Segmentation, np.ndarray, np.ndarray]:
    geometry = SeriesGeometry(slices=6, rows=24, columns=20, slice_spacing=-2.0)
    paths = write_series(tmp_path, geometry)
    volume = load_series_volume(paths)
    mask = np.zeros(volume.shape, dtype=np.uint8)
    mask[1:5, 3:20, 2:15] = 1
    mask[2:4, 5:9, 4:8] = 2
    mask[4, 15:17, 10:12] = 2
    return write_seg(paths, mask, SEGMENTS, ALGORITHM), mask, volume.affine


def _groups(sr: hd.sr.Comprehensive3DSR) -> list[dict[str, object]]:
    """Per ROI group: the referenced segment and measurements by concept value."""
    out = []
    (measurements,) = [
        item
        for item in sr.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeValue == "126010"  # Imaging Measurements
    ]
    for group in measurements.ContentSequence:
        info: dict[str, object] = {}
        for item in group.ContentSequence:
            code = item.ConceptNameCodeSequence[0].CodeValue
            if item.ValueType == "IMAGE" or item.ValueType == "COMPOSITE":
                ref = item.ReferencedSOPSequence[0]
                info["segment"] = int(ref.ReferencedSegmentNumber)
                info["seg_uid"] = str(ref.ReferencedSOPInstanceUID)
            elif item.ValueType == "NUM":
                measured = item.MeasuredValueSequence[0]
                info[code] = (
                    float(measured.NumericValue),
                    measured.MeasurementUnitsCodeSequence[0].CodeValue,
                )
                params = [
                    sub.TextValue
                    for sub in item.get("ContentSequence", [])
                    if sub.ConceptNameCodeSequence[0].CodeValue == "111002"
                ]
                info[f"{code}-params"] = params
            elif item.ValueType == "CODE":
                info[code] = item.ConceptCodeSequence[0].CodeValue
        out.append(info)
    return out


def test_report_references_the_seg_and_gives_the_measurements(
    case: tuple[hd.seg.Segmentation, np.ndarray, np.ndarray],
) -> None:
    seg, mask, affine = case
    sr = write_sr(seg, mask, affine, SEGMENTS, ALGORITHM)

    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR
    assert sr.StudyInstanceUID == seg.StudyInstanceUID
    assert sr.PatientID == seg.PatientID
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    liver, tumour = _groups(sr)
    assert liver["segment"] == 1 and tumour["segment"] == 2
    assert liver["seg_uid"] == tumour["seg_uid"] == seg.SOPInstanceUID
    assert liver["118565006"] == (
        pytest.approx(np.count_nonzero(mask == 1) * voxel_ml, abs=1e-4),
        "cm3",
    )
    assert "246206008" not in liver  # no lesion count for an organ
    assert tumour["118565006"][0] == pytest.approx(np.count_nonzero(mask == 2) * voxel_ml, abs=1e-4)  # type: ignore[index]
    assert tumour["246206008"] == (2.0, "1")
    largest = lesion_statistics(mask == 2, affine).largest_diameter_mm
    assert tumour["81827009"] == (pytest.approx(largest, abs=0.01), "mm")
    assert DIAMETER_DEFINITION in tumour["81827009-params"]  # type: ignore[operator]
    assert f"weights_sha256={SHA}" in tumour["118565006-params"]  # type: ignore[operator]
    assert "federated_round=3" in tumour["118565006-params"]  # type: ignore[operator]
    assert tumour["121071"] == "108369006"  # Finding: Neoplasm
    assert liver["121071"] == "10200004"


def test_report_is_marked_for_research_and_names_the_model(
    case: tuple[hd.seg.Segmentation, np.ndarray, np.ndarray],
) -> None:
    seg, mask, affine = case
    sr = write_sr(seg, mask, affine, SEGMENTS, ALGORITHM)
    assert sr.SeriesDescription == f"{RESEARCH_MARKER} liver 1.2"
    assert sr.PreliminaryFlag == "PRELIMINARY"
    assert sr.VerificationFlag == "UNVERIFIED"
    assert sr.CompletionFlag == "COMPLETE"
    descriptions = [
        str(i.get("ContributionDescription", "")) for i in sr.ContributingEquipmentSequence
    ]
    assert any(d.startswith(RESEARCH_MARKER) and SHA in d for d in descriptions)
    text = str(sr)
    assert "liver 1.2" in text  # device observer model name

    clinical = write_sr(seg, mask, affine, SEGMENTS, ALGORITHM, SrOptions(research_only=False))
    assert clinical.SeriesDescription == "AI SR liver 1.2"


def test_report_from_a_seg_file(
    tmp_path: Path, case: tuple[hd.seg.Segmentation, np.ndarray, np.ndarray]
) -> None:
    seg, mask, affine = case
    sr = write_sr(seg, mask, affine, SEGMENTS, ALGORITHM)
    seg.save_as(tmp_path / "seg.dcm")
    from_file = write_sr(tmp_path / "seg.dcm", mask, affine, SEGMENTS, ALGORITHM)
    assert _groups(from_file) == _groups(sr)
    # a report procedure from the CT source: LOINC "CT unspecified body region"
    assert "25045-6" in str(from_file)


def test_report_refuses_segments_the_seg_does_not_have(
    case: tuple[hd.seg.Segmentation, np.ndarray, np.ndarray],
) -> None:
    seg, mask, affine = case
    extra = SegmentDescription(
        3, "Spleen", C.ANATOMICAL_STRUCTURE, C.CodeValue("SCT", "78961009", "Spleen")
    )
    with pytest.raises(ReportWriteError, match=r"\[3\]"):
        write_sr(seg, mask, affine, (*SEGMENTS, extra), ALGORITHM)
    with pytest.raises(ReportWriteError, match="rows/columns"):
        write_sr(seg, mask[:, 1:, :], affine, SEGMENTS, ALGORITHM)
    with pytest.raises(ReportWriteError, match="singular"):
        write_sr(seg, mask, np.zeros((4, 4)), SEGMENTS, ALGORITHM)
    with pytest.raises(ReportWriteError, match="connectivity"):
        SrOptions(connectivity=18)


def test_report_on_a_labelmap_seg(
    tmp_path: Path, case: tuple[hd.seg.Segmentation, np.ndarray, np.ndarray]
) -> None:
    _, mask, affine = case
    paths = sorted(tmp_path.glob("CT*.dcm"))
    labelmap = write_seg(paths, mask, SEGMENTS, ALGORITHM, SegOptions(segmentation_type="LABELMAP"))
    sr = write_sr(labelmap, mask, affine, SEGMENTS, ALGORITHM)
    assert [g["segment"] for g in _groups(sr)] == [1, 2]


# --- overlapping segments (one binary mask per segment) ---------------------------------------

BRATS_SEGMENTS = (
    SegmentDescription(1, "Tumour core", C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, C.GLIOMA, C.BRAIN),
    SegmentDescription(2, "Whole tumour", C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, C.GLIOMA, C.BRAIN),
    SegmentDescription(3, "Enhancing tumour", C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, C.GLIOMA),
)


def brats_masks(shape: tuple[int, int, int]) -> np.ndarray:
    """(core, whole, enhancing): concentric balls, plus a second small enhancing focus
    inside the core so that the lesion count differs between segments."""
    s, r, c = np.indices(shape, dtype=np.float64)
    centre = (shape[0] / 2, shape[1] / 2, shape[2] / 2)
    distance = np.sqrt((s - centre[0]) ** 2 + (r - centre[1]) ** 2 + (c - centre[2]) ** 2)
    masks = np.stack([distance <= 4.5, distance <= 7.0, distance <= 1.5])
    focus = (int(centre[0]), int(centre[1]) + 3, int(centre[2]) + 3)
    assert masks[0][focus] and not masks[2][focus]
    masks[2][focus] = True
    return masks


def test_measure_segments_on_overlapping_masks() -> None:
    masks = brats_masks((12, 20, 20))
    core, whole, enhancing = masks
    assert (whole >= core).all() and (core >= enhancing).all()
    affine = _affine((2.0, 0.5, 0.75), rotate=True)
    voxel_ml = 2.0 * 0.5 * 0.75 / 1000
    measured = measure_segments(masks, affine, BRATS_SEGMENTS)
    assert [m.label_index for m in measured] == [1, 2, 3]
    for m, binary in zip(measured, masks, strict=True):
        # every segment on its own mask: shared voxels count in each segment
        assert m.voxel_count == int(np.count_nonzero(binary))
        assert m.volume_ml == pytest.approx(m.voxel_count * voxel_ml)
        assert m.lesions == lesion_statistics(binary, affine)
    core_m, whole_m, enhancing_m = measured
    assert whole_m.volume_ml > core_m.volume_ml > enhancing_m.volume_ml > 0
    assert core_m.lesions is not None and core_m.lesions.count == 1
    assert enhancing_m.lesions is not None and enhancing_m.lesions.count == 2
    # uint8 0/1 and segments given in any order: the same
    assert measure_segments(masks.astype(np.uint8), affine, BRATS_SEGMENTS[::-1]) == measured


def test_report_on_overlapping_segments(tmp_path: Path) -> None:
    geometry = SeriesGeometry(slices=12, rows=20, columns=20, slice_spacing=-2.0)
    paths = write_series(tmp_path, geometry)
    volume = load_series_volume(paths)
    masks = brats_masks(volume.shape)
    seg = write_seg(paths, masks, BRATS_SEGMENTS, ALGORITHM)
    sr = write_sr(seg, masks, volume.affine, BRATS_SEGMENTS, ALGORITHM)

    voxel_ml = abs(np.linalg.det(volume.affine[:3, :3])) / 1000
    groups = _groups(sr)
    assert [g["segment"] for g in groups] == [1, 2, 3]
    volumes: list[float] = []
    for group, binary in zip(groups, masks, strict=True):
        assert group["seg_uid"] == seg.SOPInstanceUID
        measured = group["118565006"]
        assert isinstance(measured, tuple)
        value, unit = measured
        assert unit == "cm3"
        assert value == pytest.approx(np.count_nonzero(binary) * voxel_ml, abs=1e-4)
        volumes.append(value)
        largest = lesion_statistics(binary, volume.affine).largest_diameter_mm
        assert group["81827009"] == (pytest.approx(largest, abs=0.01), "mm")
    core, whole, enhancing = volumes
    assert whole >= core >= enhancing > 0
    assert [g["246206008"] for g in groups] == [(1.0, "1"), (1.0, "1"), (2.0, "1")]

    with pytest.raises(ReportWriteError, match="3 segment masks but 2 segment descriptions"):
        write_sr(seg, masks, volume.affine, BRATS_SEGMENTS[:2], ALGORITHM)
    with pytest.raises(ReportWriteError, match="only 0 and 1"):
        write_sr(seg, masks * np.uint8(2), volume.affine, BRATS_SEGMENTS, ALGORITHM)
    with pytest.raises(ReportWriteError, match="rows/columns"):
        write_sr(seg, masks[..., 1:], volume.affine, BRATS_SEGMENTS, ALGORITHM)
    with pytest.raises(ReportWriteError, match=r"3D label map .* or 4D segment masks"):
        measure_segments(masks[0, 0], volume.affine, BRATS_SEGMENTS[:1])
