"""DICOM SEG writer and reader: alignment with the source geometry, references, codes,
provenance and research-use labelling, foreign SEGs from shared data."""

from __future__ import annotations

import gzip
import math
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.uid import RLELossless

from dicom_bridge import codes as C
from dicom_bridge.errors import DicomBridgeError
from dicom_bridge.seg import (
    RESEARCH_MARKER,
    AlgorithmInfo,
    SegmentationType,
    SegmentationWriteError,
    SegmentDescription,
    SegOptions,
    SourceSeriesError,
    content_label,
    read_source_grid,
    write_seg,
)
from dicom_bridge.seg_reader import SegmentationReadError, read_seg_labelmap
from dicom_bridge.sop_classes import LABEL_MAP_SEGMENTATION, SEGMENTATION
from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from dicom_bridge.volume import load_series_volume
from tests.peers import SHARED_DATA, require_data

SHA = "0123456789abcdef" * 4
ALGORITHM = AlgorithmInfo(name="liver", version="1.2", weights_sha256=SHA, federated_round=7)
SEGMENTS = (
    SegmentDescription(1, "Liver", C.ANATOMICAL_STRUCTURE, C.LIVER, color_rgb=(221, 130, 101)),
    SegmentDescription(
        2,
        "Liver tumour",
        C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        C.NEOPLASM,
        anatomic_region=C.LIVER,
        color_rgb=(255, 255, 0),
    ),
)
PATIENT_WORDS = ("PHANTOM", "DOE")
DCMQI_3SLICE = SHARED_DATA / "ct_abdomen_dcmqi_3slice"
SEG_EXAMPLES = SHARED_DATA / "seg_examples"
TOTALSEG = SHARED_DATA / "ct_abdomen_totalseg_j2k"


def _oblique(a_deg: float, b_deg: float) -> tuple[tuple[float, float, float], ...]:
    a, b = math.radians(a_deg), math.radians(b_deg)
    row = (math.cos(a), math.sin(a), 0.0)
    col = (-math.sin(a) * math.sin(b), math.cos(a) * math.sin(b), -math.cos(b))
    return row, col


AXIAL = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
GEOMETRIES = {
    "axial": (AXIAL, 2.0, None),
    # files and InstanceNumbers in reverse order of position
    "axial-reversed-files": (AXIAL, 2.0, "reverse"),
    # written against the normal: volume slice k is written slice n-1-k
    "axial-against-normal": (AXIAL, -2.5, None),
    "axial-normal-pointing-down": (((1.0, 0.0, 0.0), (0.0, -1.0, 0.0)), 2.0, None),
    "coronal": (((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)), 3.0, "reverse"),
    "sagittal": (((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)), 2.0, None),
    "oblique": (_oblique(30.0, 20.0), 2.5, "reverse"),
}


