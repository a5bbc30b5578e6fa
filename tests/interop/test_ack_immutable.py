"""Acknowledged means immutable, end to end: dcmtk storescu against a real ``appliance
serve``. An identical repeat succeeds and rewrites nothing; the same SOP Instance UID with
other pixels or under another series is refused (0xC003) and shows in ``appliance status
--json``, the first file intact and no orphan left; a truncated private element (declared
length 0xFFFFFFF0) is refused with 0xC000."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_bridge.synthetic import SeriesGeometry, write_series
from tests.dicom_bridge.test_encoding import send_raw, truncated_private_copy
from tests.peers import ApplianceProcess, storescu

pytestmark = pytest.mark.interop


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def spooled(app: ApplianceProcess) -> list[Path]:
    return sorted(p for p in app.root.rglob("*.dcm") if ".tmp" not in p.parts)


def test_repeats_and_truncated_elements_end_to_end(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    app = appliance_factory(quiet=600)  # the series stays RECEIVING: only ingest is tested
    files = write_series(tmp_path / "ct", SeriesGeometry(slices=3, rows=32, columns=32))
    first = storescu(app.port, files)
    assert first.returncode == 0, first.stdout + first.stderr
    (stored,) = [p for p in spooled(app) if p.stem == str(dcmread(files[0]).SOPInstanceUID)]
    stored_sha, stored_mtime = sha(stored), stored.stat().st_mtime_ns
    before = app.status()
    assert before["instances"] == 3 and before["rejections"] == []

    # Same UID, identical bytes: success, nothing rewritten, the series untouched.
    again = storescu(app.port, [files[0]])
    assert again.returncode == 0, again.stdout + again.stderr
    assert "Received Store Response (Success)" in again.stderr + again.stdout
    assert sha(stored) == stored_sha and stored.stat().st_mtime_ns == stored_mtime
    after = app.status()
    assert after["series"] == before["series"] and after["rejections"] == []

    # Same UID, other pixels; then same UID under another series: both refused (0xC003).
    ds = dcmread(files[0])
    ds.PixelData = bytes(len(ds.PixelData))
    ds.save_as(tmp_path / "other-pixels.dcm")
    ds = dcmread(files[0])
    ds.SeriesInstanceUID = generate_uid()
    ds.save_as(tmp_path / "other-series.dcm")
    for name in ("other-pixels.dcm", "other-series.dcm"):
        refused = storescu(app.port, [tmp_path / name], extra=("-d",))
        output = refused.stdout + refused.stderr
        assert "DIMSE Status                  : 0xc003: Error: Cannot understand" in output
    assert sha(stored) == stored_sha and stored.stat().st_mtime_ns == stored_mtime
    assert len(spooled(app)) == 3  # no orphan under another series, nothing staged left
    report = app.status()
    assert report["instances"] == 3 and report["series"] == before["series"]
    conflicts = [r for r in report["rejections"] if r["status"] == "0xC003"]
    assert len(conflicts) == 2
    assert all(r["reason"].startswith("sop_instance_conflict: ") for r in conflicts)
    assert all(r["calling_ae"] == "STORESCU" for r in conflicts)

    # A truncated private element swallowing the pixel data: refused with 0xC000. dcmtk
    # will not read such a file to send it, so its bytes go out through pynetdicom as-is.
    bad = truncated_private_copy(files[1], tmp_path / "truncated.dcm")
    ds = dcmread(files[1])
    assert send_raw(app.port, bad) == 0xC000
    report = app.status()
    (cannot,) = [r for r in report["rejections"] if r["status"] == "0xC000"]
    assert "declares 4294967280 bytes" in cannot["reason"]
    assert str(ds.PatientName) not in cannot["reason"]
    assert report["instances"] == 3 and len(spooled(app)) == 3
