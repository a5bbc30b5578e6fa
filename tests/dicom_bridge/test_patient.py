"""Invalid patient/study values in a source never withhold the SEG or the SR."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicom_bridge.patient import patient_fixes, sanitized_sources
from dicom_bridge.seg import write_seg
from dicom_bridge.sr import write_sr
from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from dicom_bridge.volume import load_series_volume
from tests.dicom_bridge.test_sr import ALGORITHM, SEGMENTS


def _corrupt(paths: list[Path], **values: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on the invalid values we write
        for path in paths:
            ds = dcmread(path)
            for keyword, value in values.items():
                setattr(ds, keyword, value)
            ds.save_as(path)


def _digest(paths: list[Path]) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_a_bad_birth_date_and_sex_still_give_a_seg_and_an_sr(tmp_path: Path) -> None:
    identity = SeriesIdentity(patient_name="DOE^JANE", patient_id="PID-77")
    paths = write_series(
        tmp_path / "src", SeriesGeometry(slices=6, rows=24, columns=20), identity=identity
    )
    _corrupt(paths, PatientBirthDate="19x0-13-45", PatientSex="Q", PatientAge="041Y")
    before = _digest(paths)
    volume = load_series_volume(paths)
    mask = np.zeros(volume.shape, dtype=np.uint8)
    mask[1:5, 3:20, 2:15] = 1
    mask[2:4, 5:9, 4:8] = 2

    seg = write_seg(paths, mask, SEGMENTS, ALGORITHM)
    sr = write_sr(seg, mask, volume.affine, SEGMENTS, ALGORITHM)

    assert _digest(paths) == before  # the spooled files are never modified
    for out in (seg, sr):
        assert out.PatientBirthDate == "" and out.PatientSex == ""
        assert str(out.PatientName) == "DOE^JANE" and out.PatientID == "PID-77"
        assert out.PatientAge == "041Y"
        assert out.StudyInstanceUID == identity.study_uid
    for name, out in (("seg.dcm", seg), ("sr.dcm", sr)):
        out.save_as(tmp_path / name)
        back = dcmread(tmp_path / name)
        assert back.PatientBirthDate == "" and back.PatientSex == ""
        assert back.PatientID == "PID-77"
        if shutil.which("dciodvfy"):
            run = subprocess.run(
                ["dciodvfy", str(tmp_path / name)], capture_output=True, text=True, timeout=60
            )
            report = run.stdout + run.stderr
            assert "PatientBirthDate" not in report and "PatientSex" not in report, report


def _ds(**values: object) -> Dataset:
    """A dataset holding ``values`` as raw, as read from a file (nothing converted)."""
    ds = Dataset()
    for keyword, value in values.items():
        number = tag_for_keyword(keyword)
        assert number is not None
        tag = Tag(number)
        vr = dictionary_VR(tag)
        raw = str(value).encode("latin-1")
        ds[tag] = RawDataElement(tag, vr, len(raw), raw, 0, True, True)
    return ds


@pytest.mark.parametrize(
    ("values", "fixes"),
    [
        ({"PatientBirthDate": "19800102", "PatientSex": "F", "PatientName": "A^B"}, {}),
        ({"PatientBirthDate": "1980-01-02"}, {"PatientBirthDate": "19800102"}),
        ({"PatientBirthDate": "19801345"}, {"PatientBirthDate": ""}),
        ({"PatientSex": "m"}, {"PatientSex": "M"}),
        ({"PatientSex": "Q"}, {"PatientSex": ""}),
        ({"PatientID": "P1\nforged"}, {"PatientID": ""}),
        ({"PatientID": "x" * 65}, {"PatientID": ""}),
        ({"PatientName": "a^b^c^d^e^f"}, {"PatientName": ""}),
        ({"PatientAge": "41 years"}, {"PatientAge": None}),
        ({"PatientWeight": "heavy"}, {"PatientWeight": None}),
        ({"StudyDate": "2024-02-30", "StudyTime": "251000"}, {"StudyDate": "", "StudyTime": ""}),
        ({"PatientComments": "line one\r\nline two"}, {}),
    ],
)
def test_patient_fixes(values: dict[str, str], fixes: dict[str, object]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _ds(**values)
    assert patient_fixes(ds) == fixes


def test_sanitized_sources_copy_only_what_they_change() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        good = _ds(PatientID="P1", PatientSex="F")
        bad = _ds(PatientID="P1", PatientSex="Q", PatientWeight="heavy")
    out = sanitized_sources([good, bad])
    assert out[0] is good and out[1] is not bad
    assert out[1].PatientSex == "" and "PatientWeight" not in out[1] and out[1].PatientID == "P1"
    assert bad.PatientSex == "Q" and bad.PatientWeight == "heavy"