def truth_labels(slices: int, rows: int, columns: int) -> np.ndarray:
    """Two labels, in written order; shapes move with the slice so that flips show.

    Slice 0, the middle slice and the last slice are empty; label 2 is on two slices.
    """
    labels = np.zeros((slices, rows, columns), dtype=np.uint8)
    for m in range(1, slices - 1):
        if m == slices // 2:
            continue
        labels[m, 2 + m % 4 : rows - 3, 1 : columns // 2 + m] = 1
    labels[1, 4:7, 3:5] = 2
    labels[2, 4:6, 3:8] = 2
    return labels


def pixels_for(labels: np.ndarray, modality: str) -> np.ndarray:
    """Pixel values that carry the label (thousands) plus a slice-unique pattern."""
    s, r, c = np.indices(labels.shape)
    base = (s * 37 + r * 3 + c) % 500
    if modality == "CT":
        return (labels.astype(np.int16) * 1000 + base - 200).astype(np.int16)
    return (labels.astype(np.int16) * 1000 + base).astype(np.int16)


def label_of_pixels(values: np.ndarray, modality: str) -> np.ndarray:
    offset = 200 if modality == "CT" else 0
    return ((np.asarray(values) + offset) // 1000).astype(np.uint8)


def make_series(
    directory: Path,
    orientation: Sequence[Sequence[float]],
    slice_spacing: float,
    order: str | None,
    *,
    modality: str = "CT",
    shape: tuple[int, int, int] = (7, 20, 16),
) -> tuple[list[Path], np.ndarray]:
    """Write a series; return its files (shuffled) and the mask on the volume grid."""
    geometry = SeriesGeometry(
        slices=shape[0],
        rows=shape[1],
        columns=shape[2],
        pixel_spacing=(0.75, 0.9),
        slice_spacing=slice_spacing,
        origin=(-60.0, 25.5, 310.25),
        row_direction=tuple(orientation[0]),  # type: ignore[arg-type]
        column_direction=tuple(orientation[1]),  # type: ignore[arg-type]
    )
    labels = truth_labels(*shape)
    slice_order = list(range(shape[0]))[::-1] if order == "reverse" else None
    paths = write_series(
        directory,
        geometry,
        pixels_for(labels, modality),
        modality=modality,
        slice_order=slice_order,
        identity=SeriesIdentity(patient_name="PHANTOM^SEG", patient_id="PHANTOM-SEG"),
    )
    shuffled = [paths[i] for i in np.random.default_rng(3).permutation(len(paths))]
    volume = load_series_volume(shuffled)
    mask = label_of_pixels(volume.array, modality)
    return shuffled, mask


def _frame_sources(seg: hd.seg.Segmentation) -> list[str]:
    return [
        str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        for item in seg.PerFrameFunctionalGroupsSequence
    ]


# --- alignment ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [SegmentationType.BINARY, SegmentationType.LABELMAP])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_seg_round_trips_voxel_for_voxel_on_the_source_grid(
    tmp_path: Path, name: str, kind: SegmentationType
) -> None:
    orientation, spacing, order = GEOMETRIES[name]
    paths, mask = make_series(tmp_path / "ct", orientation, spacing, order)
    assert set(np.unique(mask).tolist()) == {0, 1, 2}
    volume = load_series_volume(paths)

    seg = write_seg(
        paths,
        mask,
        SEGMENTS,
        ALGORITHM,
        SegOptions(segmentation_type=kind),
        slice_uids=volume.sop_instance_uids,
    )
    seg_path = tmp_path / "seg.dcm"
    seg.save_as(seg_path)

    # 1. placed by frame position on the source grid: identical voxel for voxel
    result = read_seg_labelmap(seg_path, list(reversed(paths)))
    assert result.labelmap.dtype == np.uint8
    np.testing.assert_array_equal(result.labelmap, mask)
    assert result.segmentation_type == kind.value

    # 2. by reference, with highdicom, against each source file's own pixels
    reread = hd.seg.segread(seg_path)
    by_reference = reread.get_pixels_by_source_instance(
        source_sop_instance_uids=list(volume.sop_instance_uids),
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    np.testing.assert_array_equal(by_reference, mask)
    for path in paths:
        source = dcmread(path)
        own = label_of_pixels(source.pixel_array, "CT")
        k = volume.sop_instance_uids.index(str(source.SOPInstanceUID))
        np.testing.assert_array_equal(by_reference[k], own)

    # 3. each frame sits where the image it references is
    positions = {
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): np.array(
            dcmread(p, stop_before_pixels=True).ImagePositionPatient, dtype=float
        )
        for p in paths
    }
    for uid, item in zip(_frame_sources(seg), seg.PerFrameFunctionalGroupsSequence, strict=True):
        frame_position = np.array(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        np.testing.assert_allclose(frame_position, positions[uid], atol=1e-3)


@pytest.mark.parametrize("name", ["axial", "oblique"])
def test_mr_series_round_trips(tmp_path: Path, name: str) -> None:
    orientation, spacing, order = GEOMETRIES[name]
    paths, mask = make_series(tmp_path / "mr", orientation, spacing, order, modality="MR")
    segments = (
        SegmentDescription(1, "Glioma", C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, C.NEOPLASM, C.BRAIN),
    )
    mask = (mask > 0).astype(np.uint8)
    seg = write_seg(paths, mask, segments, AlgorithmInfo("glioma", "0.3", SHA, None))
    seg.save_as(tmp_path / "seg.dcm")
    np.testing.assert_array_equal(read_seg_labelmap(tmp_path / "seg.dcm", paths).labelmap, mask)
    assert seg.ContentLabel == "GLIOMA_V0_3"


def test_source_grid_agrees_with_load_series_volume(tmp_path: Path) -> None:
    for name, (orientation, spacing, order) in GEOMETRIES.items():
        paths, _ = make_series(tmp_path / name, orientation, spacing, order, shape=(4, 6, 5))
        volume = load_series_volume(paths)
        grid = read_source_grid(paths)
        assert grid.sop_instance_uids == volume.sop_instance_uids, name
        np.testing.assert_allclose(grid.affine, volume.affine, atol=1e-4, err_msg=name)
        assert grid.shape == volume.shape


def test_slice_uids_that_disagree_are_refused(tmp_path: Path) -> None:
    paths, mask = make_series(tmp_path, *GEOMETRIES["axial-reversed-files"])
    uids = load_series_volume(paths).sop_instance_uids
    with pytest.raises(SegmentationWriteError, match="slice order"):
        write_seg(paths, mask, SEGMENTS, ALGORITHM, slice_uids=tuple(reversed(uids)))


# --- content --------------------------------------------------------------------------------


@pytest.fixture
def ct(tmp_path: Path) -> tuple[list[Path], np.ndarray]:
    return make_series(tmp_path / "ct", *GEOMETRIES["axial-reversed-files"])


def test_seg_references_the_source_series_and_shares_its_identity(
    ct: tuple[list[Path], np.ndarray],
) -> None:
    paths, mask = ct
    seg = write_seg(paths, mask, SEGMENTS, ALGORITHM)
    sources = [dcmread(p, stop_before_pixels=True) for p in paths]
    first = sources[0]

    assert seg.SOPClassUID == SEGMENTATION
    assert seg.Modality == "SEG"
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    assert seg.PatientID == first.PatientID
    assert seg.SeriesInstanceUID != first.SeriesInstanceUID
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    referenced = {str(i.ReferencedSOPInstanceUID) for i in series.ReferencedInstanceSequence}
    assert referenced == {str(ds.SOPInstanceUID) for ds in sources}
    # every non-empty (slice, segment) pair is a frame that references its source image
    uids = load_series_volume(paths).sop_instance_uids
    expected = {
        (uids[k], number)
        for number in (1, 2)
        for k in range(mask.shape[0])
        if (mask[k] == number).any()
    }
    got = {
        (uid, int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber))
        for uid, item in zip(_frame_sources(seg), seg.PerFrameFunctionalGroupsSequence, strict=True)
    }
    assert got == expected
    assert seg.NumberOfFrames == len(expected)


def test_empty_frames_are_kept_on_request(ct: tuple[list[Path], np.ndarray]) -> None:
    paths, mask = ct
    seg = write_seg(paths, mask, SEGMENTS, ALGORITHM, SegOptions(omit_empty_frames=False))
    assert seg.NumberOfFrames == mask.shape[0] * 2


def test_labelmap_option(tmp_path: Path, ct: tuple[list[Path], np.ndarray]) -> None:
    paths, mask = ct
    seg = write_seg(paths, mask, SEGMENTS, ALGORITHM, SegOptions(segmentation_type="LABELMAP"))
    assert seg.SOPClassUID == LABEL_MAP_SEGMENTATION
    assert seg.SegmentationType == "LABELMAP"
    assert seg.NumberOfFrames == int(np.count_nonzero(mask.reshape(mask.shape[0], -1).any(1)))
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [0, 1, 2]  # 0: background
    rle = write_seg(
        paths,
        mask,
        SEGMENTS,
        ALGORITHM,
        SegOptions(segmentation_type="LABELMAP", transfer_syntax_uid=RLELossless),
    )
    rle.save_as(tmp_path / "rle.dcm")
    np.testing.assert_array_equal(read_seg_labelmap(tmp_path / "rle.dcm", paths).labelmap, mask)


def test_segments_carry_coded_concepts_and_algorithm_identification(
    ct: tuple[list[Path], np.ndarray],
) -> None:
    paths, mask = ct
    seg = write_seg(paths, mask, SEGMENTS, ALGORITHM)
    liver, tumour = seg.SegmentSequence
    for item, segment in ((liver, SEGMENTS[0]), (tumour, SEGMENTS[1])):
        assert item.SegmentLabel == segment.label
        assert segment.category.same_concept(
            C.CodeValue.from_coded(item.SegmentedPropertyCategoryCodeSequence[0])
        )
        assert segment.property_type.same_concept(
            C.CodeValue.from_coded(item.SegmentedPropertyTypeCodeSequence[0])
        )
        assert item.SegmentAlgorithmType == "AUTOMATIC"
        (algorithm,) = item.SegmentationAlgorithmIdentificationSequence
        assert algorithm.AlgorithmName == "liver"
        assert algorithm.AlgorithmVersion == "1.2"
        family = algorithm.AlgorithmFamilyCodeSequence[0]
        assert (family.CodeValue, family.CodingSchemeDesignator) == ("123110", "DCM")
        assert family.CodeMeaning == "Artificial Intelligence"
        assert f"weights_sha256={SHA}" in algorithm.AlgorithmParameters
        assert "federated_round=7" in algorithm.AlgorithmParameters
        assert "RecommendedDisplayCIELabValue" in item
    assert liver.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    assert liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert tumour.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert tumour.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"
    assert tumour.AnatomicRegionSequence[0].CodeValue == "10200004"


def test_model_version_and_research_marker_are_visible(ct: tuple[list[Path], np.ndarray]) -> None:
    paths, mask = ct
    seg = write_seg(paths, mask, SEGMENTS, ALGORITHM)

    assert seg.SeriesDescription == f"{RESEARCH_MARKER} liver 1.2"
    assert seg.ContentLabel == "LIVER_V1_2"
    assert seg.ContentDescription.startswith(RESEARCH_MARKER)
    assert "1.2" in seg.ContentDescription and "round 7" in seg.ContentDescription
    assert seg.ImageComments.startswith(RESEARCH_MARKER)
    assert SHA in seg.ImageComments and "federated round 7" in seg.ImageComments
    assert str(seg.ContentCreatorName) == "SegAppliance^liver 1.2"  # what viewers list
    assert list(seg.SoftwareVersions) == ["0.1.0", "liver 1.2"]
    processing = [
        item
        for item in seg.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
        and item.Manufacturer == "SegAppliance"
    ]
    (item,) = processing
    assert item.ManufacturerModelName == "liver" and item.SoftwareVersions == "1.2"
    assert SHA in item.ContributionDescription
    for value in (seg.SeriesDescription, seg.ContentDescription):
        assert len(value) <= 64

    clinical = write_seg(paths, mask, SEGMENTS, ALGORITHM, SegOptions(research_only=False))
    assert RESEARCH_MARKER not in clinical.SeriesDescription
    assert RESEARCH_MARKER not in clinical.ImageComments
    assert clinical.SeriesDescription == "AI SEG liver 1.2"
    assert "research_only=false" in (
        clinical.SegmentSequence[0]
        .SegmentationAlgorithmIdentificationSequence[0]
        .AlgorithmParameters
    )


def test_long_model_names_keep_the_version_and_the_marker(
    ct: tuple[list[Path], np.ndarray],
) -> None:
    paths, mask = ct
    algorithm = AlgorithmInfo("liver-and-liver-tumour-dynunet-large-site-tuned", "2024.11.3", SHA)
    seg = write_seg(paths, mask, SEGMENTS, algorithm)
    assert seg.SeriesDescription.startswith(RESEARCH_MARKER)
    assert seg.SeriesDescription.endswith(" 2024.11.3") and len(seg.SeriesDescription) <= 64
    assert seg.ContentLabel == "LIVER_V2024_11_3"
    assert "round none" in seg.ContentDescription


@pytest.mark.parametrize(
    ("name", "version", "expected"),
    [
        ("liver", "1.2", "LIVER_V1_2"),
        ("liver", "v1.2", "LIVER_V1_2"),
        ("glioma-mr", "0.3.1", "GLIOMA_MR_V0_3_1"),
        ("brain tumour segmentation", "10.20.30.40.50", "V10_20_30_40_50"),
        ("x", "1.0.0-rc.1+build.7", "V1_0_0_RC_1_BUI"),
    ],
)
def test_content_label_is_a_valid_code_string(name: str, version: str, expected: str) -> None:
    label = content_label(AlgorithmInfo(name, version, SHA))
    assert label == expected
    assert len(label) <= 16 and label == label.upper()
    assert set(label) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ ")


def test_absent_labels_are_still_described(
    tmp_path: Path, ct: tuple[list[Path], np.ndarray]
) -> None:
    paths, mask = ct
    no_tumour = np.where(mask == 2, 1, mask).astype(np.uint8)
    seg = write_seg(paths, no_tumour, SEGMENTS, ALGORITHM)
    assert len(seg.SegmentSequence) == 2
    seg.save_as(tmp_path / "seg.dcm")
    result = read_seg_labelmap(tmp_path / "seg.dcm", paths)
    np.testing.assert_array_equal(result.labelmap, no_tumour)
    assert [s.number for s in result.segments] == [1, 2]

    empty = np.zeros_like(mask)
    seg = write_seg(paths, empty, SEGMENTS, ALGORITHM)  # highdicom keeps all frames then
    seg.save_as(tmp_path / "empty.dcm")
    np.testing.assert_array_equal(read_seg_labelmap(tmp_path / "empty.dcm", paths).labelmap, empty)


def test_bool_mask_and_one_segment(tmp_path: Path, ct: tuple[list[Path], np.ndarray]) -> None:
    paths, mask = ct
    seg = write_seg(paths, mask > 0, SEGMENTS[:1], ALGORITHM)
    seg.save_as(tmp_path / "seg.dcm")
    result = read_seg_labelmap(tmp_path / "seg.dcm", paths)
    np.testing.assert_array_equal(result.labelmap, (mask > 0).astype(np.uint8))


def test_bad_input_is_refused_without_patient_data(ct: tuple[list[Path], np.ndarray]) -> None:
    paths, mask = ct
    cases: list[tuple[type[DicomBridgeError], str, object]] = [
        (SegmentationWriteError, "shape", lambda: write_seg(paths, mask[1:], SEGMENTS, ALGORITHM)),
        (
            SegmentationWriteError,
            "no segment description",
            lambda: write_seg(paths, mask, SEGMENTS[:1], ALGORITHM),
        ),
        (
            SegmentationWriteError,
            "1..2",
            lambda: write_seg(
                paths,
                mask,
                (SEGMENTS[0], SegmentDescription(3, "x", C.ANATOMICAL_STRUCTURE, C.LIVER)),
                ALGORITHM,
            ),
        ),
        (
            SegmentationWriteError,
            "integer",
            lambda: write_seg(paths, mask.astype(np.float32), SEGMENTS, ALGORITHM),
        ),
        (SourceSeriesError, "none of", lambda: write_seg([], mask, SEGMENTS, ALGORITHM)),
    ]
    for error, text, call in cases:
        with pytest.raises(error, match=text) as info:
            call()  # type: ignore[operator]
        for word in PATIENT_WORDS:
            assert word not in str(info.value)
    with pytest.raises(SegmentationWriteError, match="sha256"):
        AlgorithmInfo("liver", "1", "not-a-hash")
    with pytest.raises(SegmentationWriteError, match="label_index"):
        SegmentDescription(0, "bg", C.ANATOMICAL_STRUCTURE, C.LIVER)
    with pytest.raises(SegmentationWriteError, match="RLE"):
        SegOptions(transfer_syntax_uid=RLELossless)
    with pytest.raises(SegmentationWriteError, match="UID"):
        SegOptions(sop_instance_uid="1.2.abc")


def test_reading_onto_a_shorter_source_series(
    tmp_path: Path, ct: tuple[list[Path], np.ndarray]
) -> None:
    paths, mask = ct
    uids = load_series_volume(paths).sop_instance_uids
    rest = [p for p in paths if str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) != uids[0]]
    assert not mask[0].any()
    seg = write_seg(paths, mask, SEGMENTS, ALGORITHM, SegOptions(omit_empty_frames=False))
    seg.save_as(tmp_path / "all.dcm")
    result = read_seg_labelmap(tmp_path / "all.dcm", rest)  # empty frames beyond it: skipped
    np.testing.assert_array_equal(result.labelmap, mask[1:])
    assert result.frames_placed == 2 * (mask.shape[0] - 1)

    marked = mask.copy()
    marked[0, 0, 0] = 1
    write_seg(paths, marked, SEGMENTS, ALGORITHM).save_as(tmp_path / "marked.dcm")
    with pytest.raises(SegmentationReadError, match="outside the source series"):
        read_seg_labelmap(tmp_path / "marked.dcm", rest)


