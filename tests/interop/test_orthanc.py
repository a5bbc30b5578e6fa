"""A real Orthanc PACS (and dcmtk storescp) on both sides of a real ``appliance serve``.

* Orthanc pushes series to the appliance through its REST API (C-STORE SCU), including a
  real JPEG 2000 CT that must stay JPEG 2000 in the spool.
* The appliance sends through its durable outbox to Orthanc (``appliance echo``,
  ``appliance send``) and the instances arrive with identical pixel data.
* A send to a closed port goes dead after ``outbox.max_attempts``; ``appliance outbox
  retry`` revives it once a receiver listens there.
* Items still pending when the appliance is SIGKILLed are sent after a restart, with no
  admin action.
"""

from __future__ import annotations

import io
import json
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread

from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from tests.peers import (
    SHARED_DATA,
    ApplianceProcess,
    Orthanc,
    Process,
    free_port,
    nodelay_env,
    orthanc,
    require_data,
    require_program,
    wait_port,
)

pytestmark = pytest.mark.interop

J2K_CT = SHARED_DATA / "ct_abdomen_totalseg_j2k" / "dicom_uids_repaired"
HIGHDICOM_SEG = SHARED_DATA / "seg_examples" / "highdicom" / "seg_image_ct_binary.dcm"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
ORTHANC_AET = "TESTPACS"


# --- helpers -------------------------------------------------------------------------------


def series_entry(report: dict[str, Any], series_uid: str) -> dict[str, Any] | None:
    return next((s for s in report["series"] if s["series_uid"] == series_uid), None)


def finished(series_uid: str) -> Callable[[dict[str, Any]], bool]:
    def check(report: dict[str, Any]) -> bool:
        entry = series_entry(report, series_uid)
        return entry is not None and entry["state"] in ("done", "rejected", "failed", "skipped")

    return check


def upload_series(pacs: Orthanc, files: Sequence[Path]) -> str:
    """Upload ``files`` to Orthanc over REST; return Orthanc's id of their (one) series."""
    parents = set()
    for path in files:
        answer = pacs.upload(path)
        assert answer["Status"] in ("Success", "AlreadyStored"), answer
        parents.add(answer["ParentSeries"])
    assert len(parents) == 1, parents
    return parents.pop()


def orthanc_push(pacs: Orthanc, modality: str, series_id: str) -> dict[str, Any]:
    """Orthanc C-STOREs a whole series to ``modality``, synchronously."""
    answer = pacs.request(
        "POST", f"/modalities/{modality}/store", {"Resources": [series_id], "Synchronous": True}
    )
    return dict(answer)


def orthanc_raw(pacs: Orthanc, path: str) -> bytes:
    """GET a non-JSON resource (a DICOM file, a metadata value) from Orthanc."""
    with urllib.request.urlopen(pacs.url + path, timeout=60) as response:
        return bytes(response.read())


def outbox(app: ApplianceProcess) -> list[dict[str, Any]]:
    return list(json.loads(app.cli("outbox", "list", "--json", "--limit", "1000").stdout))


