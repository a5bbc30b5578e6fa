"""The image size a compressed frame declares in its own codestream header, read without decoding.

A decoder allocates what the codestream declares, not what the DICOM header says: a frame whose
JPEG SOF or JPEG 2000 SIZ declares 20000x20000 inside a dataset that says 96x96 makes the decoder
allocate gigabytes (a memory bomb). :func:`declared_size` reads only the header bytes (the JPEG /
JPEG-LS marker segments up to the SOF, the JPEG 2000 SOC and SIZ, the JP2 boxes up to ``jp2c``),
so the appliance can compare the declared size with Rows/Columns/Samples per Pixel and refuse a
mismatch before any decoder runs. Every walk advances at least one byte per step and checks each
length against the end of the frame; a broken header raises :class:`MalformedDatasetError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
)

from dicom_bridge.errors import MalformedDatasetError

_JPEG = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1})
_JPEG_LS = frozenset({JPEGLSLossless, JPEGLSNearLossless})
_J2K = frozenset(
    {JPEG2000Lossless, JPEG2000, JPEG2000MCLossless, JPEG2000MC}
    | {HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K}
)

# SOFn of ITU-T T.81 (C4 = DHT, C8 = JPG, CC = DAC are not frame headers); F7 = SOF55 of JPEG-LS.
_SOF_JPEG = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)
_SOF_JPEG_LS = frozenset({0xF7})
_SOF_ANY = _SOF_JPEG | _SOF_JPEG_LS
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length follows
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


@dataclass(frozen=True, slots=True)
class DeclaredSize:
    """Rows, columns and components (samples per pixel) a codestream header declares."""

    rows: int
    columns: int
    components: int

    def __post_init__(self) -> None:
        if self.rows < 1 or self.columns < 1 or self.components < 1:
            raise MalformedDatasetError(
                f"codestream declares {self.rows} rows, {self.columns} columns, "
                f"{self.components} components (each must be at least 1)"
            )


def declared_size(frame: bytes | memoryview, transfer_syntax: str) -> DeclaredSize | None:
    """The size the frame's codestream declares, or None for transfer syntaxes whose frames carry
    no size (RLE Lossless, uncompressed, deflate) and for unknown ones.

    ``frame`` is one frame (all its fragments joined). Raises :class:`MalformedDatasetError` when
    the header is truncated or not a codestream of ``transfer_syntax``'s family.
    """
    ts = transfer_syntax.strip("\0 ")
    if ts not in _JPEG and ts not in _JPEG_LS and ts not in _J2K:
        return None
    data = memoryview(frame)
    if data.ndim != 1 or data.format != "B":
        data = data.cast("B")
    if ts in _J2K:
        return _j2k_size(data)
    if ts in _JPEG_LS:
        return _jpeg_size(data, "JPEG-LS", _SOF_JPEG_LS)
    return _jpeg_size(data, "JPEG", _SOF_JPEG)


def _jpeg_size(data: memoryview, family: str, sof_markers: frozenset[int]) -> DeclaredSize:
    """Walk the marker segments from SOI to the first SOF and read its Y, X and Nf."""
    end = len(data)
    if end < 2 or data[0] != 0xFF or data[1] != 0xD8:
        raise MalformedDatasetError(f"{family} codestream: does not start with SOI (FFD8)")
    pos = 2
    while True:
        if pos >= end:
            raise MalformedDatasetError(f"{family} codestream: ends before a SOF marker")
        if data[pos] != 0xFF:
            raise MalformedDatasetError(
                f"{family} codestream: byte {data[pos]:#04x} at offset {pos} where a marker must be"
            )
        while pos < end and data[pos] == 0xFF:  # the marker's FF and any fill bytes before it
            pos += 1
        if pos >= end:
            raise MalformedDatasetError(f"{family} codestream: ends inside a marker")
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker in (0x00, 0xD8, 0xD9, 0xDA):
            name = {0x00: "stuffed FF00", 0xD8: "second SOI", 0xD9: "EOI", 0xDA: "SOS"}[marker]
            raise MalformedDatasetError(f"{family} codestream: {name} before a SOF marker")
        if pos + 2 > end:
            raise MalformedDatasetError(
                f"{family} codestream: segment length of marker FF{marker:02X} cut off"
            )
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > end:
            raise MalformedDatasetError(
                f"{family} codestream: marker FF{marker:02X} at offset {pos - 2} declares "
                f"{length} bytes, {end - pos} are left"
            )
        if marker in _SOF_ANY:
            if marker not in sof_markers:
                raise MalformedDatasetError(
                    f"{family} codestream: frame header FF{marker:02X} of another JPEG family"
                )
            if length < 8:
                raise MalformedDatasetError(f"{family} codestream: SOF segment of {length} bytes")
            _precision, rows, columns, components = struct.unpack_from(">BHHB", data, pos + 2)
            if length != 8 + 3 * components:
                raise MalformedDatasetError(
                    f"{family} codestream: SOF of {length} bytes for {components} components"
                )
            if rows == 0:
                raise MalformedDatasetError(
                    f"{family} codestream: SOF declares 0 lines (height deferred to DNL)"
                )
            return DeclaredSize(rows=rows, columns=columns, components=components)
        pos += length


def _j2k_size(data: memoryview) -> DeclaredSize:
    """Read SIZ right after SOC, unwrapping a JP2 file to its ``jp2c`` box first."""
    if bytes(data[: len(_JP2_SIGNATURE)]) == _JP2_SIGNATURE:
        data = _jp2_codestream(data)
    if len(data) < 2 or data[0] != 0xFF or data[1] != 0x4F:
        raise MalformedDatasetError("JPEG 2000 codestream: does not start with SOC (FF4F)")
    if len(data) < 4 or data[2] != 0xFF or data[3] != 0x51:
        raise MalformedDatasetError("JPEG 2000 codestream: no SIZ marker after SOC")
    if len(data) < 4 + 38:
        raise MalformedDatasetError("JPEG 2000 codestream: SIZ marker segment cut off")
    length, _rsiz, xsiz, ysiz, xosiz, yosiz = struct.unpack_from(">HHIIII", data, 4)
    (csiz,) = struct.unpack_from(">H", data, 4 + 36)
    if length != 38 + 3 * csiz:
        raise MalformedDatasetError(f"JPEG 2000 codestream: SIZ of {length} bytes for Csiz {csiz}")
    if 4 + length > len(data):
        raise MalformedDatasetError("JPEG 2000 codestream: SIZ marker segment cut off")
    if xsiz <= xosiz or ysiz <= yosiz:
        raise MalformedDatasetError(
            f"JPEG 2000 codestream: SIZ image offset ({xosiz}, {yosiz}) "
            f"not inside its extent ({xsiz}, {ysiz})"
        )
    return DeclaredSize(rows=ysiz - yosiz, columns=xsiz - xosiz, components=csiz)


def _jp2_codestream(data: memoryview) -> memoryview:
    """The contents of the top-level ``jp2c`` box of a JP2 file (a view, not a copy)."""
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            raise MalformedDatasetError(f"JP2 file: box header at offset {pos} cut off")
        length, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if length == 1:
            if pos + 16 > end:
                raise MalformedDatasetError(f"JP2 file: extended box length at {pos} cut off")
            (length,) = struct.unpack_from(">Q", data, pos + 8)
            header = 16
        elif length == 0:
            length = end - pos
        if length < header or pos + length > end:
            raise MalformedDatasetError(
                f"JP2 file: box {kind!r} at offset {pos} declares {length} bytes, "
                f"{end - pos} are left"
            )
        if kind == b"jp2c":
            return data[pos + header : pos + length]
        pos += length
    raise MalformedDatasetError("JP2 file: no contiguous codestream (jp2c) box")