def test_highdicom_warnings_reach_the_log_without_the_patient_name(tmp_path: Path) -> None:
    geometry = SeriesGeometry(slices=3, rows=8, columns=8)
    identity = SeriesIdentity(patient_name="DOE JOHN", patient_id="DOE-1234")  # no caret
    paths = write_series(tmp_path, geometry, identity=identity)
    mask = np.zeros((3, 8, 8), dtype=np.uint8)
    mask[1, 2:4, 2:4] = 1
    with pytest.warns(UserWarning) as caught:
        seg = write_seg(paths, mask, SEGMENTS[:1], ALGORITHM)
    assert seg.PatientName == "DOE JOHN"  # the object keeps it; only messages are redacted
    messages = [str(w.message) for w in caught]
    assert any("<redacted>" in m for m in messages)
    assert not any("DOE" in m or "JOHN" in m for m in messages)


def test_source_series_with_a_missing_slice_is_refused(tmp_path: Path) -> None:
    paths, mask = make_series(tmp_path, *GEOMETRIES["axial"])
    ordered = sorted(paths, key=lambda p: float(dcmread(p).ImagePositionPatient[2]))
    with pytest.raises(SourceSeriesError, match="evenly spaced"):
        write_seg(ordered[:3] + ordered[4:], mask[:-1], SEGMENTS, ALGORITHM)


