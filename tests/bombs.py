"""Memory bombs for the size-limit tests: small files that declare huge sizes.

- :func:`write_deflate_bomb`: a CT slice in Deflated Explicit VR Little Endian whose
  trailing private OB element inflates to ``inflated_bytes`` of zeros (about 1 KiB of
  deflate stream per MiB, streamed: building one never holds the inflated bytes).
- :func:`write_j2k_series`: a CT series in JPEG 2000 Lossless (pydicom's encoder), one
  slice's codestream patched to declare ``bomb`` (rows, columns) while its header keeps
  the real Rows/Columns.
- geometry bombs need no builder: :class:`~dicom_bridge.synthetic.SeriesGeometry` with
  40 mm pixels and slices.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless

from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series

_CHUNK = 1 << 20


def write_deflate_bomb(directory: Path, inflated_bytes: int) -> Path:
    """One CT slice, deflated, with ``inflated_bytes`` of zeros in a private element."""
    source = write_series(directory / "src", SeriesGeometry(slices=1, rows=16, columns=16))[0]
    ds = dcmread(source)
    meta = ds.file_meta
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    # (7FE1,0010) LO private creator, then (7FE1,1010) OB with the zeros: after every
    # standard element, so the tags stay in ascending order.
    creator = b"BOMB"
    head = struct.pack("<HH2sH", 0x7FE1, 0x0010, b"LO", len(creator)) + creator
    head += struct.pack("<HH2sHI", 0x7FE1, 0x1010, b"OB", 0, inflated_bytes)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = [deflater.compress(body.getvalue() + head)]
    zeros = bytes(_CHUNK)
    left = inflated_bytes
    while left > 0:
        stream.append(deflater.compress(zeros[: min(left, _CHUNK)]))
        left -= _CHUNK
    stream.append(deflater.flush())
    header = DicomBytesIO()
    header.is_little_endian, header.is_implicit_VR = True, False
    header.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(header, meta, enforce_standard=True)
    path = directory / "deflate_bomb.dcm"
    path.write_bytes(header.getvalue() + b"".join(stream))
    return path


def write_j2k_series(
    directory: Path,
    geometry: SeriesGeometry,
    *,
    bomb: tuple[int, int] | None = None,
    bomb_slice: int = 0,
    identity: SeriesIdentity | None = None,
) -> list[Path]:
    """A series compressed to JPEG 2000 Lossless; with ``bomb``, slice ``bomb_slice``'s
    codestream declares that (rows, columns) in its SIZ marker."""
    paths = write_series(directory, geometry, identity=identity)
    for index, path in enumerate(paths):
        ds = dcmread(path)
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
        if bomb is not None and index == bomb_slice:
            ds.PixelData = _patch_siz(ds.PixelData, *bomb)
        ds.save_as(path, enforce_file_format=True)
    return paths


def _patch_siz(encapsulated: bytes, rows: int, columns: int) -> bytes:
    """SOC FF4F, SIZ FF51, Lsiz, Rsiz, then Xsiz and Ysiz (big endian, 4 bytes each)."""
    at = encapsulated.index(b"\xff\x4f\xff\x51")
    xsiz = at + 8
    patched = bytearray(encapsulated)
    patched[xsiz : xsiz + 8] = struct.pack(">II", columns, rows)
    # XOsiz/YOsiz are 0 for pydicom's encoder, so the declared size is Xsiz x Ysiz.
    assert patched[xsiz + 8 : xsiz + 16] == bytes(8)
    return bytes(patched)
