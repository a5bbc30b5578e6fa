"""Size limits: declared sizes are refused before they are allocated, at C-STORE (the
listener) and before decoding (the volume loader); normal data is unaffected."""

from __future__ import annotations

import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicom_bridge.encoding import inflated_size
from dicom_bridge.errors import DicomBridgeError, MalformedDatasetError, VolumeError
from dicom_bridge.instance import ReceivedInstance
from dicom_bridge.limits import (
    MIB,
    SizeLimitError,
    SizeLimits,
    check_codestreams,
    check_image_header,
)
from dicom_bridge.listener import Listener, ListenerSettings, Publish, Rejection, StoreStatus
from dicom_bridge.sender import RemoteNode, send_files
from dicom_bridge.spool import Spool
from dicom_bridge.synthetic import SeriesGeometry, write_series
from dicom_bridge.volume import load_series_volume
from tests.bombs import write_deflate_bomb, write_j2k_series
from tests.peers import free_port


def _image(rows: int, columns: int, frames: int | str | None = None) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns = rows, columns
    if frames is not None:  # raw, as received: converted (or not) when read
        value = str(frames).encode()
        ds[0x00280008] = RawDataElement(Tag(0x00280008), "IS", len(value), value, 0, False, True)
    return ds


def test_limits_check_themselves() -> None:
    with pytest.raises(DicomBridgeError, match="max_frame_pixels"):
        SizeLimits(max_frame_pixels=0)
    with pytest.raises(DicomBridgeError, match="max_instance_bytes"):
        SizeLimits(max_instance_bytes=True)


def test_header_sizes_over_the_limits_name_their_key() -> None:
    limits = SizeLimits(max_frame_pixels=512 * 512, max_series_voxels=512 * 512 * 100)
    assert check_image_header(_image(512, 512, 100), limits) is not None
    assert check_image_header(Dataset(), limits) is None  # not an image
    with pytest.raises(SizeLimitError, match=r"20000 x 20000 .*limits.max_frame_pixels"):
        check_image_header(_image(20000, 20000), limits)
    with pytest.raises(SizeLimitError, match=r"101 frames .*limits.max_series_voxels") as info:
        check_image_header(_image(512, 512, 101), limits)
    assert info.value.key == "limits.max_series_voxels"
    with pytest.raises(MalformedDatasetError, match="NumberOfFrames"):
        check_image_header(_image(16, 16, "many"), limits)


