"""Secondary Capture overlays (dicom_bridge.overlay): one burned-in image per slice that
carries a segment, outlines where the mask's edge is, a banner, and references."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dicom_bridge.overlay import draw_slice, outline, to_grey, write_sc_overlays
from dicom_bridge.seg import SegmentationWriteError, read_source_grid
from dicom_bridge.volume import load_series_volume
from tests.dicom_bridge.test_seg import ALGORITHM, GEOMETRIES, SEGMENTS, make_series


def test_outline_is_the_edge_of_the_mask() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:8, 3:9] = True
    edge = outline(mask)
    assert edge.sum() == 2 * 6 + 2 * 4  # the ring of a 6 x 6 square
    assert not edge[3:7, 4:8].any() and edge[2, 3] and edge[7, 8]
    assert outline(mask, 3).sum() == 36  # thicker than the square: all of it
    full = np.ones((4, 4), dtype=bool)
    assert outline(full).sum() == 12  # the image border counts as outside


def test_grey_uses_the_window() -> None:
    from pydicom.dataset import Dataset

    source = Dataset()
    plane = np.array([[-1000.0, -160.0, 40.0, 240.0, 3000.0]])
    assert to_grey(plane, "CT", source).tolist() == [[0, 0, 127, 255, 255]]
    source.WindowCenter, source.WindowWidth = 0, 100
    assert to_grey(plane, "CT", source).tolist() == [[0, 0, 229, 255, 255]]
    assert to_grey(np.arange(100.0).reshape(10, 10), "MR", source).max() == 255


def test_draw_slice_colours_the_outline_and_writes_the_banner() -> None:
    grey = np.full((64, 96), 100, dtype=np.uint8)
    liver = np.zeros((64, 96), dtype=bool)
    liver[30:60, 40:90] = True
    none = np.zeros_like(liver)
    rgb = draw_slice(grey, [liver, none], SEGMENTS, ["RESEARCH USE ONLY", "liver 1.2"])
    assert rgb.shape == (64, 96, 3) and rgb.dtype == np.uint8
    colour = np.array(SEGMENTS[0].color_rgb)
    coloured = (rgb == colour).all(axis=2)
    assert np.array_equal(coloured[40:, :], outline(liver)[40:, :])  # below the banner
    assert (rgb[45, 60] == 100).all()  # inside: the image, untouched
    assert (rgb[2:12, 2:40] > 128).any()  # banner text, light on black


def test_one_image_per_slice_with_a_segment(tmp_path: Path) -> None:
    paths, mask = make_series(
        tmp_path / "src", *GEOMETRIES["axial-reversed-files"], shape=(7, 80, 96)
    )
    volume = load_series_volume(paths)
    grid = read_source_grid(paths)
    images = write_sc_overlays(grid, volume.array, "CT", mask, SEGMENTS, ALGORITHM)
    carrying = [k for k in range(mask.shape[0]) if mask[k].any()]
    assert [int(i.InstanceNumber) for i in images] == [k + 1 for k in carrying]
    assert len({i.SeriesInstanceUID for i in images}) == 1
    for image, k in zip(images, carrying, strict=True):
        image.save_as(tmp_path / f"sc{k}.dcm", enforce_file_format=True)
        back = dcmread(tmp_path / f"sc{k}.dcm")
        assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert back.StudyInstanceUID == grid.study_instance_uid
        assert back.PatientID == grid.datasets[0].PatientID
        assert back.SeriesDescription.startswith("RESEARCH USE ONLY")
        assert ALGORITHM.weights_sha256 in back.ImageComments
        assert list(back.ImageType) == ["DERIVED", "SECONDARY"]
        assert back.BurnedInAnnotation == "NO"
        assert back.SourceImageSequence[0].ReferencedSOPInstanceUID == grid.sop_instance_uids[k]
        assert back.pixel_array.shape == (*mask.shape[1:], 3)
        # below the banner (4 lines of 10 pixels at this width), the liver's edge is drawn
        liver_edge = outline(mask[k] == 1)[50:]
        drawn = (back.pixel_array == np.array(SEGMENTS[0].color_rgb)).all(axis=2)[50:]
        assert liver_edge.any() and np.array_equal(drawn, liver_edge)


def test_bad_input_is_refused(tmp_path: Path) -> None:
    paths, mask = make_series(tmp_path / "src", *GEOMETRIES["axial"])
    volume = load_series_volume(paths)
    grid = read_source_grid(paths)
    with pytest.raises(SegmentationWriteError, match="source grid"):
        write_sc_overlays(grid, volume.array, "CT", mask[1:], SEGMENTS, ALGORITHM)
    with pytest.raises(SegmentationWriteError, match="integers"):
        write_sc_overlays(grid, volume.array, "CT", mask.astype(float), SEGMENTS, ALGORITHM)
    with pytest.raises(SegmentationWriteError, match="at least one segment"):
        write_sc_overlays(grid, volume.array, "CT", mask, (), ALGORITHM)
    empty = write_sc_overlays(grid, volume.array, "CT", np.zeros_like(mask), SEGMENTS, ALGORITHM)
    assert empty == []
