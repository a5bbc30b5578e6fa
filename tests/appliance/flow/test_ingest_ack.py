"""Acknowledged means immutable, through the real listener, Ingest and store: an identical
repeat succeeds and rewrites nothing; other bytes or another series under the same SOP
Instance UID are refused (0xC003), leave nothing in the spool and are recorded; two
associations racing with the same UID end with exactly one file and one row."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from appliance.flow.ingest import Ingest
from appliance.store import Store
from dicom_bridge.listener import Listener, ListenerSettings, StoreStatus
from dicom_bridge.sender import RemoteNode, send_files
from dicom_bridge.spool import Spool
from dicom_bridge.synthetic import SeriesGeometry, write_series
from tests.peers import free_port


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[Listener, Store]]:
    store = Store(tmp_path / "db" / "appliance.sqlite3")
    ingest = Ingest(store)
    listener = Listener(
        ListenerSettings("SEGAPPLIANCE", "127.0.0.1", free_port()),
        Spool(tmp_path / "spool"),
        ingest.on_instance,
        ingest.on_rejection,
    )
    listener.start()
    yield listener, store
    listener.stop()
    store.close()


def node(lst: Listener) -> RemoteNode:
    return RemoteNode("SEGAPPLIANCE", "127.0.0.1", lst.port, calling_ae="PACS", timeout_s=10)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def variant(source: Path, target: Path, **changes: object) -> Path:
    ds = dcmread(source)
    if changes.pop("pixels", False):
        ds.PixelData = bytes(len(ds.PixelData))  # other pixels, same size
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(target)
    return target


def test_repeats_never_replace_what_was_acknowledged(
    tmp_path: Path, target: tuple[Listener, Store], caplog: pytest.LogCaptureFixture
) -> None:
    lst, store = target
    (first,) = write_series(tmp_path / "ct", SeriesGeometry(slices=1, rows=16, columns=16))
    sop_uid = str(dcmread(first).SOPInstanceUID)
    (result,) = send_files(node(lst), [first])
    assert result.ok
    (record,) = store.instances_by_sop([sop_uid])
    stored_sha, stored_mtime = sha(record.path), record.path.stat().st_mtime_ns
    series_before = store.get_series(record.series_uid)

    # Identical bytes: success, nothing rewritten, the series untouched.
    caplog.set_level("INFO", logger="appliance.flow.ingest")
    (again,) = send_files(node(lst), [first])
    assert again.ok and again.status == StoreStatus.SUCCESS
    assert "identical bytes, acknowledged, nothing rewritten" in caplog.text
    assert record.path.stat().st_mtime_ns == stored_mtime and sha(record.path) == stored_sha
    assert store.get_series(record.series_uid) == series_before
    assert store.instances_by_sop([sop_uid]) == [record]

    # Other pixels, and the same UID under another series: refused, first copy intact.
    other_pixels = variant(first, tmp_path / "pixels.dcm", pixels=True)
    other_series = variant(first, tmp_path / "moved.dcm", SeriesInstanceUID=generate_uid())
    for conflicting in (other_pixels, other_series):
        (refused,) = send_files(node(lst), [conflicting])
        assert refused.status == StoreStatus.SOP_INSTANCE_CONFLICT, refused
    assert sha(record.path) == stored_sha and record.path.stat().st_mtime_ns == stored_mtime
    assert store.instances_by_sop([sop_uid]) == [record]
    assert store.get_series(record.series_uid) == series_before
    assert [s.series_uid for s in store.list_series()] == [record.series_uid]
    assert list(lst.spool.iter_files()) == [record.path]  # no orphan, nothing staged left
    assert list((lst.spool.root / ".tmp").iterdir()) == []
    rejections = store.recent_rejections()
    assert [r.status for r in rejections] == [StoreStatus.SOP_INSTANCE_CONFLICT] * 2
    assert all(r.reason.startswith("sop_instance_conflict: ") for r in rejections)
    assert "different content" in rejections[1].reason
    assert "series" in rejections[0].reason and sop_uid not in rejections[0].reason
    assert store.rejection_counts()[("instance", StoreStatus.SOP_INSTANCE_CONFLICT)] == 2


def test_two_associations_racing_with_one_uid(
    tmp_path: Path, target: tuple[Listener, Store]
) -> None:
    lst, store = target
    (first,) = write_series(tmp_path / "ct", SeriesGeometry(slices=1, rows=64, columns=64))
    second = variant(first, tmp_path / "second.dcm", pixels=True)
    barrier = threading.Barrier(2)
    statuses: dict[Path, int | None] = {}

    def send(path: Path) -> None:
        barrier.wait()
        (result,) = send_files(node(lst), [path])
        statuses[path] = result.status

    threads = [threading.Thread(target=send, args=(p,)) for p in (first, second)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(statuses.values()) == [StoreStatus.SUCCESS, StoreStatus.SOP_INSTANCE_CONFLICT]
    winner = next(p for p, s in statuses.items() if s == StoreStatus.SUCCESS)
    (record,) = store.instances_by_sop([str(dcmread(first).SOPInstanceUID)])
    assert dcmread(record.path).PixelData == dcmread(winner).PixelData
    assert list(lst.spool.iter_files()) == [record.path]
    assert list((lst.spool.root / ".tmp").iterdir()) == []
