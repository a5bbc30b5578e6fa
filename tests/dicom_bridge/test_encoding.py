"""The raw-encoding walk: declared lengths must fit; a truncated private element (declared
length 0xFFFFFFF0) is refused by the listener with 0xC000 instead of being acknowledged."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import UID
from pynetdicom import AE, _config

from dicom_bridge.encoding import check_lengths, dataset_offset, dataset_sha256, inflate
from dicom_bridge.errors import MalformedDatasetError
from dicom_bridge.instance import ReceivedInstance
from dicom_bridge.listener import Listener, ListenerSettings, Publish, Rejection, StoreStatus
from dicom_bridge.spool import Spool
from dicom_bridge.synthetic import SeriesGeometry, write_series
from tests.peers import free_port

TRUNCATED_LENGTH = 0xFFFFFFF0


def truncated_private_copy(source: Path, target: Path, *, group: int = 0x0029) -> Path:
    """``source`` with a private block in ``group`` whose data element declares 0xFFFFFFF0
    bytes: it swallows every element behind it (the pixel data, for group 0029)."""
    raw = source.read_bytes()
    start = dataset_offset(raw)
    ts = UID(str(dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID))
    implicit, little = ts.is_implicit_VR, ts.is_little_endian
    endian = "<" if little else ">"
    pos = start
    while pos < len(raw):  # find the first element of a higher group (top level)
        tag_group, _elem = struct.unpack_from(endian + "HH", raw, pos)
        if tag_group > group:
            break
        if implicit:
            (length,) = struct.unpack_from(endian + "I", raw, pos + 4)
            pos += 8 + length
        elif raw[pos + 4 : pos + 6] in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR"):
            (length,) = struct.unpack_from(endian + "I", raw, pos + 8)
            pos += 12 + length
        else:
            (length,) = struct.unpack_from(endian + "H", raw, pos + 6)
            pos += 8 + length
    creator_value = b"ACME"
    if implicit:
        creator = struct.pack(endian + "HHI", group, 0x0010, len(creator_value))
        element = struct.pack(endian + "HHI", group, 0x1010, TRUNCATED_LENGTH)
    else:
        creator = struct.pack(endian + "HH2sH", group, 0x0010, b"LO", len(creator_value))
        element = struct.pack(endian + "HH2s2xI", group, 0x1010, b"OB", TRUNCATED_LENGTH)
    target.write_bytes(raw[:pos] + creator + creator_value + element + b"\x01\x02" + raw[pos:])
    return target


def body(path: Path) -> tuple[memoryview, bool, bool]:
    raw = path.read_bytes()
    ts = UID(str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID))
    return memoryview(raw)[dataset_offset(raw) :], ts.is_implicit_VR, ts.is_little_endian


@pytest.fixture
def ct(tmp_path: Path) -> Path:
    return write_series(tmp_path / "ct", SeriesGeometry(slices=1, rows=16, columns=16))[0]


def test_good_dataset_passes(ct: Path) -> None:
    data, implicit, little = body(ct)
    assert check_lengths(data, implicit_vr=implicit, little_endian=little) > 10


@pytest.mark.parametrize("group", [0x0029, 0x7FE1])
def test_truncated_private_element_is_found(ct: Path, tmp_path: Path, group: int) -> None:
    bad = truncated_private_copy(ct, tmp_path / "bad.dcm", group=group)
    data, implicit, little = body(bad)
    with pytest.raises(MalformedDatasetError, match=rf"\({group:04X},1010\) declares 4294967280"):
        check_lengths(data, implicit_vr=implicit, little_endian=little)


def test_nested_overrun_and_missing_delimiter() -> None:
    # (0008,1140) SQ of defined length 24 holding one item whose element overruns the item.
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 16) + struct.pack("<HH2sH", 8, 0x1150, b"UI", 40)
    item += b"1.2.3.4\x00"
    seq = struct.pack("<HH2s2xI", 8, 0x1140, b"SQ", len(item)) + item
    with pytest.raises(MalformedDatasetError, match=r"\(0008,1150\) declares 40"):
        check_lengths(seq, implicit_vr=False, little_endian=True)
    # An undefined-length sequence without its delimiter.
    open_seq = struct.pack("<HH2s2xI", 8, 0x1140, b"SQ", 0xFFFFFFFF)
    open_seq += struct.pack("<HHI", 0xFFFE, 0xE000, 0)
    with pytest.raises(MalformedDatasetError, match="no sequence delimiter"):
        check_lengths(open_seq, implicit_vr=False, little_endian=True)
    # A tail shorter than an element header is tolerated, as pydicom does.
    assert check_lengths(b"\x08\x00\x16", implicit_vr=True, little_endian=True) == 0


def test_inflate_is_bounded() -> None:
    import zlib

    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    deflated = packer.compress(bytes(4096)) + packer.flush()
    assert inflate(deflated, 8192) == bytes(4096)
    with pytest.raises(MalformedDatasetError, match="inflates beyond"):
        inflate(deflated, 1024)


def test_dataset_sha256_leaves_the_file_meta_out(ct: Path, tmp_path: Path) -> None:
    raw = ct.read_bytes()
    start = dataset_offset(raw)
    assert raw[start : start + 2] == b"\x08\x00"  # the dataset starts at group 0008
    other_meta = tmp_path / "other.dcm"
    other_meta.write_bytes(b"\x01" * 128 + raw[128:])  # another preamble, same dataset
    assert dataset_sha256(other_meta.read_bytes()) == dataset_sha256(raw)


# -- in the listener ------------------------------------------------------------------------


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[Listener, list[ReceivedInstance], list[Rejection]]]:
    received: list[ReceivedInstance] = []
    rejections: list[Rejection] = []

    def on_instance(inst: ReceivedInstance, publish: Publish) -> None:
        received.append(inst)

    lst = Listener(
        ListenerSettings("SEGAPPLIANCE", "127.0.0.1", free_port()),
        Spool(tmp_path / "spool", fsync=False),
        on_instance,
        rejections.append,
    )
    lst.start()
    yield lst, received, rejections
    lst.stop()


def send_raw(port: int, path: Path) -> int:
    """C-STORE the file's encoded dataset byte for byte (never re-encoded)."""
    chunked = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    ds = dcmread(path, stop_before_pixels=True)
    ae = AE(ae_title="SENDER")
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title="SEGAPPLIANCE")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = chunked


def test_listener_refuses_truncated_private_element(
    ct: Path,
    tmp_path: Path,
    listener: tuple[Listener, list[ReceivedInstance], list[Rejection]],
) -> None:
    lst, received, rejections = listener
    bad = truncated_private_copy(ct, tmp_path / "bad.dcm")
    assert send_raw(lst.port, bad) == StoreStatus.CANNOT_UNDERSTAND
    assert received == []
    assert list(lst.spool.iter_files()) == []
    assert list((lst.spool.root / ".tmp").iterdir()) == []
    (rejection,) = rejections
    assert rejection.status == StoreStatus.CANNOT_UNDERSTAND
    assert "(0029,1010) declares 4294967280 bytes" in rejection.reason
    # The intact file goes through, with the sha256 of the dataset it carried.
    assert send_raw(lst.port, ct) == StoreStatus.SUCCESS
    (inst,) = received
    assert inst.sha256 == dataset_sha256(ct.read_bytes())
    assert inst.path.exists() and dataset_sha256(inst.path.read_bytes()) == inst.sha256
