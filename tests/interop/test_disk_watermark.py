"""The disk watermark with dcmtk storescu: below it, new C-STOREs are refused with
0xA702 and nothing is written; when space returns, ingest resumes by itself; no
acknowledged file is removed or damaged.

The "small file system" is simulated: a free-space probe that reports a fixed capacity
minus the bytes really on disk under the test's folder (the spool and a ballast file
standing in for everything else on the disk)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_bridge.instance import ReceivedInstance
from dicom_bridge.listener import Listener, ListenerSettings, Publish, Rejection, StoreStatus
from dicom_bridge.spool import Spool
from dicom_bridge.synthetic import SeriesGeometry, write_series
from tests.peers import free_port, storescu

pytestmark = pytest.mark.interop

KIB = 1024


def _used(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class SmallDisk:
    """Free space of an imaginary ``capacity``-byte file system holding ``root``."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.root = root
        self.capacity = capacity
        self.calls = 0

    def __call__(self, _path: Path) -> int:
        self.calls += 1
        return self.capacity - _used(self.root)


@pytest.fixture
def disk_listener(
    tmp_path: Path,
) -> Iterator[tuple[Listener, SmallDisk, list[str], list[Rejection]]]:
    root = tmp_path / "disk"
    root.mkdir()
    received: list[str] = []
    rejections: list[Rejection] = []

    def on_instance(inst: ReceivedInstance, publish: Publish) -> None:
        received.append(inst.key.sop_uid)

    disk = SmallDisk(root, capacity=0)
    listener = Listener(
        ListenerSettings("SEGAPPLIANCE", "127.0.0.1", free_port(), min_free_bytes=256 * KIB),
        Spool(root / "spool", fsync=False),
        on_instance,
        rejections.append,
        free_space=disk,
    )
    listener.start()
    yield listener, disk, received, rejections
    listener.stop()


def _successes(result: object) -> int:
    text = getattr(result, "stdout", "") + getattr(result, "stderr", "")
    return text.count("Received Store Response (Success)")


def test_refuses_below_the_watermark_and_resumes_when_space_returns(
    tmp_path: Path,
    disk_listener: tuple[Listener, SmallDisk, list[str], list[Rejection]],
) -> None:
    listener, disk, received, rejections = disk_listener
    files = write_series(tmp_path / "ct", SeriesGeometry(slices=12, rows=128, columns=128))
    size = files[0].stat().st_size  # about 33 KiB each
    ballast = disk.root / "ballast.bin"
    ballast.write_bytes(bytes(8 * size))
    # room for the watermark plus about five instances next to the ballast
    disk.capacity = 256 * KIB + _used(disk.root) + 5 * size + size // 2

    first = storescu(listener.port, files)
    stored = _successes(first)
    assert 4 <= stored <= 6, first.stdout + first.stderr
    assert len(received) == stored
    refused = [r for r in rejections if r.status == StoreStatus.DISK_LOW]
    assert len(refused) == len(files) - stored
    assert all("watermark" in r.reason for r in refused)
    assert listener.disk_low and listener.disk_refusals == len(refused)
    spooled = sorted((disk.root / "spool").rglob("*.dcm"))
    assert len(spooled) == stored  # refused instances left nothing behind
    assert list((disk.root / "spool" / ".tmp").iterdir()) == []

    # space returns (the ballast goes); the PACS retries everything; nothing is lost
    ballast.unlink()
    second = storescu(listener.port, files)
    assert _successes(second) == len(files), second.stdout + second.stderr
    assert not listener.disk_low
    spooled = sorted((disk.root / "spool").rglob("*.dcm"))
    assert len(spooled) == len(files)
    sent = {dcmread(f).SOPInstanceUID: dcmread(f).PixelData for f in files}
    for path in spooled:
        ds = dcmread(path)
        assert ds.PixelData == sent[ds.SOPInstanceUID]
    assert sorted(set(received)) == sorted(sent)


def test_a_probe_failure_refuses_cleanly(
    tmp_path: Path,
    disk_listener: tuple[Listener, SmallDisk, list[str], list[Rejection]],
) -> None:
    listener, disk, received, rejections = disk_listener

    def broken(_path: Path) -> int:
        raise OSError(5, os.strerror(5))

    listener._free_space = broken
    files = write_series(tmp_path / "ct", SeriesGeometry(slices=2, rows=16, columns=16))
    result = storescu(listener.port, files)
    assert _successes(result) == 0
    assert received == [] and len(rejections) == 2
    assert "cannot measure free disk space" in rejections[0].reason
    listener._free_space = disk
    disk.capacity = 10**12
    assert _successes(storescu(listener.port, files)) == 2
