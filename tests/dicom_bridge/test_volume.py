"""Series -> volume: geometry against known synthetic truth, each rejection, real data."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_bridge.errors import VolumeError
from dicom_bridge.sop_classes import COMPREHENSIVE_SR
from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from dicom_bridge.volume import SeriesVolume, VolumeRejection, load_series_volume
from tests.peers import SHARED_DATA, interop_required

DATA = SHARED_DATA
TOTALSEG = DATA / "ct_abdomen_totalseg_j2k" / "dicom_uids_repaired"
DCMQI_3SLICE = DATA / "ct_abdomen_dcmqi_3slice"
GANTRY_TILT = DATA / "ct_head_ge_gantry_tilt_varspacing"
PYDICOM_DATA = DATA / "transfer_syntaxes" / "pydicom_data"
MR_TRUNCATED = DATA / "malformed" / "MR_truncated.dcm"

IDENTITY_WORDS = ("PHANTOM", "DOE")


def _needs(path: Path) -> pytest.MarkDecorator:
    # Missing shared data skips locally, but fails where interop is required (CI).
    return pytest.mark.skipif(
        not path.exists() and not interop_required(),
        reason=f"shared test data {path} not present",
    )


# --- helpers ------------------------------------------------------------------------------


def _random_pixels(geometry: SeriesGeometry, seed: int = 0) -> np.ndarray:
    """Different values on every slice, so that a misordered stack is caught."""
    rng = np.random.default_rng(seed)
    shape = (geometry.slices, geometry.rows, geometry.columns)
    return rng.integers(-1024, 2000, size=shape).astype(np.int16)


def _edit(path: Path, change: Callable[[Dataset], None]) -> None:
    ds = dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)


def _set(**values: object) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)

    return change


def _reject(paths: list[Path]) -> VolumeError:
    with pytest.raises(VolumeError) as info:
        load_series_volume(paths)
    exc = info.value
    for word in IDENTITY_WORDS:
        assert word not in str(exc), f"identifying text in the error: {exc}"
    return exc


def _assert_maps_like(volume: SeriesVolume, geometry: SeriesGeometry, pixels: np.ndarray) -> None:
    """Every voxel lands where the geometry that wrote it says, with the value written there."""
    truth = geometry.affine()
    n, rows, cols = pixels.shape
    assert volume.shape == (n, rows, cols)
    for k in range(n):
        corner = volume.affine @ np.array([k, 0, 0, 1.0])
        matches = [
            m for m in range(n) if np.allclose(corner[:3], geometry.slice_position(m), atol=1e-2)
        ]
        assert len(matches) == 1, f"slice {k} at {corner[:3]} matches no written slice"
        m = matches[0]
        np.testing.assert_array_equal(volume.array[k], pixels[m].astype(np.float32))
        for i, j in ((0, 0), (rows - 1, 0), (0, cols - 1), (3, 5), (rows - 1, cols - 1)):
            world = volume.affine @ np.array([k, i, j, 1.0])
            expected = truth @ np.array([m, i, j, 1.0])
            np.testing.assert_allclose(world, expected, atol=1e-2)


def _sop_uids(paths: list[Path]) -> list[str]:
    return [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]


@pytest.fixture
def ct_series(tmp_path: Path) -> Iterator[tuple[SeriesGeometry, np.ndarray, list[Path]]]:
    geometry = SeriesGeometry(slices=8, rows=24, columns=20)
    pixels = _random_pixels(geometry)
    yield geometry, pixels, write_series(tmp_path / "ct", geometry, pixels)


def _oblique(a_deg: float, b_deg: float) -> tuple[tuple[float, ...], tuple[float, ...]]:
    a, b = math.radians(a_deg), math.radians(b_deg)
    row = (math.cos(a), math.sin(a), 0.0)
    col = (-math.sin(a) * math.sin(b), math.cos(a) * math.sin(b), -math.cos(b))
    return row, col


# --- geometry -------------------------------------------------------------------------------


def test_axial_ct_matches_the_written_geometry(
    ct_series: tuple[SeriesGeometry, np.ndarray, list[Path]],
) -> None:
    geometry, pixels, paths = ct_series
    identity_for = str(dcmread(paths[0], stop_before_pixels=True).FrameOfReferenceUID)

    volume = load_series_volume(paths)

    assert volume.shape == (8, 24, 20)
    assert volume.array.dtype == np.float32
    assert volume.array.flags.c_contiguous
    np.testing.assert_allclose(volume.affine, geometry.affine(), atol=1e-4)
    np.testing.assert_array_equal(volume.array, pixels.astype(np.float32))
    assert volume.spacing == pytest.approx((2.0, 0.8, 0.8))
    assert volume.modality == "CT"
    assert volume.sop_instance_uids == tuple(_sop_uids(paths))
    assert volume.frame_of_reference_uid == identity_for


def test_phantom_hu_values_and_rescale_are_applied(tmp_path: Path) -> None:
    geometry = SeriesGeometry(slices=4, rows=16, columns=16)
    paths = write_series(tmp_path, geometry)  # ellipsoid phantom in HU, slope 1 intercept 0
    volume = load_series_volume(paths)
    assert set(np.unique(volume.array).tolist()) == {-1000.0, 30.0, 90.0}

    stored = _random_pixels(geometry, seed=3)
    paths = write_series(tmp_path / "rescaled", geometry, stored)
    for path in paths:
        _edit(path, _set(RescaleSlope="2", RescaleIntercept="-1024"))
    volume = load_series_volume(paths)
    np.testing.assert_array_equal(volume.array, stored.astype(np.float32) * 2 - 1024)


def test_mr_series_keeps_stored_values(tmp_path: Path) -> None:
    geometry = SeriesGeometry(slices=5, rows=16, columns=12)
    paths = write_series(tmp_path, geometry, modality="MR")
    volume = load_series_volume(paths)
    assert volume.modality == "MR"
    assert set(np.unique(volume.array).tolist()) == {0.0, 400.0, 900.0}


def test_shuffled_files_are_sorted_by_position(tmp_path: Path) -> None:
    geometry = SeriesGeometry(slices=9, rows=16, columns=20)
    pixels = _random_pixels(geometry, seed=1)
    order = [4, 0, 8, 2, 6, 1, 7, 3, 5]
    paths = write_series(tmp_path, geometry, pixels, slice_order=order)
    given = [paths[i] for i in np.random.default_rng(5).permutation(len(paths))]

    volume = load_series_volume(given)

    np.testing.assert_allclose(volume.affine, geometry.affine(), atol=1e-4)
    np.testing.assert_array_equal(volume.array, pixels.astype(np.float32))
    assert volume.sop_instance_uids == tuple(_sop_uids(paths))


@pytest.mark.parametrize(
    ("row", "col"),
    [
        pytest.param((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), id="axial-normal-pointing-down"),
        pytest.param((1.0, 0.0, 0.0), (0.0, 0.0, -1.0), id="coronal"),
        pytest.param((0.0, 1.0, 0.0), (0.0, 0.0, -1.0), id="sagittal"),
        pytest.param(*_oblique(30.0, 20.0), id="oblique"),
    ],
)
def test_other_orientations_map_voxels_to_lps(
    tmp_path: Path, row: tuple[float, float, float], col: tuple[float, float, float]
) -> None:
    geometry = SeriesGeometry(
        slices=7,
        rows=18,
        columns=22,
        pixel_spacing=(0.7, 0.9),
        slice_spacing=2.5,
        origin=(-120.0, 35.5, 410.25),
        row_direction=row,
        column_direction=col,
    )
    pixels = _random_pixels(geometry, seed=2)
    paths = write_series(tmp_path, geometry, pixels, slice_order=[6, 5, 4, 3, 2, 1, 0])

    volume = load_series_volume(list(reversed(paths)))

    np.testing.assert_allclose(volume.affine, geometry.affine(), atol=1e-3)
    _assert_maps_like(volume, geometry, pixels)
    assert volume.spacing == pytest.approx((2.5, 0.7, 0.9), abs=1e-4)


def test_slices_written_against_the_normal_come_back_along_it(tmp_path: Path) -> None:
    # A negative spacing stacks slice 0..n-1 along -normal; the volume runs along +normal.
    geometry = SeriesGeometry(slices=6, rows=16, columns=16, slice_spacing=-3.0)
    pixels = _random_pixels(geometry, seed=4)
    paths = write_series(tmp_path, geometry, pixels)

    volume = load_series_volume(paths)

    np.testing.assert_array_equal(volume.array, pixels[::-1].astype(np.float32))
    assert volume.affine[:3, 0] == pytest.approx((0.0, 0.0, 3.0))
    _assert_maps_like(volume, geometry, pixels)
    assert volume.sop_instance_uids == tuple(reversed(_sop_uids(paths)))


def test_non_image_files_in_the_list_are_ignored(
    tmp_path: Path, ct_series: tuple[SeriesGeometry, np.ndarray, list[Path]]
) -> None:
    _, _, paths = ct_series
    volume = load_series_volume([*paths, _write_sr(tmp_path / "sr.dcm")])
    assert volume.shape == (8, 24, 20)


def test_series_volume_validates_itself() -> None:
    with pytest.raises(ValueError, match="3D"):
        SeriesVolume(np.zeros((4, 4)), np.eye(4), "CT", ("1.2",), None)
    with pytest.raises(ValueError, match="4x4"):
        SeriesVolume(np.zeros((2, 4, 4)), np.eye(3), "CT", ("1.2",), None)
    with pytest.raises(ValueError, match="source instances"):
        SeriesVolume(np.zeros((2, 4, 4)), np.eye(4), "CT", ("1", "2", "3"), None)


# --- rejections -----------------------------------------------------------------------------


def _write_sr(path: Path) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = COMPREHENSIVE_SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = COMPREHENSIVE_SR
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "SR"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_no_files_or_no_images(tmp_path: Path) -> None:
    assert _reject([]).reason == VolumeRejection.NO_IMAGES
    exc = _reject([_write_sr(tmp_path / "a.dcm"), _write_sr(tmp_path / "b.dcm")])
    assert exc.reason == "no_images"
    assert "Comprehensive SR" in exc.detail


def test_garbage_file_is_unreadable(
    tmp_path: Path, ct_series: tuple[SeriesGeometry, np.ndarray, list[Path]]
) -> None:
    _, _, paths = ct_series
    paths[3].write_bytes(b"this is not DICOM at all")
    exc = _reject(paths)
    assert exc.reason == "unreadable"
    assert "paths[3]" in exc.detail
    assert isinstance(exc.__cause__, Exception)


@pytest.mark.parametrize(
    "cut", [10, 400, 1000], ids=["pixel-data-short", "pixel-data-half", "pixel-data-gone"]
)
def test_truncated_file_is_unreadable_and_its_name_is_not_echoed(
    ct_series: tuple[SeriesGeometry, np.ndarray, list[Path]], cut: int
) -> None:
    _, _, paths = ct_series
    named = paths[2].with_name("DOE^JOHN_slice.dcm")
    data = paths[2].read_bytes()
    paths[2].unlink()
    named.write_bytes(data[:-cut])
    paths[2] = named
    exc = _reject(paths)
    assert exc.reason == "unreadable"
    assert "paths[2]" in exc.detail


def test_localizer_is_rejected(
    ct_series: tuple[SeriesGeometry, np.ndarray, list[Path]],
) -> None:
    _, _, paths = ct_series
    _edit(paths[0], _set(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    exc = _reject(paths)
    assert exc.reason == "localizer"
    assert "mixes" in exc.detail

    for path in paths:
        _edit(path, _set(ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"]))
    assert _reject(paths).reason == "localizer"


def test_mixed_orientation(ct_series: tuple[SeriesGeometry, np.ndarray, list[Path]]) -> None:
    _, _, paths = ct_series
    _edit(paths[4], _set(ImageOrientationPatient=[1, 0, 0, 0, 0.98, -0.198997]))
    assert _reject(paths).reason == "mixed_orientation"


def test_orientation_noise_within_tolerance_is_accepted(
    ct_series: tuple[SeriesGeometry, np.ndarray, list[Path]],
) -> None:
    geometry, _, paths = ct_series
    _edit(paths[4], _set(ImageOrientationPatient=[1, 0, 0, 0, 1, 0.00001]))
    _edit(paths[5], _set(PixelSpacing=[0.80001, 0.8]))
    volume = load_series_volume(paths)
    np.testing.assert_allclose(volume.affine, geometry.affine(), atol=1e-4)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(_set(Rows=25), id="rows"),
        pytest.param(_set(Columns=19), id="columns"),
        pytest.param(_set(PixelSpacing=[0.8, 0.9]), id="pixel-spacing"),
    ],
)
def test_mixed_dimensions(
    ct_series: tuple[SeriesGeometry, np.ndarray, list[Path]],
    change: Callable[[Dataset], None],
) -> None:
    _, _, paths = ct_series
    _edit(paths[6], change)
    assert _reject(paths).reason == "mixed_dimensions"


def test_single_slice(tmp_path: Path) -> None:
    paths = write_series(tmp_path, SeriesGeometry(slices=1, rows=16, columns=16))
    assert _reject(paths).reason == "single_slice"


def test_missing_slice(ct_series: tuple[SeriesGeometry, np.ndarray, list[Path]]) -> None:
    _, _, paths = ct_series
    del paths[4]
    exc = _reject(paths)
    assert exc.reason == "missing_slices"
    assert "about 1 slice" in exc.detail


def test_uneven_spacing(ct_series: tuple[SeriesGeometry, np.ndarray, list[Path]]) -> None:
    geometry, _, paths = ct_series
    x, y, z = geometry.slice_position(3)
    _edit(paths[3], _set(ImagePositionPatient=[x, y, z + 0.3]))
    assert _reject(paths).reason == "uneven_spacing"


def test_spacing_that_drifts_off_the_grid(tmp_path: Path) -> None:
    # Each step is within 0.5 % of the median, but the middle slice ends up 0.27 mm
    # (0.13 of a slice) away from where a regular grid puts it.
    geometry = SeriesGeometry(slices=61, rows=4, columns=4)
    paths = write_series(tmp_path, geometry)
    z = geometry.origin[2]
    for k, path in enumerate(paths):
        _edit(path, _set(ImagePositionPatient=[-200.0, -200.0, round(z, 4)]))
        z += 2.009 if k < 30 else 1.991
    exc = _reject(paths)
    assert exc.reason == "uneven_spacing"
    assert "off the regular" in exc.detail


def test_small_position_noise_is_accepted(
    ct_series: tuple[SeriesGeometry, np.ndarray, list[Path]],
) -> None:
    geometry, pixels, paths = ct_series
    x, y, z = geometry.slice_position(3)
    _edit(paths[3], _set(ImagePositionPatient=[x, y, z + 0.005]))
    volume = load_series_volume(paths)
    np.testing.assert_array_equal(volume.array, pixels.astype(np.float32))


def test_duplicate_positions(ct_series: tuple[SeriesGeometry, np.ndarray, list[Path]]) -> None:
    geometry, _, paths = ct_series
    _edit(paths[3], _set(ImagePositionPatient=list(geometry.slice_position(2))))
    assert _reject(paths).reason == "duplicate_positions"


def test_synthetic_gantry_tilt(ct_series: tuple[SeriesGeometry, np.ndarray, list[Path]]) -> None:
    geometry, _, paths = ct_series
    shift = math.tan(math.radians(12.0)) * geometry.slice_spacing
    for k, path in enumerate(paths):
        x, y, z = geometry.slice_position(k)
        _edit(path, _set(ImagePositionPatient=[x, y + k * shift, z]))
    exc = _reject(paths)
    assert exc.reason == "gantry_tilt"
    assert "12.0 degrees" in exc.detail


def test_one_slice_off_the_line(ct_series: tuple[SeriesGeometry, np.ndarray, list[Path]]) -> None:
    geometry, _, paths = ct_series
    x, y, z = geometry.slice_position(5)
    _edit(paths[5], _set(ImagePositionPatient=[x + 4.0, y, z]))
    assert _reject(paths).reason == "inconsistent_positions"


def test_mixed_series(ct_series: tuple[SeriesGeometry, np.ndarray, list[Path]]) -> None:
    _, _, paths = ct_series
    _edit(paths[1], _set(SeriesInstanceUID=generate_uid()))
    assert _reject(paths).reason == "mixed_series"


def test_mixed_frame_of_reference(
    ct_series: tuple[SeriesGeometry, np.ndarray, list[Path]],
) -> None:
    _, _, paths = ct_series
    _edit(paths[1], _set(FrameOfReferenceUID=generate_uid()))
    assert _reject(paths).reason == "mixed_series"


def _delete(keyword: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        delattr(ds, keyword)

    return change


def test_missing_geometry(ct_series: tuple[SeriesGeometry, np.ndarray, list[Path]]) -> None:
    _, _, paths = ct_series
    _edit(paths[2], _delete("ImagePositionPatient"))
    exc = _reject(paths)
    assert exc.reason == "missing_geometry"
    assert "ImagePositionPatient" in exc.detail

    for path in paths:
        _edit(path, _delete("FrameOfReferenceUID"))
    assert _reject(paths).reason == "missing_geometry"


def test_colour_images_are_not_volumes(
    ct_series: tuple[SeriesGeometry, np.ndarray, list[Path]],
) -> None:
    _, _, paths = ct_series
    _edit(paths[0], _set(PhotometricInterpretation="PALETTE COLOR"))
    assert _reject(paths).reason == "unsupported_pixels"


def test_identity_never_appears_in_details(tmp_path: Path) -> None:
    identity = SeriesIdentity(patient_name="DOE^JANE", patient_id="DOE-12345")
    geometry = SeriesGeometry(3, 8, 8)
    paths = write_series(tmp_path, geometry, identity=identity)
    _edit(paths[2], _set(ImagePositionPatient=list(geometry.slice_position(1))))
    assert _reject(paths).reason == "duplicate_positions"  # _reject checks the text
    assert _reject(paths[:1]).reason == "single_slice"


# --- multi-frame ------------------------------------------------------------------------------


def _with_plane_geometry(
    source: Path, target: Path, *, step: float = 1.2, positions: list[float] | None = None
) -> Path:
    """A copy of an Enhanced MR file with plane position/orientation functional groups."""
    ds = dcmread(source)
    frames = int(ds.NumberOfFrames)
    measures = Dataset()
    measures.PixelSpacing = [0.9, 0.9]
    measures.SliceThickness = step
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    zs = positions if positions is not None else [step * i for i in range(frames)]
    per_frame = []
    for z in zs:
        position = Dataset()
        position.ImagePositionPatient = [-30.0, -30.0, z]
        item = Dataset()
        item.PlanePositionSequence = DicomSequence([position])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    ds.save_as(target)
    return target


EMRI_FILES = [
    "emri_small.dcm",
    "emri_small_RLE.dcm",
    "emri_small_big_endian.dcm",
    "emri_small_jpeg_2k_lossless.dcm",
    "emri_small_jpeg_ls_lossless.dcm",
]


@_needs(PYDICOM_DATA)
@pytest.mark.parametrize("name", EMRI_FILES)
def test_enhanced_mr_without_plane_geometry_is_rejected(name: str) -> None:
    # These files carry no functional groups at all: their frames cannot be placed.
    exc = _reject([PYDICOM_DATA / name])
    assert exc.reason == "missing_geometry"


@_needs(PYDICOM_DATA)
def test_enhanced_mr_decodes_in_every_transfer_syntax(tmp_path: Path) -> None:
    reference = dcmread(PYDICOM_DATA / "emri_small.dcm").pixel_array.astype(np.float32)
    for name in EMRI_FILES:
        volume = load_series_volume([_with_plane_geometry(PYDICOM_DATA / name, tmp_path / name)])
        assert volume.shape == (10, 64, 64), name
        assert volume.spacing == pytest.approx((1.2, 0.9, 0.9)), name
        assert volume.modality == "MR"
        assert len(volume.sop_instance_uids) == 1
        np.testing.assert_array_equal(volume.array, reference, err_msg=name)
        expected = np.array(
            [[0, 0, 0.9, -30], [0, 0.9, 0, -30], [1.2, 0, 0, 0], [0, 0, 0, 1]], dtype=float
        )
        np.testing.assert_allclose(volume.affine, expected, atol=1e-6)


@_needs(PYDICOM_DATA)
def test_enhanced_mr_frames_in_reverse_order(tmp_path: Path) -> None:
    reference = dcmread(PYDICOM_DATA / "emri_small.dcm").pixel_array.astype(np.float32)
    zs = [1.2 * (9 - i) for i in range(10)]
    path = _with_plane_geometry(PYDICOM_DATA / "emri_small.dcm", tmp_path / "r.dcm", positions=zs)
    volume = load_series_volume([path])
    np.testing.assert_array_equal(volume.array, reference[::-1])
    assert volume.affine[:3, 3] == pytest.approx((-30.0, -30.0, 0.0))


@_needs(PYDICOM_DATA)
def test_enhanced_mr_with_frames_at_one_position(tmp_path: Path) -> None:
    zs = [0.0, 1.2, 2.4, 2.4, 3.6, 4.8, 6.0, 7.2, 8.4, 9.6]
    path = _with_plane_geometry(PYDICOM_DATA / "emri_small.dcm", tmp_path / "d.dcm", positions=zs)
    assert _reject([path]).reason == "duplicate_positions"


def _break_j2k_header(path: Path) -> None:
    """Overwrite the SIZ segment of the (first) JPEG 2000 codestream with zeros."""
    ds = dcmread(path)
    data = bytearray(ds.PixelData)
    start = data.find(b"\xff\x4f\xff\x51")  # SOC then SIZ marker
    assert start >= 0
    data[start + 4 : start + 40] = bytes(36)
    ds.PixelData = bytes(data)
    ds.save_as(path)


@_needs(PYDICOM_DATA)
def test_enhanced_mr_with_a_bad_j2k_stream_is_unreadable(tmp_path: Path) -> None:
    name = "emri_small_jpeg_2k_lossless.dcm"
    path = _with_plane_geometry(PYDICOM_DATA / name, tmp_path / name)
    _break_j2k_header(path)
    exc = _reject([path])
    assert exc.reason == "unreadable"
    assert "pixel data of paths[0]" in exc.detail  # the codestream header is refused


@_needs(PYDICOM_DATA)
def test_enhanced_mr_with_truncated_pixel_data_is_unreadable(tmp_path: Path) -> None:
    path = _with_plane_geometry(PYDICOM_DATA / "emri_small.dcm", tmp_path / "t.dcm")
    path.write_bytes(path.read_bytes()[:-100])
    assert _reject([path]).reason == "unreadable"


@_needs(PYDICOM_DATA)
def test_enhanced_ct_two_frames() -> None:
    volume = load_series_volume([PYDICOM_DATA / "eCT_Supplemental.dcm"])
    assert volume.shape == (2, 512, 512)
    assert volume.spacing == pytest.approx((10.0, 0.388672, 0.388672), abs=1e-5)
    assert volume.modality == "CT"
    assert volume.array.min() == -1024.0  # rescale intercept applied
    # Slice axis along row x column = (-1,0,0) x (0,1,0) = (0,0,-1).
    assert volume.affine[:3, 0] == pytest.approx((0.0, 0.0, -10.0))


@_needs(PYDICOM_DATA)
def test_several_multiframe_instances_or_mixed_with_single_frame(
    ct_series: tuple[SeriesGeometry, np.ndarray, list[Path]],
) -> None:
    enhanced = PYDICOM_DATA / "eCT_Supplemental.dcm"
    assert _reject([enhanced, enhanced]).reason == "mixed_instances"
    _, _, paths = ct_series
    assert _reject([*paths, enhanced]).reason == "mixed_instances"


# --- real data ----------------------------------------------------------------------------------


@_needs(TOTALSEG)
def test_real_abdomen_ct_jpeg2000() -> None:
    paths = sorted(TOTALSEG.iterdir())
    volume = load_series_volume(paths)
    assert volume.shape == (20, 512, 512)
    assert volume.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert volume.array.min() == -1024.0
    # Ascending z: slice 0 is the lowest (most inferior) position.
    assert volume.affine[:3, 3] == pytest.approx((-249.51171875, -437.51171875, -804.5))
    assert volume.affine[:3, 0] == pytest.approx((0.0, 0.0, 2.0))


@_needs(TOTALSEG)
def test_real_ct_with_one_bad_j2k_stream_is_unreadable(tmp_path: Path) -> None:
    paths = []
    for source in sorted(TOTALSEG.iterdir())[:3]:
        target = tmp_path / source.name
        target.write_bytes(source.read_bytes())
        paths.append(target)
    _break_j2k_header(paths[1])
    exc = _reject(paths)
    assert exc.reason == "unreadable"
    assert "paths[1]" in exc.detail
    assert exc.__cause__ is not None


@_needs(DCMQI_3SLICE)
def test_real_three_slice_ct_ignores_the_seg_in_its_folder() -> None:
    paths = sorted(DCMQI_3SLICE.glob("*.dcm"))
    assert any("SEG" in p.name for p in paths)
    volume = load_series_volume(paths)
    assert volume.shape == (3, 512, 512)
    assert volume.spacing == pytest.approx((1.0, 0.810547, 0.810547), abs=1e-5)
    by_name = {p.name: u for p, u in zip(paths, _sop_uids(paths), strict=True)}
    assert volume.sop_instance_uids == (by_name["03.dcm"], by_name["02.dcm"], by_name["01.dcm"])


@_needs(GANTRY_TILT)
def test_real_gantry_tilted_head_ct_is_rejected() -> None:
    paths = sorted(GANTRY_TILT.glob("*.dcm"))
    assert len(paths) == 28
    exc = _reject(paths)
    assert exc.reason == "gantry_tilt"
    assert "18.5 degrees" in exc.detail


@_needs(MR_TRUNCATED)
def test_real_truncated_mr_is_unreadable() -> None:
    exc = _reject([MR_TRUNCATED])
    assert exc.reason == "unreadable"
    assert isinstance(exc.__cause__, ValueError)


# --- the assembly against highdicom's own, bit for bit -------------------------------------------


def _highdicom_reference(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """hd.get_volume_from_series on fresh datasets, flipped to the slice-along-normal order."""
    import highdicom as hd

    volume = hd.get_volume_from_series(
        [dcmread(p) for p in paths],
        dtype=np.float32,
        apply_real_world_transform=False,
        apply_modality_transform=None,
        apply_voi_transform=False,
        apply_presentation_lut=False,
        apply_palette_color_lut=False,
        apply_icc_profile=False,
    ).ensure_handedness(hd.AxisHandedness.LEFT_HANDED, flip_axis=0)
    return np.ascontiguousarray(volume.array), np.asarray(volume.affine) + 0.0


def _assert_same_as_highdicom(volume: SeriesVolume, paths: list[Path]) -> None:
    array, affine = _highdicom_reference(paths)
    assert volume.array.dtype == array.dtype == np.float32
    assert volume.array.shape == array.shape
    assert volume.array.tobytes() == array.tobytes()  # bit for bit, -0.0 included
    np.testing.assert_array_equal(volume.affine, affine)


@_needs(TOTALSEG)
def test_real_jpeg2000_ct_is_bit_identical_to_highdicom() -> None:
    paths = sorted(TOTALSEG.iterdir())
    _assert_same_as_highdicom(load_series_volume(paths), paths)


@_needs(DCMQI_3SLICE)
def test_real_three_slice_ct_is_bit_identical_to_highdicom() -> None:
    paths = [p for p in sorted(DCMQI_3SLICE.glob("*.dcm")) if "SEG" not in p.name.upper()]
    paths = [p for p in paths if p.name[:2].isdigit()]
    assert len(paths) == 3
    _assert_same_as_highdicom(load_series_volume(paths), paths)


@pytest.mark.parametrize(
    ("modality", "rescales"),
    [
        pytest.param("CT", [("2.5", "-1024.25")] * 9, id="one-rescale"),
        pytest.param(
            "CT",
            [("1", "-1024"), ("0.5", "0"), ("-1", "0"), ("1", "0"), ("3", "7.125")]
            + [("", "")] * 4,
            id="per-slice-rescales-negative-slope-and-empty-values",
        ),
        pytest.param("MR", [(None, None)] * 9, id="mr-no-rescale"),
    ],
)
def test_rescaled_series_are_bit_identical_to_highdicom(
    tmp_path: Path, modality: str, rescales: list[tuple[str | None, str | None]]
) -> None:
    geometry = SeriesGeometry(slices=9, rows=12, columns=10)
    pixels = _random_pixels(geometry, seed=7)
    if modality == "MR":
        pixels = np.abs(pixels)
    paths = write_series(tmp_path, geometry, pixels, modality=modality, slice_order=range(9)[::-1])
    for path, (slope, intercept) in zip(paths, rescales, strict=True):

        def change(
            ds: Dataset, slope: str | None = slope, intercept: str | None = intercept
        ) -> None:
            for keyword, value in (("RescaleSlope", slope), ("RescaleIntercept", intercept)):
                if value is None:
                    if keyword in ds:
                        del ds[keyword]
                else:
                    setattr(ds, keyword, value)

        _edit(path, change)
    shuffled = [paths[i] for i in (3, 0, 8, 5, 1, 7, 2, 6, 4)]
    _assert_same_as_highdicom(load_series_volume(shuffled), shuffled)


def test_a_modality_lut_series_is_assembled_by_highdicom(tmp_path: Path) -> None:
    geometry = SeriesGeometry(slices=4, rows=8, columns=8)
    stored = np.random.default_rng(9).integers(0, 16, size=(4, 8, 8)).astype(np.int16)
    paths = write_series(tmp_path, geometry, stored)

    def lut(ds: Dataset) -> None:
        item = Dataset()
        item.LUTDescriptor = [16, 0, 16]
        item.ModalityLUTType = "HU"
        item.LUTData = (np.arange(16, dtype=np.uint16) * 10 + 100).tobytes()
        ds.ModalityLUTSequence = DicomSequence([item])
        del ds.RescaleSlope
        del ds.RescaleIntercept
        del ds.RescaleType

    for path in paths:
        _edit(path, lut)
    volume = load_series_volume(paths)
    np.testing.assert_array_equal(volume.array, stored.astype(np.float32) * 10 + 100)
    _assert_same_as_highdicom(volume, paths)


def test_highdicom_iod_lookups_are_memoised_with_the_same_answers() -> None:
    from highdicom import _standard_utils

    from dicom_bridge import highdicom_tables
    from dicom_bridge.sop_classes import CT_IMAGE, ENHANCED_MR, MR_IMAGE

    assert highdicom_tables.installed()
    seg_storage = "1.2.840.10008.5.1.4.1.1.66.4"
    for sop_class in (CT_IMAGE, MR_IMAGE, ENHANCED_MR, seg_storage):
        for attribute, excluded in (
            ("NumberOfFrames", None),
            ("PixelData", ["IconImageSequence"]),
            ("SegmentSequence", None),
        ):
            expected = highdicom_tables._ORIGINAL(attribute, sop_class, excluded)
            assert _standard_utils.is_attribute_in_iod(attribute, sop_class, excluded) is expected
    for sop_class, multiframe in ((ENHANCED_MR, True), (CT_IMAGE, False)):
        ds = Dataset()
        ds.SOPClassUID = sop_class
        assert _standard_utils.is_multiframe_image(ds) is multiframe
    with pytest.raises(KeyError):
        _standard_utils.is_attribute_in_iod("PixelData", "1.2.3.4")


# --- each vectorised geometry check on the real CT ------------------------------------------------


def _real_copy(tmp_path: Path) -> list[Path]:
    paths = []
    for source in sorted(TOTALSEG.iterdir()):
        target = tmp_path / source.name
        target.write_bytes(source.read_bytes())
        paths.append(target)
    return paths


def _position(path: Path) -> list[float]:
    return [float(v) for v in dcmread(path, stop_before_pixels=True).ImagePositionPatient]


@_needs(TOTALSEG)
@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        pytest.param("drop-middle-slice", "missing_slices", id="missing"),
        pytest.param("tilt-one-orientation", "mixed_orientation", id="orientation"),
        pytest.param("other-pixel-spacing", "mixed_dimensions", id="pixel-spacing"),
        pytest.param("repeat-a-position", "duplicate_positions", id="duplicate"),
        pytest.param("nudge-a-position", "uneven_spacing", id="uneven"),
        pytest.param("shift-one-in-plane", "inconsistent_positions", id="off-the-line"),
        pytest.param("shear-all", "gantry_tilt", id="tilt"),
        pytest.param("claim-huge-rows", "too_large", id="too-large"),
    ],
)
def test_real_ct_damaged_is_rejected_for_the_right_reason(
    tmp_path: Path, damage: str, reason: str
) -> None:
    paths = _real_copy(tmp_path)
    by_z = sorted(paths, key=lambda p: _position(p)[2])
    middle = by_z[10]
    x, y, z = _position(middle)
    if damage == "drop-middle-slice":
        paths.remove(middle)
    elif damage == "tilt-one-orientation":
        _edit(middle, _set(ImageOrientationPatient=[1, 0, 0, 0, 0.99, -0.141067]))
    elif damage == "other-pixel-spacing":
        _edit(middle, _set(PixelSpacing=[0.9765625, 0.98]))
    elif damage == "repeat-a-position":
        _edit(middle, _set(ImagePositionPatient=_position(by_z[11])))
    elif damage == "nudge-a-position":
        _edit(middle, _set(ImagePositionPatient=[x, y, z + 0.3]))
    elif damage == "shift-one-in-plane":
        _edit(middle, _set(ImagePositionPatient=[x + 3.0, y, z]))
    elif damage == "shear-all":
        for k, path in enumerate(by_z):
            px, py, pz = _position(path)
            _edit(path, _set(ImagePositionPatient=[px, py + k * 0.7, pz]))
    elif damage == "claim-huge-rows":
        _edit(middle, _set(Rows=60000, Columns=60000))
    exc = _reject(paths)
    assert exc.reason == reason, exc.detail