# --- codes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "scheme", "keyword"),
    [
        (C.LIVER, "SCT", "Liver"),
        (C.BRAIN, "SCT", "Brain"),
        (C.ANATOMICAL_STRUCTURE, "SCT", "AnatomicalStructure"),
        (C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, "SCT", "MorphologicallyAbnormalStructure"),
        (C.NEOPLASM, "SCT", "Neoplasm"),
        (C.ARTIFICIAL_INTELLIGENCE, "DCM", "ArtificialIntelligence"),
        (C.VOLUME, "SCT", "Volume"),
        (C.DIAMETER, "SCT", "Diameter"),
        (C.NUMBER_OF_LESIONS, "SCT", "NumberOfLesions"),
        (C.MAXIMUM, "SCT", "Maximum"),
        (C.SUM_OF_SEGMENTED_VOXELS, "DCM", "SumOfSegmentedVoxelMethodForVolume"),
        (C.CUBIC_CENTIMETER, "UCUM", "CubicCentimeter"),
        (C.MILLIMETER, "UCUM", "Millimeter"),
        (C.NO_UNITS, "UCUM", "NoUnits"),
    ],
)
def test_codes_match_pydicoms_dictionary(ours: C.CodeValue, scheme: str, keyword: str) -> None:
    theirs = getattr(getattr(pydicom_codes, scheme), keyword)
    assert ours.same_concept(theirs)
    assert ours.meaning.lower() in theirs.meaning.lower()


