"""Round trip with real programs: Orthanc pushes a CT series to a real ``appliance serve``,
which segments it with a model activated through the CLI and sends a DICOM SEG and a
TID 1500 SR back; both arrive in Orthanc, pass dciodvfy, and the SEG read back equals the
mask the job produced, voxel for voxel.

The model is a tiny untrained UNet built by the test (weights need not be good for the
mechanics), so the test depends neither on shipped weights nor on much CPU time.
"""

from __future__ import annotations

import io
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread

from dicom_bridge.seg_reader import read_seg_labelmap
from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from tests.appliance.tiny_models import make_tiny_bundle
from tests.peers import ApplianceProcess, Orthanc, orthanc, require_program

pytestmark = pytest.mark.interop

ORTHANC_AET = "TESTPACS"
MODELS = '[models]\nshipped = ""\ndevice = "cpu"\n'


def dciodvfy_errors(path: Path) -> list[str]:
    exe = require_program("dciodvfy")
    done = subprocess.run([exe, "-new", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (done.stderr + done.stdout).splitlines() if line.startswith("Error")]


def fetch(pacs: Orthanc, instance_id: str, dest: Path) -> Path:
    with urllib.request.urlopen(f"{pacs.url}/instances/{instance_id}/file", timeout=60) as r:
        dest.write_bytes(r.read())
    return dest


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise TimeoutError(what)


def test_orthanc_ct_comes_back_as_valid_seg_and_sr(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    require_program("dciodvfy")
    identity = SeriesIdentity()
    files = write_series(
        tmp_path / "ct", SeriesGeometry(slices=24, rows=64, columns=64), identity=identity
    )
    with orthanc(tmp_path / "orthanc") as pacs:
        app = appliance_factory(
            quiet=1.0,
            allowed_callers=(ORTHANC_AET,),
            destinations=(
                dict(name="pacs", ae_title=ORTHANC_AET, host="127.0.0.1", port=pacs.dicom_port),
            ),
            extra=MODELS,
            start=False,
        )
        bundle = make_tiny_bundle(tmp_path / "bundles", version="0.3.0")
        imported = app.cli("models", "import", str(bundle.path), "--task", "liver_ct")
        assert "candidate" in imported.stdout
        app.cli("models", "activate", "liver_ct", "0.3.0", "--force")
        app.start()
        pacs.request(
            "PUT", "/modalities/seg", {"AET": "SEGAPPLIANCE", "Host": "127.0.0.1", "Port": app.port}
        )
        parents = {pacs.upload(path)["ParentSeries"] for path in files}
        (series_id,) = parents
        answer = pacs.request(
            "POST", "/modalities/seg/store", {"Resources": [series_id], "Synchronous": True}
        )
        assert answer["FailedInstancesCount"] == 0, answer

        def job_done() -> dict[str, Any] | None:
            jobs = [j for j in app.status()["jobs"] if j["series_uid"] == identity.series_uid]
            if jobs and jobs[0]["state"] == "failed":
                raise AssertionError(f"job failed: {jobs[0]}")
            return jobs[0] if jobs and jobs[0]["state"] == "done" else None

        job = wait_for(job_done, 60, "the job did not finish")
        assert job["model"]["version"] == "0.3.0"
        assert job["model"]["weights_sha256"] == bundle.card.weights_sha256
        assert {"volume_s", "inference_s", "seg_s", "sr_s", "enqueue_s"} <= set(job["timings"])

        segs = wait_for(lambda: pacs.find_instances({"Modality": "SEG"}), 30, "no SEG in Orthanc")
        srs = wait_for(lambda: pacs.find_instances({"Modality": "SR"}), 30, "no SR in Orthanc")
        assert len(segs) == 1 and len(srs) == 1
        seg_path = fetch(pacs, segs[0], tmp_path / "seg.dcm")
        sr_path = fetch(pacs, srs[0], tmp_path / "sr.dcm")

    assert dciodvfy_errors(seg_path) == []
    assert dciodvfy_errors(sr_path) == []
    seg = dcmread(seg_path)
    sr = dcmread(io.BytesIO(sr_path.read_bytes()))
    assert str(seg.SOPInstanceUID) == job["outputs"]["seg_sop_uid"]
    assert str(sr.SOPInstanceUID) == job["outputs"]["sr_sop_uid"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == identity.series_uid
    assert seg.StudyInstanceUID == sr.StudyInstanceUID == identity.study_uid
    assert bundle.card.weights_sha256 in seg.ImageComments

    mask_path = app.root / "results" / identity.series_uid / "gen-1" / "mask.npz"
    produced = np.load(mask_path)["mask"]
    back = read_seg_labelmap(seg_path, files)
    np.testing.assert_array_equal(back.labelmap, produced)
    assert produced.any()
