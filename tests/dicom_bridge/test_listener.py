"""The listener in process: every transfer syntax in shared/data arrives intact and decodes;
bad datasets get failure statuses; nothing is acknowledged before it is durable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from dicom_bridge.errors import InvalidUIDError, SendError
from dicom_bridge.instance import ReceivedInstance
from dicom_bridge.listener import (
    AllowedCaller,
    Listener,
    ListenerSettings,
    Publish,
    Rejection,
    StoreStatus,
)
from dicom_bridge.sender import RemoteNode, echo, send_files
from dicom_bridge.sop_classes import ACCEPTED_STORAGE_CLASSES, ACCEPTED_TRANSFER_SYNTAXES
from dicom_bridge.spool import Spool
from dicom_bridge.synthetic import SeriesGeometry, write_series
from dicom_bridge.uids import validate_uid
from tests.peers import SHARED_DATA, free_port, interop_required

TS_DIR = SHARED_DATA / "transfer_syntaxes"
# Files whose compressed stream is itself broken: stored byte for byte, decoded by nobody.
BROKEN_STREAMS = {
    # pydicom's README: "Invalid SOS parameters for sequential JPEG" (WG04 NM1_JPLY);
    # JPGExtended.dcm is the fixed version of it and must decode.
    "JPEG-lossy.dcm",
}


class Recorder:
    def __init__(self) -> None:
        self.instances: list[ReceivedInstance] = []
        self.rejections: list[Rejection] = []
        self.fail_next = False

    def on_instance(self, inst: ReceivedInstance, publish: Publish) -> None:
        if self.fail_next:
            self.fail_next = False
            raise OSError("database is locked")
        self.instances.append(inst)

    def on_rejection(self, rejection: Rejection) -> None:
        self.rejections.append(rejection)


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[Listener, Recorder]]:
    rec = Recorder()
    settings = ListenerSettings(
        "SEGAPPLIANCE",
        "127.0.0.1",
        free_port(),
        allowed_callers=(AllowedCaller("SENDER"), AllowedCaller("PINNED", "10.0.0.9")),
    )
    lst = Listener(settings, Spool(tmp_path / "spool"), rec.on_instance, rec.on_rejection)
    lst.start()
    yield lst, rec
    lst.stop()


def node(lst: Listener, calling: str = "SENDER") -> RemoteNode:
    return RemoteNode("SEGAPPLIANCE", "127.0.0.1", lst.port, calling_ae=calling, timeout_s=10)


def transfer_syntax_files() -> list[Path]:
    if not TS_DIR.exists():
        if interop_required():
            pytest.fail(f"shared test data {TS_DIR} is missing")
        pytest.skip(f"shared test data {TS_DIR} is missing")
    return sorted(TS_DIR.rglob("*.dcm"))


def test_every_transfer_syntax_arrives_intact_and_decodes(
    tmp_path: Path, listener: tuple[Listener, Recorder]
) -> None:
    lst, rec = listener
    headers = {f: dcmread(f, stop_before_pixels=True) for f in transfer_syntax_files()}
    accepted = [
        f
        for f, ds in headers.items()
        if ds.file_meta.TransferSyntaxUID in ACCEPTED_TRANSFER_SYNTAXES
        and ds.SOPClassUID in ACCEPTED_STORAGE_CLASSES
    ]
    # The list: LE implicit/explicit, deflated, RLE, JPEG baseline/extended/lossless,
    # JPEG-LS, JPEG 2000, HTJ2K. (No JPEG lossless process 14 (.57) file exists in the
    # shared data; its SV1 variant (.70) is there and uses the same decoder.)
    required = {
        "1.2.840.10008.1.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.1.99",
        "1.2.840.10008.1.2.5",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.201",
    }
    assert required <= {str(headers[f].file_meta.TransferSyntaxUID) for f in accepted}

    # Test files without Study/Series UIDs cannot be filed: refused with 0xC001, not stored.
    unfiled = [f for f in accepted if not has_safe_uids(headers[f])]
    for result in send_files(node(lst), unfiled):
        assert result.status == StoreStatus.INVALID_UID, result.path.name
    assert rec.instances == []
    # The same bytes with UIDs added (pixel data untouched) are then accepted.
    repaired = []
    for f in unfiled:
        ds = dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.save_as(tmp_path / f.name)
        repaired.append(tmp_path / f.name)
    sources = [f for f in accepted if f not in unfiled] + repaired

    results = send_files(node(lst), sources)
    by_uid = {inst.key.sop_uid: inst for inst in rec.instances}
    checked: set[str] = set()
    # Some test files share a SOP Instance UID (a fixed copy of a broken file): the later one
    # replaces the earlier (a repeat is idempotent), so compare against the last one sent.
    last_sent = {r.sop_instance_uid: i for i, r in enumerate(results)}
    for index, (source, result) in enumerate(zip(sources, results, strict=True)):
        assert result.ok, (source.name, result.error)
        if last_sent[result.sop_instance_uid] != index:
            continue
        original = dcmread(source)
        stored = by_uid[result.sop_instance_uid]
        copy = dcmread(stored.path)
        syntax = original.file_meta.TransferSyntaxUID
        assert str(copy.file_meta.TransferSyntaxUID) == stored.transfer_syntax_uid
        if syntax.is_compressed:
            assert copy.file_meta.TransferSyntaxUID == syntax
            assert copy.PixelData == original.PixelData
        else:  # the sender may re-encode between uncompressed syntaxes on a shared context
            assert not copy.file_meta.TransferSyntaxUID.is_compressed
        if source.name in BROKEN_STREAMS:
            with pytest.raises(Exception, match="Unable to decode"):
                _ = original.pixel_array
            continue
        # The installed decoders read every accepted syntax, and the pixels are unchanged.
        np.testing.assert_array_equal(copy.pixel_array, original.pixel_array)
        checked.add(str(syntax))
    assert required <= checked


def has_safe_uids(ds: Dataset) -> bool:
    try:
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            validate_uid(ds.get(keyword), what=keyword)
    except InvalidUIDError:
        return False
    return True


def test_unknown_and_host_pinned_callers_are_rejected(
    listener: tuple[Listener, Recorder],
) -> None:
    lst, rec = listener
    for calling in ("STRANGER", "PINNED"):  # PINNED is allowed only from 10.0.0.9
        with pytest.raises(SendError, match="rejected"):
            echo(node(lst, calling))
    assert [r.calling_ae for r in rec.rejections] == ["STRANGER", "PINNED"]
    assert all(r.scope == "association" for r in rec.rejections)
    echo(node(lst))


def _raw_store(lst: Listener, path: Path, *, sop_uid: str | None = None) -> int:
    """C-STORE a file's bytes as they are, optionally claiming another SOP Instance UID."""
    ds = dcmread(path, stop_before_pixels=True, force=True)
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", lst.port, ae_title="SEGAPPLIANCE")
    assert assoc.is_established
    try:
        full = dcmread(path)
        if sop_uid is not None:
            full.SOPInstanceUID = sop_uid
        status = assoc.send_c_store(full)
        return int(status.Status)
    finally:
        assoc.release()


