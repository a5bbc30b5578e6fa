"""dcmtk storescu pushes into a real ``appliance serve`` process."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread

from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from tests.peers import SHARED_DATA, ApplianceProcess, require_data, storescu

pytestmark = pytest.mark.interop

J2K_CT = SHARED_DATA / "ct_abdomen_totalseg_j2k" / "dicom_uids_repaired"


def series_entry(report: dict[str, Any], series_uid: str) -> dict[str, Any] | None:
    return next((s for s in report["series"] if s["series_uid"] == series_uid), None)


def finished(series_uid: str, generation: int = 1) -> Callable[[dict[str, Any]], bool]:
    def check(report: dict[str, Any]) -> bool:
        entry = series_entry(report, series_uid)
        return (
            entry is not None
            and entry["generation"] == generation
            and entry["state"] in ("done", "rejected", "failed", "skipped")
        )

    return check


def test_synthetic_ct_becomes_volume_with_known_geometry(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    app = appliance_factory(quiet=1.0, allowed_callers=("STORESCU",))
    # Oblique orientation and shuffled file order: the geometry must still come out exact.
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    geometry = SeriesGeometry(
        slices=24,
        rows=96,
        columns=80,
        pixel_spacing=(0.7, 0.9),
        slice_spacing=2.5,
        origin=(-40.0, -60.0, 100.0),
        row_direction=(c, s, 0.0),
        column_direction=(0.0, 0.0, -1.0),
    )
    identity = SeriesIdentity(patient_name="DOE^JANE^Q", patient_id="MRN-44718")
    order = list(np.random.default_rng(1).permutation(geometry.slices))
    files = write_series(tmp_path / "ct", geometry, identity=identity, slice_order=order)

    result = storescu(app.port, files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        result.stdout.count("Received Store Response (Success)")
        + result.stderr.count("Received Store Response (Success)")
        == geometry.slices
    )

    report = app.wait_series(finished(identity.series_uid))
    entry = series_entry(report, identity.series_uid)
    assert entry is not None
    assert entry["state"] == "done", entry
    assert entry["instances"] == geometry.slices
    assert report["instances"] == geometry.slices
    volume = entry["result"]
    assert volume["task"] == "liver_ct" and volume["routing_rule"] == "liver-ct"
    assert volume["shape"] == [24, 96, 80]
    np.testing.assert_allclose(np.array(volume["affine_lps"]), geometry.affine(), atol=1e-3)
    np.testing.assert_allclose(volume["spacing_mm"], [2.5, 0.7, 0.9], atol=1e-4)

    # Every spooled file is byte-identical in content to what was sent.
    spooled = sorted((app.root / "spool" / identity.study_uid / identity.series_uid).glob("*.dcm"))
    assert len(spooled) == geometry.slices
    sent = {dcmread(f).SOPInstanceUID: dcmread(f).PixelData for f in files}
    for path in spooled:
        ds = dcmread(path)
        assert ds.PixelData == sent[ds.SOPInstanceUID]
    assert_no_patient_data(app, "DOE", "JANE", "MRN-44718")


def assert_no_patient_data(app: ApplianceProcess, *values: str) -> None:
    """Neither the service log nor the status output names the patient."""
    texts = [
        app.log.read_text(errors="replace"),
        app.cli("status").stdout,
        app.cli("status", "--json").stdout,
    ]
    for value in values:
        for text in texts:
            assert value not in text


def test_real_jpeg2000_ct_is_received_and_decoded(
    appliance_factory: Callable[..., ApplianceProcess],
) -> None:
    folder = require_data(J2K_CT)
    files = sorted(folder.glob("*"))
    app = appliance_factory(quiet=1.0)
    result = storescu(app.port, files)
    assert result.returncode == 0, result.stdout + result.stderr
    series_uid = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    report = app.wait_series(finished(series_uid))
    entry = series_entry(report, series_uid)
    assert entry is not None and entry["state"] == "done", entry
    assert entry["instances"] == 20
    assert entry["result"]["shape"] == [20, 512, 512]
    # Kept in its own transfer syntax (JPEG 2000 lossless), not transcoded.
    assert_no_patient_data(app, "TOTALSEG", "TSEX001")
    spooled = next((app.root / "spool").rglob("*.dcm"))
    assert (
        str(dcmread(spooled, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        == "1.2.840.10008.1.2.4.90"
    )


def test_unknown_calling_ae_is_refused(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    app = appliance_factory(
        allowed_callers=("STORESCU", {"ae_title": "PINNED", "host": "10.9.9.9"})
    )
    files = write_series(tmp_path / "ct", SeriesGeometry(slices=2, rows=16, columns=16))
    for caller in ("INTRUDER", "PINNED"):  # unknown title; known title from the wrong host
        result = storescu(app.port, files, calling=caller)
        assert result.returncode != 0
        assert "Calling AE Title Not Recognized" in result.stdout + result.stderr
    report = app.status()
    assert report["instances"] == 0
    reasons = [r for r in report["rejections"] if r["scope"] == "association"]
    assert {r["calling_ae"] for r in reasons} == {"INTRUDER", "PINNED"}
    ok = storescu(app.port, files, calling="STORESCU")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # SIGTERM is a graceful stop: exit code 0, logged.
    assert app.process is not None and app.process.stop() == 0
    assert "received SIGTERM" in app.log.read_text() and "stopped" in app.log.read_text()


def test_late_instance_reopens_series_and_result_supersedes(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    app = appliance_factory(quiet=0.8)
    geometry = SeriesGeometry(slices=12, rows=32, columns=32)
    identity = SeriesIdentity()
    files = write_series(tmp_path / "ct", geometry, identity=identity)
    # First push misses slice 6: a gap, so the series is rejected with its reason.
    first = storescu(app.port, files[:6] + files[7:])
    assert first.returncode == 0
    report = app.wait_series(finished(identity.series_uid, 1))
    entry = series_entry(report, identity.series_uid)
    assert entry is not None and entry["state"] == "rejected"
    assert entry["reason"] == "missing_slices"
    # The missing slice arrives late: the series re-opens as generation 2 and is whole.
    late = storescu(app.port, [files[6]])
    assert late.returncode == 0
    report = app.wait_series(finished(identity.series_uid, 2))
    entry = series_entry(report, identity.series_uid)
    assert entry is not None
    assert entry["state"] == "done" and entry["reason"] is None
    assert entry["instances"] == 12 and entry["result"]["shape"] == [12, 32, 32]
    # A repeat of an instance is idempotent: no new instance, no re-open.
    again = storescu(app.port, [files[0]])
    assert again.returncode == 0
    report = app.status()
    entry = series_entry(report, identity.series_uid)
    assert entry is not None and entry["generation"] == 2 and entry["instances"] == 12
    assert report["instances"] == 12


def test_series_no_rule_matches_is_recorded_as_not_processed(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    app = appliance_factory(quiet=0.5)
    t2 = SeriesIdentity(series_description="AX T2 TSE", body_part="BRAIN")
    flair = SeriesIdentity(series_description="AX FLAIR", body_part="BRAIN")
    geometry = SeriesGeometry(slices=10, rows=32, columns=32)
    for identity in (t2, flair):
        files = write_series(
            tmp_path / identity.series_uid, geometry, modality="MR", identity=identity
        )
        assert storescu(app.port, files).returncode == 0
    report = app.wait_series(lambda r: all(finished(i.series_uid)(r) for i in (t2, flair)))
    skipped = series_entry(report, t2.series_uid)
    assert skipped is not None and skipped["state"] == "skipped"
    assert skipped["reason"] == "no_matching_rule"
    assert "series description does not match" in skipped["detail"]
    routed = series_entry(report, flair.series_uid)
    assert routed is not None and routed["state"] == "done"
    assert routed["result"]["task"] == "glioma_mr"
