"""dcmtk storescu pushes a real CT and a real foreign SEG (dcmqi) into ``appliance serve``:
the SEG becomes a training case; a SEG that does not fit its source is refused, with the
reason visible in ``appliance cases list`` and ``appliance status``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from tests.interop.test_ingest_dcmtk import finished, series_entry
from tests.peers import SHARED_DATA, ApplianceProcess, require_data, storescu
from tests.seg_variants import seg_variant

pytestmark = pytest.mark.interop

DCMQI = SHARED_DATA / "ct_abdomen_dcmqi_3slice"


def _push(app: ApplianceProcess, files: list[Path]) -> None:
    result = storescu(app.port, files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).count("Received Store Response (Success)") == len(files)


def _cases(app: ApplianceProcess) -> dict[str, Any]:
    return dict(json.loads(app.cli("cases", "list", "--json").stdout))


def test_received_seg_becomes_a_case_and_a_mismatched_one_is_refused(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    seg_file = require_data(DCMQI / "liver_SEG_dcmqi.dcm")
    ct_files = [DCMQI / f"0{i}.dcm" for i in (1, 2, 3)]
    app = appliance_factory(
        quiet=1.0,
        extra='[cases]\nannotation_callers = ["STORESCU"]\ntrusted_callers = ["STORESCU"]\n',
    )

    # The source CT first (3 slices: routed nowhere, but stored), then the dcmqi SEG.
    _push(app, ct_files)
    ct_series = str(dcmread(ct_files[0], stop_before_pixels=True).SeriesInstanceUID)
    app.wait_series(finished(ct_series))
    _push(app, [seg_file])
    seg_series = str(dcmread(seg_file, stop_before_pixels=True).SeriesInstanceUID)
    report = app.wait_series(finished(seg_series))
    entry = series_entry(report, seg_series)
    assert entry is not None and entry["state"] == "done", entry
    assert entry["result"]["task"] == "liver_ct"
    assert entry["result"]["labels_present"] == ["Liver"]
    # A SEG is an annotation: no segmentation job was made for it.
    assert all(job["series_uid"] != seg_series for job in report["jobs"])

    listing = _cases(app)
    (case,) = listing["cases"]
    assert case["task"] == "liver_ct" and case["state"] == "active"
    assert case["origin"] == "dicom" and case["source_series_uid"] == ct_series
    assert case["labels_present"] == ["Liver"] and case["labels"]["Liver"] > 1000
    assert case["split"] in ("train", "held_out")
    assert case["segments"][0]["property_type"] == '(T-62000, SRT, "Liver")'
    assert listing["refused"] == []

    # The same SEG with its first frame moved half a slice: it no longer lies on the
    # source grid, and is refused with that reason.
    shifted = seg_variant(seg_file, tmp_path / "shifted.dcm", shift_frame_mm=0.5)
    _push(app, [shifted])
    bad_series = str(dcmread(shifted, stop_before_pixels=True).SeriesInstanceUID)
    report = app.wait_series(finished(bad_series))
    entry = series_entry(report, bad_series)
    assert entry is not None and entry["state"] == "rejected", entry
    assert entry["reason"] == "annotation_refused"
    assert entry["detail"].startswith("geometry_mismatch:")
    assert "between source slices" in entry["detail"]

    listing = _cases(app)
    assert [c["id"] for c in listing["cases"]] == [case["id"]]  # nothing new
    (refusal,) = listing["refused"]
    assert refusal["reason"] == "geometry_mismatch" and refusal["origin"] == "dicom"
    assert refusal["source_series_uid"] == ct_series
    text = app.cli("cases", "list").stdout
    assert "geometry_mismatch" in text and "Liver" in text
    # Neither the log nor the listings name the patient.
    for value in ("JANCT000", "99000"):
        for output in (app.log.read_text(errors="replace"), text, json.dumps(listing)):
            assert value not in output
