"""A task of several series by role, through real programs: Orthanc pushes a four-sequence
MR study (T1C, T1, T2, FLAIR: one series each, one study, one Frame of Reference) to a
real ``appliance serve`` with the four glioma_brats routing rules; one job on the T1C
series comes back to Orthanc as a SEG with three segments that references all four
series and passes dciodvfy, plus an SR. A second study without FLAIR is reported by
``appliance status`` as not processed: ``missing_roles``, with the detail."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread

from dicom_bridge.phantom_series import write_phantom_series
from dicom_bridge.synthetic import SeriesIdentity
from tests.interop.test_roundtrip_seg import dciodvfy_errors, fetch, wait_for
from tests.peers import ApplianceProcess, orthanc, require_program

pytestmark = pytest.mark.interop

ORTHANC_AET = "TESTPACS"
RULES = "\n".join(
    f'[[routing.rules]]\nname = "brats-{role}"\ntask = "glioma_brats"\nmodality = "MR"\n'
    f'series_description = "^{description}$"\nrole = "{role}"\n'
    for description, role in (("T1C", "t1c"), ("T1", "t1"), ("T2", "t2"), ("FLAIR", "flair"))
)
CONFIG = '[models]\ndevice = "cpu"\n\n[routing]\nstudy_wait_minutes = 0.05\n\n' + RULES


def write_study(root: Path, names: tuple[str, ...], seed: int) -> dict[str, list[Path]]:
    from models.phantoms import BRATS_CHANNELS, MR_BRATS, brats_mr_study

    study = brats_mr_study(MR_BRATS, np.random.default_rng(seed))
    identity = SeriesIdentity(patient_name="PHANTOM^BRATS", body_part="BRAIN")
    out = {}
    for index, name in enumerate(BRATS_CHANNELS):
        if name not in names:
            continue
        out[name] = write_phantom_series(
            root / name,
            study.image[index],
            study.affine_lps,
            modality="MR",
            identity=SeriesIdentity(
                patient_name=identity.patient_name,
                patient_id=identity.patient_id,
                study_uid=identity.study_uid,
                frame_of_reference_uid=identity.frame_of_reference_uid,
                series_number=index + 1,
                body_part="BRAIN",
            ),
            series_description=name,
        )
    return out


def test_four_sequence_study_comes_back_as_one_seg_and_a_missing_flair_is_reported(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    require_program("dciodvfy")
    full = write_study(tmp_path / "full", ("T1C", "T1", "T2", "FLAIR"), seed=3)
    partial = write_study(tmp_path / "partial", ("T1C", "T1", "T2"), seed=4)
    uid = {name: str(dcmread(files[0]).SeriesInstanceUID) for name, files in full.items()}
    partial_t1c = str(dcmread(partial["T1C"][0]).SeriesInstanceUID)
    with orthanc(tmp_path / "orthanc") as pacs:
        app = appliance_factory(
            quiet=1.0,
            allowed_callers=(ORTHANC_AET,),
            destinations=(
                dict(name="pacs", ae_title=ORTHANC_AET, host="127.0.0.1", port=pacs.dicom_port),
            ),
            extra=CONFIG,
        )
        pacs.request(
            "PUT", "/modalities/seg", {"AET": "SEGAPPLIANCE", "Host": "127.0.0.1", "Port": app.port}
        )
        studies = set()
        for files in [*full.values(), *partial.values()]:
            studies |= {pacs.upload(path)["ParentStudy"] for path in files}
        for study_id in sorted(studies):
            answer = pacs.request(
                "POST", "/modalities/seg/store", {"Resources": [study_id], "Synchronous": True}
            )
            assert answer["FailedInstancesCount"] == 0, answer

        def job_done() -> dict[str, Any] | None:
            jobs = [j for j in app.status()["jobs"] if j["series_uid"] == uid["T1C"]]
            if jobs and jobs[0]["state"] == "failed":
                raise AssertionError(f"job failed: {jobs[0]}")
            return jobs[0] if jobs and jobs[0]["state"] == "done" else None

        wait_for(job_done, 180, "the study's job did not finish")
        segs = wait_for(lambda: pacs.find_instances({"Modality": "SEG"}), 60, "no SEG in Orthanc")
        wait_for(lambda: pacs.find_instances({"Modality": "SR"}), 60, "no SR in Orthanc")
        assert len(segs) == 1
        seg_path = fetch(pacs, segs[0], tmp_path / "seg.dcm")

        def missing() -> dict[str, Any] | None:
            series = {s["series_uid"]: s for s in app.status()["series"]}
            found = series.get(partial_t1c)
            return found if found and found["reason"] == "missing_roles" else None

        reported = wait_for(missing, 60, "the study without FLAIR was not reported")
        status = app.status()

    assert reported["state"] == "skipped"
    assert reported["detail"] == "no FLAIR series after 0.05 minutes"
    series = {s["series_uid"]: s for s in status["series"]}
    for name in ("T1", "T2", "FLAIR"):
        assert series[uid[name]]["state"] == "skipped"
        assert series[uid[name]]["reason"] == "study_input"
    assert [j["series_uid"] for j in status["jobs"]] == [uid["T1C"]]  # one job in all
    assert dciodvfy_errors(seg_path) == []
    seg = dcmread(seg_path)
    assert len(seg.SegmentSequence) == 3
    assert {str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence} == set(uid.values())
