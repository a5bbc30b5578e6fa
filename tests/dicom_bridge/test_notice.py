"""Not-processed notices (dicom_bridge.notice): a Secondary Capture image in the source's
study, its words drawn and in the header, no patient data in the pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dicom_bridge.notice import NoticeOptions, notice_lines, write_notice
from dicom_bridge.seg import SegmentationWriteError
from tests.dicom_bridge.test_seg import GEOMETRIES, make_series

BODY = ["No AI segmentation was made for this series: slices are missing.", "Model: liver."]


def test_a_notice_is_in_the_study_and_says_why(tmp_path: Path) -> None:
    paths, _ = make_series(tmp_path / "src", *GEOMETRIES["axial"])
    source = dcmread(paths[0], stop_before_pixels=True)
    notice = write_notice(source, "NOT PROCESSED", BODY)
    notice.save_as(tmp_path / "n.dcm", enforce_file_format=True)
    back = dcmread(tmp_path / "n.dcm")
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert back.StudyInstanceUID == source.StudyInstanceUID
    assert back.SeriesInstanceUID != source.SeriesInstanceUID
    assert back.PatientID == source.PatientID
    assert back.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert "slices are missing" in back.ImageComments
    assert back.SeriesDescription == "RESEARCH USE ONLY - NOT FOR DIAGNOSIS NOT PROCESSED"
    assert back.BurnedInAnnotation == "NO"
    pixels = back.pixel_array
    assert pixels.shape == (512, 512, 3)
    assert (pixels > 200).any() and np.median(pixels) < 40  # light text on a dark image
    clinical = write_notice(source, "NOT PROCESSED", BODY, NoticeOptions(research_only=False))
    assert clinical.SeriesDescription == "NOT PROCESSED"


def test_lines_wrap_and_end_with_the_marker() -> None:
    lines = notice_lines("NOT PROCESSED", ["word " * 30], research_only=True)
    assert lines[0] == "NOT PROCESSED" and lines[-1].startswith("RESEARCH USE ONLY")
    assert all(len(line) <= 50 for line in lines)
    assert "RESEARCH" not in " ".join(notice_lines("T", ["x"], research_only=False))


def test_empty_or_overlong_text_is_refused(tmp_path: Path) -> None:
    paths, _ = make_series(tmp_path / "src", *GEOMETRIES["axial"])
    source = dcmread(paths[0], stop_before_pixels=True)
    with pytest.raises(SegmentationWriteError, match="title"):
        write_notice(source, " ", BODY)
    with pytest.raises(SegmentationWriteError, match="600"):
        write_notice(source, "NOT PROCESSED", ["x" * 700])