def test_code_value_is_a_plain_value() -> None:
    code = C.CodeValue("SCT", "10200004", "Liver")
    assert code == C.LIVER and hash(code) == hash(C.LIVER)
    concept = code.to_coded_concept()
    assert (concept.value, concept.scheme_designator, concept.meaning) == (
        "10200004",
        "SCT",
        "Liver",
    )
    assert C.CodeValue.from_coded(concept) == code
    assert C.CodeValue.from_coded(pydicom_codes.SCT.Liver) == code
    assert C.CodeValue.from_coded(code) == code  # anything with scheme/value/meaning
    assert C.LIVER.same_concept(C.CodeValue("SCT", "10200004", "Liver structure"))
    with pytest.raises(ValueError):
        C.CodeValue("", "1", "x")
    with pytest.raises(ValueError):
        C.CodeValue("SCT", "1", "")
    assert not C.CodeValue("SCT", "91723000", "x").same_concept(
        C.CodeValue("SCT", "123037004", "Body structure")
    )


# --- foreign SEGs and real data -----------------------------------------------------------------


def test_dcmqi_liver_seg_on_its_real_ct_stored_in_reverse_order() -> None:
    seg_path = require_data(DCMQI_3SLICE / "liver_SEG_dcmqi.dcm")
    sources = sorted(DCMQI_3SLICE.glob("0*.dcm"))
    volume = load_series_volume(sources)
    # 01.dcm is the highest slice: stored against the normal
    assert volume.sop_instance_uids[0] == str(dcmread(sources[2]).SOPInstanceUID)

    result = read_seg_labelmap(seg_path, sources)

    by_reference = hd.seg.segread(seg_path).get_pixels_by_source_instance(
        list(volume.sop_instance_uids), combine_segments=True, ignore_spatial_locations=True
    )
    np.testing.assert_array_equal(result.labelmap, by_reference)
    assert result.labelmap.shape == volume.shape and result.labelmap.any()
    assert [(s.number, s.label) for s in result.segments] == [(1, "Liver")]
    assert result.segments[0].property_type is not None


def test_overlapping_foreign_segments(tmp_path: Path) -> None:
    seg_path = require_data(SEG_EXAMPLES / "dcmqi_partial_overlaps_5seg.dcm")
    sources = sorted(DCMQI_3SLICE.glob("0*.dcm"))
    with pytest.raises(SegmentationReadError, match="overlap"):
        read_seg_labelmap(seg_path, sources)
    result = read_seg_labelmap(seg_path, sources, overlap="highest")
    uids = list(load_series_volume(sources).sop_instance_uids)
    expected = hd.seg.segread(seg_path).get_pixels_by_source_instance(
        uids,
        combine_segments=True,
        skip_overlap_checks=True,
        assert_missing_frames_are_empty=True,
        ignore_spatial_locations=True,
    )
    np.testing.assert_array_equal(result.labelmap, expected)
    assert len(result.segments) == 5


def test_foreign_label_map_seg_with_omitted_middle_slice(tmp_path: Path) -> None:
    """dcmqi's sparse label map: two frames two slices apart, 66.7 IOD; source rebuilt."""
    for name in ("dcmqi_labelmap_seg_noppv.dcm", "dcmqi_labelmap_seg_ppv5.dcm"):
        seg_path = require_data(SEG_EXAMPLES / name)
        seg = dcmread(seg_path)
        first = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
        geometry = SeriesGeometry(
            slices=3,
            rows=int(seg.Rows),
            columns=int(seg.Columns),
            pixel_spacing=(0.7, 0.7),
            slice_spacing=2.5,
            origin=tuple(float(v) for v in first.ImagePositionPatient),  # type: ignore[arg-type]
        )
        sources = write_series(
            tmp_path / name,
            geometry,
            identity=SeriesIdentity(frame_of_reference_uid=str(seg.FrameOfReferenceUID)),
        )

        result = read_seg_labelmap(seg_path, sources)

        stored = seg.pixel_array
        np.testing.assert_array_equal(result.labelmap[0], stored[0])
        assert not result.labelmap[1].any()
        np.testing.assert_array_equal(result.labelmap[2], stored[1])
        assert [(s.number, s.label) for s in result.segments] == [(1, "Liver")]
        assert result.segmentation_type == "LABELMAP"