def wait_outbox(
    app: ApplianceProcess,
    predicate: Callable[[list[dict[str, Any]]], bool],
    *,
    timeout: float = 20.0,
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    items: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        items = outbox(app)
        if predicate(items):
            return items
        time.sleep(0.2)
    raise TimeoutError(
        f"outbox condition not reached; last: {json.dumps(items)[:3000]}\n"
        f"appliance log tail:\n{app.log.read_text(errors='replace')[-3000:]}"
    )


def all_in(state: str, count: int) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda items: len(items) == count and all(i["state"] == state for i in items)


@contextmanager
def storescp_on(workdir: Path, port: int, *, ae_title: str = ORTHANC_AET) -> Iterator[Path]:
    """dcmtk storescp on a given port (the shared helper picks its own port)."""
    exe = require_program("storescp")
    out = workdir / "storescp-in"
    out.mkdir(parents=True, exist_ok=True)
    proc = Process(
        [exe, "-aet", ae_title, "+xa", "-pm", "+uf", "-od", str(out), str(port)],
        workdir / "storescp.log",
        env=nodelay_env(),
    )
    try:
        wait_port(port, proc=proc.proc, log=proc.log)
        yield out
    finally:
        proc.stop()


def received_by_uid(folder: Path) -> dict[str, bytes]:
    """SOP Instance UID -> PixelData of every file storescp wrote."""
    found = {}
    for path in folder.iterdir():
        if path.is_file():
            ds = dcmread(path)
            found[str(ds.SOPInstanceUID)] = ds.PixelData
    return found


def pixels_by_uid(files: Sequence[Path]) -> dict[str, bytes]:
    return {str(ds.SOPInstanceUID): ds.PixelData for ds in map(dcmread, files)}


# --- Orthanc -> appliance -------------------------------------------------------------------


def test_orthanc_pushes_synthetic_ct_series_to_appliance(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    app = appliance_factory(quiet=2.0, allowed_callers=(ORTHANC_AET,))
    geometry = SeriesGeometry(slices=10, rows=64, columns=64)
    identity = SeriesIdentity()
    files = write_series(tmp_path / "ct", geometry, identity=identity)

    with orthanc(tmp_path / "orthanc", modalities={"seg": ("SEGAPPLIANCE", app.port)}) as pacs:
        assert pacs.aet == ORTHANC_AET
        pacs.request("POST", "/modalities/seg/echo", {})
        series_id = upload_series(pacs, files)
        answer = orthanc_push(pacs, "seg", series_id)
        assert answer["InstancesCount"] == 10, answer
        assert answer["FailedInstancesCount"] == 0, answer
        assert answer["RemoteAet"] == "SEGAPPLIANCE", answer

        # Every instance is recorded at once; the series waits for the quiet period.
        report = app.status()
        entry = series_entry(report, identity.series_uid)
        assert entry is not None, report
        assert entry["instances"] == 10
        assert entry["state"] in ("receiving", "complete", "processing", "done"), entry

    report = app.wait_series(finished(identity.series_uid), timeout=30)
    entry = series_entry(report, identity.series_uid)
    assert entry is not None
    assert entry["state"] == "done", entry
    assert entry["instances"] == 10
    assert entry["result"]["shape"] == [10, 64, 64]
    np.testing.assert_allclose(
        np.array(entry["result"]["affine_lps"]), geometry.affine(), atol=1e-3
    )
    assert not [r for r in report["rejections"] if r["calling_ae"] == ORTHANC_AET]

    spooled = sorted((app.root / "spool" / identity.study_uid / identity.series_uid).glob("*.dcm"))
    assert len(spooled) == 10
    assert pixels_by_uid(spooled) == pixels_by_uid(files)


def test_orthanc_pushes_real_jpeg2000_ct_to_appliance(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    folder = require_data(J2K_CT)
    files = sorted(p for p in folder.iterdir() if p.is_file())
    assert len(files) == 20
    series_uid = str(dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    app = appliance_factory(quiet=1.0, allowed_callers=(ORTHANC_AET,))

    with orthanc(tmp_path / "orthanc") as pacs:
        # Registered at runtime this time, rather than in Orthanc's configuration.
        pacs.request(
            "PUT", "/modalities/seg", {"AET": "SEGAPPLIANCE", "Host": "127.0.0.1", "Port": app.port}
        )
        series_id = upload_series(pacs, files)
        first = pacs.request("GET", f"/series/{series_id}")["Instances"][0]
        ts = orthanc_raw(pacs, f"/instances/{first}/metadata/TransferSyntax").decode()
        assert ts == J2K_LOSSLESS
        answer = orthanc_push(pacs, "seg", series_id)
        assert answer["InstancesCount"] == 20, answer
        assert answer["FailedInstancesCount"] == 0, answer

    report = app.wait_series(finished(series_uid), timeout=60)
    entry = series_entry(report, series_uid)
    assert entry is not None
    assert entry["state"] == "done", entry
    assert entry["instances"] == 20
    assert entry["result"]["shape"] == [20, 512, 512]
    spooled = sorted((app.root / "spool").rglob("*.dcm"))
    assert len(spooled) == 20
    for path in spooled:  # Orthanc forwarded J2K as J2K and the appliance kept it so
        meta = dcmread(path, stop_before_pixels=True).file_meta
        assert str(meta.TransferSyntaxUID) == J2K_LOSSLESS, path
    assert pixels_by_uid(spooled) == pixels_by_uid(files)


# --- appliance -> Orthanc -------------------------------------------------------------------


def test_appliance_sends_series_and_seg_to_orthanc(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    seg = require_data(HIGHDICOM_SEG)
    files = write_series(tmp_path / "ct", SeriesGeometry(slices=3, rows=32, columns=32))
    to_send = [*files, seg]
    with orthanc(tmp_path / "orthanc") as pacs:
        app = appliance_factory(
            destinations=(
                dict(name="pacs", ae_title=ORTHANC_AET, host="127.0.0.1", port=pacs.dicom_port),
            )
        )
        echo = app.cli("echo", "pacs")
        assert "ok" in echo.stdout, echo.stdout

        queued = app.cli("send", "pacs", *map(str, to_send))
        assert "queued 4 file(s)" in queued.stdout, queued.stdout
        items = wait_outbox(app, all_in("sent", 4))
        assert {i["destination"] for i in items} == {"pacs"}
        assert all(i["last_error"] is None for i in items), items

        originals = pixels_by_uid(to_send)
        assert {i["sop_uid"] for i in items} == set(originals)
        for uid, pixel_data in originals.items():
            found = pacs.find_instances({"SOPInstanceUID": uid})
            assert len(found) == 1, (uid, found)
            back = dcmread(io.BytesIO(orthanc_raw(pacs, f"/instances/{found[0]}/file")))
            assert str(back.SOPInstanceUID) == uid
            assert back.PixelData == pixel_data, uid
        segs = pacs.find_instances({"Modality": "SEG"})
        assert len(segs) == 1
        tags = pacs.request("GET", f"/instances/{segs[0]}/simplified-tags")
        assert tags["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.66.4"


# --- outbox: dead letter, retry, restart ----------------------------------------------------


def test_dead_letter_then_retry_reaches_a_late_receiver(
    tmp_path: Path,
    appliance_factory: Callable[..., ApplianceProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_program("storescp")
    # The factory's config has its own [outbox] table; the environment override sets the
    # attempt budget for the service and the CLI alike.
    monkeypatch.setenv("APPLIANCE__OUTBOX__MAX_ATTEMPTS", "3")
    port = free_port()  # nothing listens here yet
    app = appliance_factory(
        destinations=(
            dict(
                name="late", ae_title=ORTHANC_AET, host="127.0.0.1", port=port, timeout_seconds=5.0
            ),
        )
    )
    files = write_series(tmp_path / "ct", SeriesGeometry(slices=1, rows=16, columns=16))
    app.cli("send", "late", str(files[0]))

    (item,) = wait_outbox(app, all_in("dead", 1))
    assert item["attempts"] == 3, item
    assert "connection refused" in item["last_error"].lower(), item
    assert app.status()["queues"]["outbox_dead"] == 1
    time.sleep(1.0)  # dead means dead: no further attempts
    (still,) = outbox(app)
    assert still["state"] == "dead" and still["attempts"] == 3, still

    with storescp_on(tmp_path, port) as received:
        retried = app.cli("outbox", "retry", str(item["id"]))
        assert "pending" in retried.stdout, retried.stdout
        (sent,) = wait_outbox(app, all_in("sent", 1))
        assert sent["last_error"] is None
        assert sent["last_status"] == 0
        got = received_by_uid(received)
        assert got == pixels_by_uid(files)
    assert app.status()["queues"]["outbox_dead"] == 0


@pytest.mark.alone  # the restart sends within 10 s, timed
def test_restart_after_sigkill_resumes_pending_sends(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    require_program("storescp")
    port = free_port()  # nothing listens here until the appliance has been killed
    app = appliance_factory(
        destinations=(
            dict(
                name="later", ae_title=ORTHANC_AET, host="127.0.0.1", port=port, timeout_seconds=5.0
            ),
        )
    )
    files = write_series(tmp_path / "ct", SeriesGeometry(slices=3, rows=16, columns=16))
    app.cli("send", "later", *map(str, files))
    # Every item has failed at least once and waits for its next try.
    wait_outbox(
        app,
        lambda items: (
            len(items) == 3
            and all(i["attempts"] >= 1 and i["state"] in ("pending", "sending") for i in items)
        ),
    )
    app.kill()
    before = outbox(app)
    assert all(i["state"] in ("pending", "sending") for i in before), before
    assert all(i["attempts"] < 8 for i in before), before

    with storescp_on(tmp_path, port) as received:
        started = time.monotonic()
        app.start()  # same config, storage and port; no `outbox retry`
        items = wait_outbox(app, all_in("sent", 3), timeout=10)
        assert time.monotonic() - started < 10
        assert all(i["last_error"] is None for i in items), items
        assert received_by_uid(received) == pixels_by_uid(files)
