"""Not-processed notices through real programs: Orthanc pushes a gantry-tilted CT series
and a CT series with a missing slice to a real ``appliance serve``; both are routed to
the liver model and rejected, and each comes back to Orthanc as a notice in its study
(found through Orthanc's REST API) that says why, in words, and passes dciodvfy."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from tests.interop.test_roundtrip_seg import dciodvfy_errors, fetch, wait_for
from tests.peers import ApplianceProcess, orthanc, require_program

pytestmark = pytest.mark.interop

ORTHANC_AET = "TESTPACS"
GEOMETRY = SeriesGeometry(slices=12, rows=32, columns=32)


def tilted_series(folder: Path, identity: SeriesIdentity) -> list[Path]:
    """A CT series whose slices shift 0.4 mm in y per slice (gantry tilt)."""
    files = write_series(folder, GEOMETRY, identity=identity)
    for path in files:
        ds = dcmread(path)
        k = int(ds.InstanceNumber) - 1
        x, y, z = GEOMETRY.slice_position(k)
        ds.ImagePositionPatient = [x, y + 0.4 * k, z]
        ds.save_as(path)
    return files


def test_rejected_series_come_back_as_notices_saying_why(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    require_program("dciodvfy")
    tilted = SeriesIdentity(patient_name="TILTMAN^ANNA", patient_id="PID-TILT-7731")
    gapped = SeriesIdentity(patient_name="GAPPER^BEN", patient_id="PID-GAP-9902")
    tilted_files = tilted_series(tmp_path / "tilted", tilted)
    gapped_files = write_series(tmp_path / "gapped", GEOMETRY, identity=gapped)
    gapped_files[5].unlink()  # a slice in the middle never arrives
    del gapped_files[5]
    with orthanc(tmp_path / "orthanc") as pacs:
        app = appliance_factory(
            quiet=1.0,
            allowed_callers=(ORTHANC_AET,),
            destinations=(
                dict(
                    name="pacs",
                    ae_title=ORTHANC_AET,
                    host="127.0.0.1",
                    port=pacs.dicom_port,
                    outputs=["seg", "sr", "notice"],
                ),
            ),
            extra='[models]\nshipped = ""\ndevice = "cpu"\n',
        )
        pacs.request(
            "PUT", "/modalities/seg", {"AET": "SEGAPPLIANCE", "Host": "127.0.0.1", "Port": app.port}
        )
        for files in (tilted_files, gapped_files):
            (series_id,) = {pacs.upload(path)["ParentSeries"] for path in files}
            answer = pacs.request(
                "POST", "/modalities/seg/store", {"Resources": [series_id], "Synchronous": True}
            )
            assert answer["FailedInstancesCount"] == 0, answer

        def notices() -> list[str] | None:
            found = pacs.find_instances({"SeriesDescription": "*NOT PROCESSED*"})
            return found if len(found) == 2 else None

        found = wait_for(notices, 60, "two notices did not reach Orthanc", poll=0.5)
        by_study: dict[str, str] = {}
        for number, instance in enumerate(found):
            path = fetch(pacs, instance, tmp_path / f"notice-{number}.dcm")
            assert dciodvfy_errors(path) == []
            ds = dcmread(path)
            by_study[str(ds.StudyInstanceUID)] = str(ds.ImageComments)
        report = app.status()
    assert set(by_study) == {tilted.study_uid, gapped.study_uid}
    assert "acquired with gantry tilt" in by_study[tilted.study_uid]
    assert "slices are missing from the series" in by_study[gapped.study_uid]
    states = {s["series_uid"]: (s["state"], s["reason"]) for s in report["series"]}
    assert states[tilted.series_uid] == ("rejected", "gantry_tilt")
    assert states[gapped.series_uid] == ("rejected", "missing_slices")
    time.sleep(0.5)
    log = app.log.read_text()
    for identity in (tilted, gapped):
        assert identity.patient_name not in log and identity.patient_id not in log