def test_single_frame_highdicom_seg_on_one_image() -> None:
    seg_path = require_data(SEG_EXAMPLES / "highdicom" / "seg_image_ct_binary_single_frame.dcm")
    source = SEG_EXAMPLES / "highdicom" / "ct_image.dcm"
    result = read_seg_labelmap(seg_path, [source])
    expected = hd.seg.segread(seg_path).get_pixels_by_source_instance(
        [str(dcmread(source).SOPInstanceUID)], combine_segments=True
    )
    np.testing.assert_array_equal(result.labelmap, expected)


def test_seg_of_another_series_is_refused(ct: tuple[list[Path], np.ndarray]) -> None:
    paths, _ = ct
    seg_path = require_data(DCMQI_3SLICE / "liver_SEG_dcmqi.dcm")
    with pytest.raises(SegmentationReadError, match="Frame of Reference"):
        read_seg_labelmap(seg_path, paths)
    not_a_seg = paths[0]
    with pytest.raises(SegmentationReadError):
        read_seg_labelmap(not_a_seg, paths)


def read_nifti(path: Path) -> np.ndarray:
    """Just enough NIfTI-1 for the shared TotalSegmentator label file (no nibabel here)."""
    raw = gzip.decompress(path.read_bytes())
    dims = np.frombuffer(raw, dtype="<i2", count=8, offset=40)
    datatype = int(np.frombuffer(raw, dtype="<i2", count=1, offset=70)[0])
    offset = int(np.frombuffer(raw, dtype="<f4", count=1, offset=108)[0])
    dtypes = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 512: np.uint16}
    shape = tuple(int(d) for d in dims[1 : 1 + int(dims[0])])
    count = int(np.prod(shape))
    data = np.frombuffer(
        raw, dtype=np.dtype(dtypes[datatype]).newbyteorder("<"), count=count, offset=offset
    )
    return data.reshape(shape, order="F")


def totalseg_liver_mask(volume_shape: tuple[int, int, int]) -> np.ndarray:
    """Label 5 (liver) of the shared NIfTI on the volume grid: i = column, j = reversed row,
    k = ascending z = slice along the axial normal."""
    labels = read_nifti(require_data(TOTALSEG / "labels_totalsegmentator_multilabel.nii.gz"))
    liver = labels.transpose(2, 1, 0)[:, ::-1, :] == 5
    assert liver.shape == volume_shape
    return liver.astype(np.uint8)


def test_real_j2k_ct_with_its_totalsegmentator_liver(tmp_path: Path) -> None:
    sources = sorted(require_data(TOTALSEG / "dicom_uids_repaired").iterdir())
    volume = load_series_volume(sources)
    mask = totalseg_liver_mask(volume.shape)
    # The label lies on the liver: > 99 % of it is soft tissue (0-200 HU). Flipping the
    # slices, rows or columns of this mapping drops that to 96 %, 71 % and 72 %.
    inside = volume.array[mask == 1]
    assert float(np.mean((inside > 0) & (inside < 200))) > 0.99
    tumour = (mask == 1) & (volume.array > np.percentile(volume.array[mask == 1], 97))
    mask[tumour] = 2

    seg = write_seg(sources, mask, SEGMENTS, ALGORITHM, slice_uids=volume.sop_instance_uids)
    seg.save_as(tmp_path / "seg.dcm")

    np.testing.assert_array_equal(read_seg_labelmap(tmp_path / "seg.dcm", sources).labelmap, mask)
    assert (
        seg.FrameOfReferenceUID == dcmread(sources[0], stop_before_pixels=True).FrameOfReferenceUID
    )


def test_multiframe_enhanced_ct_stored_against_the_normal(tmp_path: Path) -> None:
    source = require_data(SHARED_DATA / "transfer_syntaxes/pydicom_data/eCT_Supplemental.dcm")
    volume = load_series_volume([source])
    assert volume.affine[2, 0] < 0  # frame 2 comes first along the normal
    mask = np.zeros(volume.shape, dtype=np.uint8)
    mask[0, 100:200, 150:300] = 1
    mask[1, 300:320, 10:40] = 2

    seg = write_seg([source], mask, SEGMENTS, ALGORITHM, slice_uids=volume.sop_instance_uids)
    seg.save_as(tmp_path / "seg.dcm")

    np.testing.assert_array_equal(read_seg_labelmap(tmp_path / "seg.dcm", [source]).labelmap, mask)
    by_frame = hd.seg.segread(tmp_path / "seg.dcm").get_pixels_by_source_frame(
        str(dcmread(source, stop_before_pixels=True).SOPInstanceUID),
        source_frame_numbers=[2, 1],
        combine_segments=True,
        assert_missing_frames_are_empty=True,
    )
    np.testing.assert_array_equal(by_frame, mask)


# --- overlapping segments (one binary mask per segment) ---------------------------------------

#: The MONAI BraTS bundle's outputs, in its channel order: whole tumour contains tumour
#: core, which contains enhancing tumour.
BRATS_SEGMENTS = (
    SegmentDescription(1, "Tumour core", C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, C.GLIOMA, C.BRAIN),
    SegmentDescription(2, "Whole tumour", C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, C.GLIOMA, C.BRAIN),
    SegmentDescription(
        3, "Enhancing tumour", C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, C.GLIOMA, C.BRAIN
    ),
)