def test_bad_datasets_get_failure_statuses_and_listener_carries_on(
    tmp_path: Path, listener: tuple[Listener, Recorder]
) -> None:
    lst, rec = listener
    good = write_series(tmp_path / "ct", SeriesGeometry(slices=4, rows=16, columns=16))

    # Unsafe UID in the dataset.
    ds = dcmread(good[0])
    ds.SeriesInstanceUID = "1.2.3/../../etc"
    ds.save_as(tmp_path / "bad_uid.dcm")
    assert _raw_store(lst, tmp_path / "bad_uid.dcm") == StoreStatus.INVALID_UID

    # Pixel data shorter than Rows x Columns x 2 bytes.
    ds = dcmread(good[1])
    ds.PixelData = ds.PixelData[:100]
    ds.save_as(tmp_path / "short.dcm")
    assert _raw_store(lst, tmp_path / "short.dcm") == StoreStatus.INVALID_PIXEL_DATA

    # The store callback fails (e.g. database locked): out of resources, file not acked.
    rec.fail_next = True
    assert _raw_store(lst, good[2]) == StoreStatus.OUT_OF_RESOURCES

    reasons = [r.reason for r in rec.rejections]
    assert any("SeriesInstanceUID" in r for r in reasons)
    assert any("truncated" in r for r in reasons)
    assert any("could not store" in r for r in reasons)
    assert all(r.sop_ref and len(r.sop_ref) == 12 for r in rec.rejections)

    # The same listener still stores good data, and a repeat is accepted again.
    results = send_files(node(lst), good)
    assert all(r.ok for r in results)
    assert len({i.key.sop_uid for i in rec.instances}) == 4
    assert not list((lst.spool.root / ".tmp").iterdir())
