"""Every file in shared/data/malformed is pushed; each is refused or stored-and-rejected with
a reason, and the service keeps accepting good series."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_preamble
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

from dicom_bridge.sop_classes import ACCEPTED_STORAGE_CLASSES, CT_IMAGE
from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from tests.peers import SHARED_DATA, ApplianceProcess, require_data, storescu

pytestmark = pytest.mark.interop

MALFORMED = SHARED_DATA / "malformed"
FAILURE = "failure-status"
REFUSED_CONTEXT = "sop-class-refused"


def with_usable_meta(source: Path, out_dir: Path) -> tuple[Path, str]:
    """The file's own dataset bytes, untouched, behind a file meta good enough to send them.

    Files whose meta is missing or broken get one made from what can be read of the dataset
    (or CT Image Storage and a fresh UID when nothing can): the malformed dataset itself is
    what goes over the wire.
    """
    raw = source.read_bytes()
    fp = BytesIO(raw)
    try:
        read_preamble(fp, force=True)
        meta_ds = dcmread(BytesIO(raw), force=True, stop_before_pixels=True)
        meta = meta_ds.file_meta if hasattr(meta_ds, "file_meta") else FileMetaDataset()
    except Exception:
        meta = FileMetaDataset()
    body_start = _dataset_offset(raw)
    body = raw[body_start:]
    try:
        ds = dcmread(BytesIO(raw), force=True, stop_before_pixels=True)
        sop_class = str(ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID") or CT_IMAGE)
        sop_uid = str(
            ds.get("SOPInstanceUID") or meta.get("MediaStorageSOPInstanceUID") or generate_uid()
        )
    except Exception:
        sop_class, sop_uid = str(CT_IMAGE), str(generate_uid())
    ts = str(meta.get("TransferSyntaxUID") or ImplicitVRLittleEndian)
    new_meta = FileMetaDataset()
    new_meta.MediaStorageSOPClassUID = sop_class
    new_meta.MediaStorageSOPInstanceUID = sop_uid
    new_meta.TransferSyntaxUID = ts
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, new_meta, enforce_standard=True)
    target = out_dir / source.name
    target.write_bytes(out.getvalue() + body)
    return target, sop_class


def _dataset_offset(raw: bytes) -> int:
    """Where the dataset starts: after preamble + group 0002, or 0 when there is no meta."""
    pos = 132 if raw[128:132] == b"DICM" else 0
    while len(raw) >= pos + 8 and raw[pos : pos + 2] == b"\x02\x00":
        vr = raw[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = int.from_bytes(raw[pos + 8 : pos + 12], "little")
            pos += 12 + length
        elif vr.isalpha() and vr.isupper():
            length = int.from_bytes(raw[pos + 6 : pos + 8], "little")
            pos += 8 + length
        else:  # implicit VR meta (non-conformant but seen)
            length = int.from_bytes(raw[pos + 4 : pos + 8], "little")
            pos += 8 + length
    return pos


def push_raw(port: int, path: Path, sop_class: str) -> tuple[str, int | None]:
    """C-STORE the file's encoded dataset as-is. Returns (outcome, status)."""
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the bytes from the file, never re-encode
    ae = AE(ae_title="RAWPUSH")
    ts = str(dcmread(path, stop_before_pixels=True, force=True).file_meta.TransferSyntaxUID)
    ae.add_requested_context(sop_class, [ts])
    ae.add_requested_context("1.2.840.10008.1.1")  # Verification: the association itself stands
    assoc = ae.associate("127.0.0.1", port, ae_title="SEGAPPLIANCE")
    assert assoc.is_established, "the appliance must accept the association"
    try:
        if not any(cx.abstract_syntax == sop_class for cx in assoc.accepted_contexts):
            return REFUSED_CONTEXT, None
        status = assoc.send_c_store(path)
        code = int(status.Status) if "Status" in status else None
        return ("success" if code == 0 else FAILURE), code
    finally:
        assoc.release()


def test_every_malformed_file_is_refused_or_rejected_and_service_carries_on(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    folder = require_data(MALFORMED)
    app = appliance_factory(quiet=0.5)
    outcomes: dict[str, tuple[str, int | None, str]] = {}
    for source in sorted(folder.glob("*.dcm")):
        sendable, sop_class = with_usable_meta(source, tmp_path)
        outcome, status = push_raw(app.port, sendable, sop_class)
        outcomes[source.name] = (outcome, status, sop_class)
        if outcome == REFUSED_CONTEXT:
            assert sop_class not in ACCEPTED_STORAGE_CLASSES, source.name

    # Stored ones are processed and rejected (or skipped) with a reason.
    def settled(report: dict[str, Any]) -> bool:
        return all(
            s["state"] not in ("receiving", "complete", "processing") for s in report["series"]
        )

    report = app.wait_series(settled)
    refused = {name for name, (o, _, _) in outcomes.items() if o != "success"}
    stored = {name for name, (o, _, _) in outcomes.items() if o == "success"}
    for name in refused:
        outcome, status, _ = outcomes[name]
        if outcome == FAILURE:
            assert status is not None and (status >= 0xA000), (name, status)
    failures = [r for r in report["rejections"] if r["scope"] == "instance"]
    assert len(failures) == sum(1 for o, _, _ in outcomes.values() if o == FAILURE)
    assert all(r["reason"] for r in failures)
    # Nothing malformed that was stored became a volume: each is rejected/skipped with a reason.
    assert len(report["series"]) >= 1 and stored and refused
    for series in report["series"]:
        assert series["state"] in ("rejected", "skipped"), series
        assert series["reason"] and series["detail"]

    # The service is still up and takes the next good series.
    identity = SeriesIdentity()
    files = write_series(
        tmp_path / "good", SeriesGeometry(slices=10, rows=32, columns=32), identity=identity
    )
    result = storescu(app.port, files)
    assert result.returncode == 0, result.stdout + result.stderr
    report = app.wait_series(
        lambda r: any(
            s["series_uid"] == identity.series_uid and s["state"] == "done" for s in r["series"]
        )
    )