def nested_masks(
    shape: tuple[int, int, int], centre: tuple[float, float, float], radii: Sequence[float]
) -> np.ndarray:
    """Concentric balls (radii in voxels) around ``centre``, one bool mask per radius."""
    s, r, c = np.indices(shape, dtype=np.float64)
    distance = np.sqrt((s - centre[0]) ** 2 + (r - centre[1]) ** 2 + (c - centre[2]) ** 2)
    return np.stack([distance <= radius for radius in radii])


def brats_masks(shape: tuple[int, int, int]) -> np.ndarray:
    """(core, whole, enhancing) off-centre so that flips and transposes show; whole >
    core > enhancing > 0 voxels, and some slices hold only the whole tumour."""
    masks = nested_masks(shape, (shape[0] / 2 - 0.3, shape[1] / 2 + 1.2, shape[2] / 3), (3, 5, 1.5))
    assert (masks[1] >= masks[0]).all() and (masks[0] >= masks[2]).all()
    assert masks[1].sum() > masks[0].sum() > masks[2].sum() > 0
    return masks


def assert_same_segments(stacked: np.ndarray, masks: np.ndarray) -> None:
    """highdicom's (slices, rows, columns, segments) pixels equal the (S, ...) masks."""
    assert stacked.shape == (*masks.shape[1:], masks.shape[0])
    for i in range(masks.shape[0]):
        np.testing.assert_array_equal(stacked[..., i].astype(bool), masks[i], err_msg=f"seg {i}")


@pytest.mark.parametrize("name", ["axial-reversed-files", "axial-against-normal", "oblique"])
def test_overlapping_segment_masks_round_trip(tmp_path: Path, name: str) -> None:
    paths, _ = make_series(tmp_path / "ct", *GEOMETRIES[name], modality="MR")
    volume = load_series_volume(paths)
    masks = brats_masks(volume.shape)

    seg = write_seg(paths, masks, BRATS_SEGMENTS, ALGORITHM, slice_uids=volume.sop_instance_uids)
    seg.save_as(tmp_path / "seg.dcm")

    assert seg.SOPClassUID == SEGMENTATION and seg.SegmentationType == "BINARY"
    assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2, 3]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [s.label for s in BRATS_SEGMENTS]
    # one frame per non-empty (slice, segment), each referencing its source image
    expected = {
        (volume.sop_instance_uids[k], i + 1)
        for i in range(3)
        for k in range(volume.shape[0])
        if masks[i, k].any()
    }
    got = {
        (uid, int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber))
        for uid, item in zip(_frame_sources(seg), seg.PerFrameFunctionalGroupsSequence, strict=True)
    }
    assert got == expected and seg.NumberOfFrames == len(expected)

    reread = hd.seg.segread(tmp_path / "seg.dcm")
    stacked = reread.get_pixels_by_source_instance(
        source_sop_instance_uids=list(volume.sop_instance_uids),
        assert_missing_frames_are_empty=True,
    )
    assert_same_segments(stacked, masks)
    overlap = stacked.astype(bool).sum(axis=-1)
    assert overlap.max() == 3  # the enhancing tumour lies in all three segments
    assert int(np.count_nonzero(overlap == 3)) == int(masks[2].sum())

    # the same masks as uint8 0/1 give the same frames
    as_uint8 = write_seg(paths, masks.astype(np.uint8), BRATS_SEGMENTS, ALGORITHM)
    assert as_uint8.NumberOfFrames == seg.NumberOfFrames
    assert as_uint8.PixelData == seg.PixelData

    # a label map cannot hold them: the reader says so instead of dropping voxels
    with pytest.raises(SegmentationReadError, match="overlap"):
        read_seg_labelmap(tmp_path / "seg.dcm", paths)


def test_overlapping_segment_masks_keep_empty_frames_on_request(
    ct: tuple[list[Path], np.ndarray],
) -> None:
    paths, _ = ct
    shape = load_series_volume(paths).shape
    masks = brats_masks(shape)
    masks[2] = False  # a model that finds no enhancing tumour still describes it
    seg = write_seg(paths, masks, BRATS_SEGMENTS, ALGORITHM, SegOptions(omit_empty_frames=False))
    assert seg.NumberOfFrames == shape[0] * 3
    assert len(seg.SegmentSequence) == 3
    omitted = write_seg(paths, masks, BRATS_SEGMENTS, ALGORITHM)
    assert omitted.NumberOfFrames == sum(
        int(np.count_nonzero(m.reshape(shape[0], -1).any(axis=1))) for m in masks
    )


def test_overlapping_segment_masks_are_refused_when_they_do_not_fit(
    ct: tuple[list[Path], np.ndarray],
) -> None:
    paths, _ = ct
    shape = load_series_volume(paths).shape
    masks = brats_masks(shape)
    cases: list[tuple[str, object]] = [
        (
            "LABELMAP SEG cannot hold overlapping segments",
            lambda: write_seg(
                paths, masks, BRATS_SEGMENTS, ALGORITHM, SegOptions(segmentation_type="LABELMAP")
            ),
        ),
        (
            "3 segment masks but 2 segment descriptions",
            lambda: write_seg(paths, masks, BRATS_SEGMENTS[:2], ALGORITHM),
        ),
        (
            "2 segment masks but 3 segment descriptions",
            lambda: write_seg(paths, masks[:2], BRATS_SEGMENTS, ALGORITHM),
        ),
        (
            r"label indices 1\.\.3",
            lambda: write_seg(
                paths,
                masks,
                (
                    *BRATS_SEGMENTS[:2],
                    SegmentDescription(4, "x", C.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, C.GLIOMA),
                ),
                ALGORITHM,
            ),
        ),
        ("only 0 and 1", lambda: write_seg(paths, masks * np.uint8(2), BRATS_SEGMENTS, ALGORITHM)),
        (
            "bool or integer",
            lambda: write_seg(paths, masks.astype(np.float32), BRATS_SEGMENTS, ALGORITHM),
        ),
        (
            "source volume grid",
            lambda: write_seg(paths, masks[:, 1:], BRATS_SEGMENTS, ALGORITHM),
        ),
    ]
    for text, call in cases:
        with pytest.raises(SegmentationWriteError, match=text) as info:
            call()  # type: ignore[operator]
        for word in PATIENT_WORDS:
            assert word not in str(info.value)