def test_inflated_size_counts_without_holding_the_output() -> None:
    data = b"appliance" * 100_000
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    small = deflater.compress(data) + deflater.flush()
    assert inflated_size(small, 10 * MIB) == len(data)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = b"".join(deflater.compress(bytes(MIB)) for _ in range(256)) + deflater.flush()
    tracemalloc.start()
    try:
        counted = inflated_size(bomb, 64 * MIB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 64 * MIB < counted <= 65 * MIB  # stops just past the limit
    assert peak < 4 * MIB
    with pytest.raises(MalformedDatasetError, match="cannot be inflated"):
        inflated_size(b"\xff" * 100, MIB)


def test_a_codestream_declaring_another_size_is_refused_before_decoding(
    tmp_path: Path,
) -> None:
    geometry = SeriesGeometry(slices=8, rows=32, columns=32)
    good = write_j2k_series(tmp_path / "good", geometry)
    assert load_series_volume(good).shape == (8, 32, 32)
    ds = dcmread(good[0])
    assert check_codestreams(ds, ds.file_meta.TransferSyntaxUID, SizeLimits()) == 1

    bomb = write_j2k_series(tmp_path / "bomb", geometry, bomb=(20000, 20000), bomb_slice=5)
    with pytest.raises(VolumeError) as info:
        load_series_volume(bomb)
    assert info.value.reason == "too_large"
    assert "declares 20000 x 20000" in info.value.detail
    assert "limits.max_frame_pixels" in info.value.detail

    # Within the frame limit but not the header's size: unreadable, still not decoded.
    liar = write_j2k_series(tmp_path / "liar", geometry, bomb=(64, 64), bomb_slice=2)
    with pytest.raises(VolumeError) as info:
        load_series_volume(liar)
    assert info.value.reason == "unreadable"
    assert "declares 64 x 64 pixels but Rows x Columns is 32 x 32" in info.value.detail


def test_a_series_over_the_voxel_limit_is_rejected_before_decoding(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "ct", SeriesGeometry(slices=10, rows=32, columns=32))
    assert load_series_volume(paths, SizeLimits(max_series_voxels=10 * 32 * 32)).shape == (
        10,
        32,
        32,
    )
    with pytest.raises(VolumeError) as info:
        load_series_volume(paths, SizeLimits(max_series_voxels=10 * 32 * 32 - 1))
    assert info.value.reason == "too_large"
    assert "10240 voxels" in info.value.detail
    assert "limits.max_series_voxels" in info.value.detail


class _Recorder:
    def __init__(self) -> None:
        self.instances: list[ReceivedInstance] = []
        self.rejections: list[Rejection] = []

    def on_instance(self, inst: ReceivedInstance, publish: Publish) -> None:
        self.instances.append(inst)

    def on_rejection(self, rejection: Rejection) -> None:
        self.rejections.append(rejection)


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[tuple[Listener, _Recorder]]:
    rec = _Recorder()
    limits = SizeLimits(max_instance_bytes=8 * MIB, max_frame_pixels=4096 * 4096)
    settings = ListenerSettings("SEGAPPLIANCE", "127.0.0.1", free_port(), limits=limits)
    lst = Listener(settings, Spool(tmp_path / "spool"), rec.on_instance, rec.on_rejection)
    lst.start()
    yield lst, rec
    lst.stop()


def _node(lst: Listener) -> RemoteNode:
    return RemoteNode("SEGAPPLIANCE", "127.0.0.1", lst.port, calling_ae="SENDER", timeout_s=20)


def test_listener_refuses_a_deflate_bomb_without_inflating_it(
    tmp_path: Path, limited: tuple[Listener, _Recorder]
) -> None:
    lst, rec = limited
    bomb = write_deflate_bomb(tmp_path / "bomb", 64 * MIB)
    assert bomb.stat().st_size < MIB
    (result,) = send_files(_node(lst), [bomb])
    assert result.status == StoreStatus.TOO_LARGE
    (rejection,) = rec.rejections
    assert "inflates to more than 8 MiB" in rejection.reason
    assert "limits.max_instance_mb" in rejection.reason
    assert not rec.instances
    assert not list((tmp_path / "spool").rglob("*.dcm"))
    # A deflated instance within the limit still goes through.
    fine = write_deflate_bomb(tmp_path / "fine", MIB)
    (result,) = send_files(_node(lst), [fine])
    assert result.status == StoreStatus.SUCCESS
    assert len(rec.instances) == 1


def test_listener_refuses_a_header_declaring_a_huge_frame(
    tmp_path: Path, limited: tuple[Listener, _Recorder]
) -> None:
    lst, rec = limited
    (path,) = write_series(tmp_path / "ct", SeriesGeometry(slices=1, rows=16, columns=16))
    ds = dcmread(path)
    ds.Rows = ds.Columns = 20000  # the pixel data stays 16 x 16: nothing else may look
    ds.save_as(path)
    (result,) = send_files(_node(lst), [path])
    assert result.status == StoreStatus.TOO_LARGE
    assert "20000 x 20000" in rec.rejections[0].reason
    assert not rec.instances


def test_an_instance_over_the_encoded_limit_aborts_its_association(
    tmp_path: Path, limited: tuple[Listener, _Recorder]
) -> None:
    lst, rec = limited
    # One 2048 x 3072 slice of 16 bit is 12 MiB: within the frame and voxel limits, over
    # the 8 MiB instance limit; counted while its P-DATA arrives.
    (path,) = write_series(tmp_path / "big", SeriesGeometry(slices=1, rows=2048, columns=3072))
    assert path.stat().st_size > 8 * MIB
    (small,) = write_series(tmp_path / "small", SeriesGeometry(slices=1, rows=16, columns=16))
    results = send_files(_node(lst), [path])
    assert results[0].status is None  # no response: the association was aborted
    (rejection,) = rec.rejections
    assert rejection.reason.startswith("instance_too_large: the dataset is over 8 MiB")
    assert "limits.max_instance_mb" in rejection.reason
    assert rejection.status is None
    assert not rec.instances
    (result,) = send_files(_node(lst), [small])  # the listener carries on
    assert result.status == StoreStatus.SUCCESS
