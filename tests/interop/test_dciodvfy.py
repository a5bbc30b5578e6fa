"""dciodvfy (dicom3tools) finds no error in our SEG and SR objects.

Pass means: exit status 0 and no line starting with "Error" (dciodvfy writes everything
to stderr; warnings are informational). The dicom3tools build we test against (2022)
does not know the Label Map Segmentation IOD (1.2.840.10008.5.1.4.1.1.66.7), so LABELMAP
output is validated by round trip only (tests/dicom_bridge/test_seg.py); the negative
control below checks that the validator really validates.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dicom_bridge.notice import write_notice
from dicom_bridge.overlay import write_sc_overlays
from dicom_bridge.rtstruct import write_rtstruct
from dicom_bridge.seg import AlgorithmInfo, SegOptions, read_source_grid, write_seg
from dicom_bridge.sr import write_sr
from dicom_bridge.volume import load_series_volume
from tests.dicom_bridge.test_seg import (
    ALGORITHM,
    BRATS_SEGMENTS,
    GEOMETRIES,
    SEGMENTS,
    TOTALSEG,
    brats_masks,
    make_series,
    totalseg_liver_mask,
)
from tests.peers import require_data, require_program

pytestmark = pytest.mark.interop


def dciodvfy(path: Path) -> tuple[str, list[str]]:
    """The IOD dciodvfy recognised, and its Error lines (asserting exit status agrees)."""
    exe = require_program("dciodvfy")
    done = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=120)
    lines = (done.stderr + done.stdout).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert (done.returncode == 0) == (not errors), f"rc {done.returncode} but errors {errors}"
    iod = next((line.strip() for line in lines[:3] if line.strip() and " - " not in line), "")
    return iod, errors


def _assert_valid(path: Path, iod: str) -> None:
    found, errors = dciodvfy(path)
    assert not errors, "\n".join(errors)
    assert found == iod


@pytest.mark.parametrize(
    ("name", "modality"),
    [
        ("axial", "CT"),
        ("axial-against-normal", "CT"),
        ("oblique", "CT"),
        ("axial", "MR"),
        ("coronal", "MR"),
    ],
)
def test_seg_and_sr_on_synthetic_series_are_valid(tmp_path: Path, name: str, modality: str) -> None:
    require_program("dciodvfy")
    paths, mask = make_series(tmp_path / "src", *GEOMETRIES[name], modality=modality)
    volume = load_series_volume(paths)
    seg = write_seg(paths, mask, SEGMENTS, ALGORITHM, slice_uids=volume.sop_instance_uids)
    seg.save_as(tmp_path / "seg.dcm")
    _assert_valid(tmp_path / "seg.dcm", "Segmentation")

    sr = write_sr(seg, mask, volume.affine, SEGMENTS, ALGORITHM)
    sr.save_as(tmp_path / "sr.dcm")
    _assert_valid(tmp_path / "sr.dcm", "Comprehensive3DSR")


def test_seg_variants_are_valid(tmp_path: Path) -> None:
    require_program("dciodvfy")
    paths, mask = make_series(tmp_path / "src", *GEOMETRIES["axial"])
    variants = {
        "all-frames": (mask, SegOptions(omit_empty_frames=False, research_only=False)),
        "empty-mask": (np.zeros_like(mask), SegOptions()),
        "no-round": (mask, SegOptions()),
    }
    for name, (values, options) in variants.items():
        algorithm = ALGORITHM if name != "no-round" else AlgorithmInfo("liver", "1.2", "0" * 64)
        write_seg(paths, values, SEGMENTS, algorithm, options).save_as(tmp_path / f"{name}.dcm")
        _assert_valid(tmp_path / f"{name}.dcm", "Segmentation")


@pytest.mark.parametrize("name", ["axial", "oblique"])
def test_overlapping_segments_seg_and_sr_are_valid(tmp_path: Path, name: str) -> None:
    """Segment masks (whole tumour > core > enhancing): a BINARY SEG whose frames overlap
    is as valid as the label-map SEG of the same series, and so is its SR."""
    require_program("dciodvfy")
    paths, mask = make_series(tmp_path / "src", *GEOMETRIES[name], modality="MR")
    volume = load_series_volume(paths)
    masks = brats_masks(volume.shape)
    write_seg(paths, mask, SEGMENTS, ALGORITHM).save_as(tmp_path / "labelmap.dcm")
    _assert_valid(tmp_path / "labelmap.dcm", "Segmentation")

    seg = write_seg(paths, masks, BRATS_SEGMENTS, ALGORITHM, slice_uids=volume.sop_instance_uids)
    seg.save_as(tmp_path / "overlap.dcm")
    _assert_valid(tmp_path / "overlap.dcm", "Segmentation")
    all_frames = write_seg(
        paths, masks, BRATS_SEGMENTS, ALGORITHM, SegOptions(omit_empty_frames=False)
    )
    all_frames.save_as(tmp_path / "overlap-all-frames.dcm")
    _assert_valid(tmp_path / "overlap-all-frames.dcm", "Segmentation")

    sr = write_sr(seg, masks, volume.affine, BRATS_SEGMENTS, ALGORITHM)
    sr.save_as(tmp_path / "sr.dcm")
    _assert_valid(tmp_path / "sr.dcm", "Comprehensive3DSR")


def test_seg_and_sr_on_the_real_j2k_ct_are_valid(tmp_path: Path) -> None:
    require_program("dciodvfy")
    sources = sorted(require_data(TOTALSEG / "dicom_uids_repaired").iterdir())
    volume = load_series_volume(sources)
    mask = totalseg_liver_mask(volume.shape)
    mask[(mask == 1) & (volume.array > 160)] = 2
    seg = write_seg(sources, mask, SEGMENTS, ALGORITHM, slice_uids=volume.sop_instance_uids)
    seg.save_as(tmp_path / "seg.dcm")
    _assert_valid(tmp_path / "seg.dcm", "Segmentation")
    sr = write_sr(tmp_path / "seg.dcm", mask, volume.affine, SEGMENTS, ALGORITHM)
    sr.save_as(tmp_path / "sr.dcm")
    _assert_valid(tmp_path / "sr.dcm", "Comprehensive3DSR")


def test_the_validator_catches_a_broken_seg(tmp_path: Path) -> None:
    require_program("dciodvfy")
    paths, mask = make_series(tmp_path / "src", *GEOMETRIES["axial"])
    write_seg(paths, mask, SEGMENTS, ALGORITHM).save_as(tmp_path / "seg.dcm")
    broken = dcmread(tmp_path / "seg.dcm")
    del broken.SegmentSequence
    broken.save_as(tmp_path / "broken.dcm")
    _, errors = dciodvfy(tmp_path / "broken.dcm")
    assert any("SegmentSequence" in line for line in errors)


@pytest.mark.parametrize(
    ("name", "modality"), [("axial", "CT"), ("oblique", "CT"), ("coronal", "MR")]
)
def test_rtstruct_on_synthetic_series_is_valid(tmp_path: Path, name: str, modality: str) -> None:
    require_program("dciodvfy")
    paths, mask = make_series(tmp_path / "src", *GEOMETRIES[name], modality=modality)
    rt = write_rtstruct(read_source_grid(paths), mask, SEGMENTS, ALGORITHM)
    rt.save_as(tmp_path / "rt.dcm", enforce_file_format=True)
    _assert_valid(tmp_path / "rt.dcm", "RTStructureSet")


def test_sc_overlays_are_valid(tmp_path: Path) -> None:
    require_program("dciodvfy")
    paths, mask = make_series(tmp_path / "src", *GEOMETRIES["oblique"], shape=(5, 48, 64))
    volume = load_series_volume(paths)
    images = write_sc_overlays(
        read_source_grid(paths), volume.array, "CT", mask, SEGMENTS, ALGORITHM
    )
    assert images
    for number, image in enumerate(images):
        image.save_as(tmp_path / f"sc{number}.dcm", enforce_file_format=True)
        _assert_valid(tmp_path / f"sc{number}.dcm", "SCImage")


def test_a_notice_is_valid(tmp_path: Path) -> None:
    require_program("dciodvfy")
    paths, _ = make_series(tmp_path / "src", *GEOMETRIES["axial"], modality="MR")
    source = dcmread(paths[0], stop_before_pixels=True)
    write_notice(source, "NOT PROCESSED", ["Slices are missing."]).save_as(
        tmp_path / "notice.dcm", enforce_file_format=True
    )
    _assert_valid(tmp_path / "notice.dcm", "SCImage")