def test_overlapping_segments_on_a_multiframe_enhanced_ct(tmp_path: Path) -> None:
    source = require_data(SHARED_DATA / "transfer_syntaxes/pydicom_data/eCT_Supplemental.dcm")
    volume = load_series_volume([source])
    assert volume.affine[2, 0] < 0  # stored frame 2 is slice 0: the masks must be permuted
    assert volume.shape[0] == 2
    masks = np.zeros((3, *volume.shape), dtype=bool)
    masks[1, 0, 100:220, 150:300] = True  # whole tumour: both slices
    masks[1, 1, 110:200, 160:280] = True
    masks[0, 0, 120:200, 170:260] = True  # core: slice 0 only
    masks[2, 0, 140:160, 200:230] = True  # enhancing: inside the core
    assert (masks[1] >= masks[0]).all() and (masks[0] >= masks[2]).all()

    seg = write_seg([source], masks, BRATS_SEGMENTS, ALGORITHM, slice_uids=volume.sop_instance_uids)
    seg.save_as(tmp_path / "seg.dcm")

    assert seg.NumberOfFrames == 4  # whole x 2, core x 1, enhancing x 1
    reread = hd.seg.segread(tmp_path / "seg.dcm")
    by_frame = reread.get_pixels_by_source_frame(
        str(dcmread(source, stop_before_pixels=True).SOPInstanceUID),
        source_frame_numbers=[2, 1],  # slice order: stored frame 2 first
        assert_missing_frames_are_empty=True,
    )
    assert_same_segments(by_frame, masks)
    with pytest.raises(SegmentationReadError, match="overlap"):
        read_seg_labelmap(tmp_path / "seg.dcm", [source])


def _seg_content(seg: hd.seg.Segmentation) -> dict[str, object]:
    """What must not depend on where the source headers came from."""
    frames = seg.PerFrameFunctionalGroupsSequence
    return {
        "pixels": bytes(seg.PixelData),
        "frames": int(seg.NumberOfFrames),
        "sources": _frame_sources(seg),
        "positions": [
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
            for item in frames
        ],
        "segments": [
            (int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)) for item in frames
        ],
        "referenced": [
            str(i.ReferencedSOPInstanceUID)
            for s in seg.ReferencedSeriesSequence
            for i in s.ReferencedInstanceSequence
        ],
        "patient": (str(seg.PatientName), str(seg.PatientID), str(seg.StudyInstanceUID)),
        "frame_of_reference": str(seg.FrameOfReferenceUID),
        "stamp": (
            str(seg.SeriesDescription),
            str(seg.ContentLabel),
            str(seg.ContentDescription),
            str(seg.ImageComments),
            [str(s.SegmentAlgorithmName) for s in seg.SegmentSequence],
        ),
    }


def test_real_ct_seg_from_the_volumes_headers_equals_the_seg_from_the_files(
    tmp_path: Path,
) -> None:
    sources = sorted(require_data(TOTALSEG / "dicom_uids_repaired").iterdir())
    volume = load_series_volume(sources)
    assert len(volume.source_headers) == len(sources)
    assert all("PixelData" not in ds for ds in volume.source_headers)  # no pixels kept
    mask = totalseg_liver_mask(volume.shape)
    options = SegOptions(series_instance_uid="1.2.3.4", sop_instance_uid="1.2.3.5")
    args = (sources, mask, SEGMENTS, ALGORITHM, options)
    from_files = write_seg(*args, slice_uids=volume.sop_instance_uids)
    from_headers = write_seg(
        *args, slice_uids=volume.sop_instance_uids, source_headers=volume.source_headers
    )
    assert _seg_content(from_headers) == _seg_content(from_files)
    from_headers.save_as(tmp_path / "seg.dcm")
    np.testing.assert_array_equal(read_seg_labelmap(tmp_path / "seg.dcm", sources).labelmap, mask)


@pytest.mark.parametrize(
    ("extra", "described", "undescribed"),
    [
        pytest.param((2,), (1, 3), "[2]", id="one-gap"),
        pytest.param((17, 39), (1, 40), "[17, 39]", id="many-gaps-histogram"),
    ],
)
def test_undescribed_label_values_are_named(
    ct: tuple[list[Path], np.ndarray],
    extra: tuple[int, ...],
    described: tuple[int, ...],
    undescribed: str,
) -> None:
    paths, mask = ct
    labels = (mask > 0).astype(np.uint8)
    labels[labels.shape[0] // 2, 0, 0] = described[-1]
    for k, value in enumerate(extra):
        labels[labels.shape[0] // 2, 1, k] = value
    segments = [SegmentDescription(i, f"s{i}", C.ANATOMICAL_STRUCTURE, C.LIVER) for i in described]
    options = SegOptions(segmentation_type=SegmentationType.LABELMAP)
    with pytest.raises(SegmentationWriteError, match="no segment description") as info:
        write_seg(paths, labels, segments, ALGORITHM, options)
    assert undescribed in str(info.value)
