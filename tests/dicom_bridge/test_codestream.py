"""The size a compressed frame declares in its codestream header, read from the output of real
encoders (Pillow JPEG / JPEG 2000, pylibjpeg-openjpeg, pyjpegls); a header patched to declare
20000x20000 is reported as such without any decoder running; truncated or random input only
ever raises MalformedDatasetError."""

from __future__ import annotations

import io
import struct
import tracemalloc
from datetime import timedelta

import jpeg_ls
import numpy as np
import openjpeg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    JPEG2000MC,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEG2000MCLossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from dicom_bridge.codestream import DeclaredSize, declared_size
from dicom_bridge.errors import MalformedDatasetError

ROWS, COLUMNS = 37, 53
JPEG_SYNTAXES = [JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1, JPEGLossless]
JPEG_LS_SYNTAXES = [JPEGLSLossless, JPEGLSNearLossless]
J2K_SYNTAXES = [JPEG2000Lossless, JPEG2000, JPEG2000MCLossless, JPEG2000MC]
HTJ2K_SYNTAXES = [HTJ2KLossless, HTJ2KLosslessRPCL, HTJ2K]
SIZELESS_SYNTAXES = [
    RLELossless,
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    "1.2.3.4.5",  # unknown
]
ALL_SYNTAXES = JPEG_SYNTAXES + JPEG_LS_SYNTAXES + J2K_SYNTAXES + HTJ2K_SYNTAXES + SIZELESS_SYNTAXES


def pixels(components: int, dtype: type = np.uint8) -> np.ndarray:
    rng = np.random.default_rng(7)
    shape = (ROWS, COLUMNS) if components == 1 else (ROWS, COLUMNS, components)
    return rng.integers(0, 200, size=shape).astype(dtype)


def pillow_jpeg(components: int = 1, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels(components)).save(buffer, "JPEG", **options)
    return buffer.getvalue()


def openjpeg_j2k(components: int = 1, codec_format: int = 0) -> bytes:
    return bytes(openjpeg.encode(pixels(components, np.uint16), codec_format=codec_format))


def charls_jls(components: int = 1, lossy_error: int = 0) -> bytes:
    return bytes(jpeg_ls.encode_array(pixels(components, np.uint16), lossy_error=lossy_error))


def sof_offset(frame: bytes, marker: int = 0xC0) -> int:
    """Offset of the SOF marker Pillow writes (baseline: FFC0, progressive: FFC2)."""
    return frame.index(bytes([0xFF, marker]))


def boxes(jp2: bytes) -> list[tuple[bytes, bytes]]:
    """The top-level (type, contents) boxes of a JP2 file with plain 4-byte lengths."""
    found, pos = [], 0
    while pos < len(jp2):
        length, kind = struct.unpack_from(">I4s", jp2, pos)
        found.append((kind, jp2[pos + 8 : pos + length]))
        pos += length
    return found


def expected(components: int) -> DeclaredSize:
    return DeclaredSize(rows=ROWS, columns=COLUMNS, components=components)


# --- real encoders ---


@pytest.mark.parametrize("components", [1, 3])
@pytest.mark.parametrize("ts", JPEG_SYNTAXES)
def test_pillow_jpeg_baseline(components: int, ts: str) -> None:
    assert declared_size(pillow_jpeg(components), ts) == expected(components)


def test_pillow_jpeg_progressive_with_comment_exif_and_icc_segments() -> None:
    """APP0 (JFIF), APP1 (Exif), APP2 (ICC), COM and DQT are skipped by their lengths."""
    exif = Image.Exif()
    exif[0x010E] = "x" * 300  # ImageDescription
    frame = pillow_jpeg(
        3, progressive=True, comment=b"c" * 500, exif=exif.tobytes(), icc_profile=b"i" * 2000
    )
    for app in (0xE0, 0xE1, 0xE2, 0xFE):
        assert bytes([0xFF, app]) in frame[: sof_offset(frame, 0xC2)]
    assert declared_size(frame, JPEGBaseline8Bit) == expected(3)
    assert declared_size(memoryview(frame), JPEGBaseline8Bit) == expected(3)


@pytest.mark.parametrize("components", [1, 3])
@pytest.mark.parametrize("ts", J2K_SYNTAXES)
def test_openjpeg_j2k_codestream(components: int, ts: str) -> None:
    frame = openjpeg_j2k(components)
    assert frame[:4] == b"\xff\x4f\xff\x51"  # codec_format=0: a raw codestream
    assert declared_size(frame, ts) == expected(components)


@pytest.mark.parametrize("ts", HTJ2K_SYNTAXES)
def test_htj2k_syntaxes_read_the_siz_they_share_with_part_1(ts: str) -> None:
    """No installed encoder writes HTJ2K (openjpeg 2.5 only decodes it); its SOC + SIZ are those of
    JPEG 2000 Part 1, so a Part 1 codestream stands in for the header."""
    assert declared_size(openjpeg_j2k(1), ts) == expected(1)


@pytest.mark.parametrize("components", [1, 3])
def test_openjpeg_jp2_wrapper(components: int) -> None:
    frame = openjpeg_j2k(components, codec_format=1)
    assert frame.startswith(b"\x00\x00\x00\x0cjP  \r\n\x87\n")
    assert declared_size(frame, JPEG2000Lossless) == expected(components)


def test_pillow_jpeg2000_to_a_buffer_is_jp2_wrapped() -> None:
    """Pillow writes a JP2 file (not a raw codestream) unless told ``no_jp2=True``."""
    for no_jp2, magic in ((False, b"\x00\x00\x00\x0cjP  "), (True, b"\xff\x4f\xff\x51")):
        buffer = io.BytesIO()
        Image.fromarray(pixels(3)).save(buffer, "JPEG2000", no_jp2=no_jp2)
        assert buffer.getvalue().startswith(magic)
        assert declared_size(buffer.getvalue(), JPEG2000) == expected(3)


def test_jp2_extended_and_to_end_box_lengths() -> None:
    """Box length 1 (an 8-byte XLBox follows) and 0 (the box runs to the end of the file)."""
    parsed = boxes(openjpeg_j2k(1, codec_format=1))
    assert [kind for kind, _ in parsed][-1] == b"jp2c"
    (signature_kind, signature), *rest = parsed  # the signature box is always 12 bytes
    xl = struct.pack(">I4s", 12, signature_kind) + signature
    xl += b"".join(struct.pack(">I4sQ", 1, kind, 16 + len(body)) + body for kind, body in rest)
    assert declared_size(xl, JPEG2000Lossless) == expected(1)
    *head, (kind, body) = parsed
    plain = b"".join(struct.pack(">I4s", 8 + len(b), k) + b for k, b in head)
    to_end = plain + struct.pack(">I4s", 0, kind) + body
    assert declared_size(to_end, JPEG2000Lossless) == expected(1)


@pytest.mark.parametrize("components", [1, 3])
@pytest.mark.parametrize("lossy_error", [0, 2])
@pytest.mark.parametrize("ts", JPEG_LS_SYNTAXES)
def test_charls_jpeg_ls(components: int, lossy_error: int, ts: str) -> None:
    assert declared_size(charls_jls(components, lossy_error), ts) == expected(components)


# --- memory bomb ---


def forbid_decoders(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a decoder ran")

    for module, name in (
        (openjpeg, "decode"),
        (openjpeg, "decode_pixel_data"),
        (jpeg_ls, "decode"),
        (jpeg_ls, "decode_from_buffer"),
        (jpeg_ls, "decode_pixel_data"),
        (Image, "open"),
    ):
        monkeypatch.setattr(module, name, refuse)


def peak_bytes(frame: bytes, ts: str) -> tuple[DeclaredSize | None, int]:
    tracemalloc.start()
    try:
        size = declared_size(frame, ts)
        return size, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_j2k_siz_patched_to_20000_squared(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = bytearray(openjpeg_j2k(1))
    struct.pack_into(">II", frame, 8, 20000, 20000)  # Xsiz, Ysiz after SOC, SIZ, Lsiz, Rsiz
    forbid_decoders(monkeypatch)
    size, peak = peak_bytes(bytes(frame), JPEG2000Lossless)
    assert size == DeclaredSize(rows=20000, columns=20000, components=1)
    assert peak < 64 * 1024


def test_jpeg_sof_patched_to_20000_squared(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = bytearray(pillow_jpeg(3))
    struct.pack_into(">HH", frame, sof_offset(bytes(frame)) + 5, 20000, 20000)  # Y, X
    forbid_decoders(monkeypatch)
    size, peak = peak_bytes(bytes(frame), JPEGBaseline8Bit)
    assert size == DeclaredSize(rows=20000, columns=20000, components=3)
    assert peak < 64 * 1024


# --- malformed headers ---


def assert_prefixes(frame: bytes, ts: str, header_end: int, full: DeclaredSize) -> None:
    """Every prefix shorter than ``header_end`` raises MalformedDatasetError (nothing else);
    from ``header_end`` on, the size is read."""
    for cut in range(header_end):
        with pytest.raises(MalformedDatasetError):
            declared_size(frame[:cut], ts)
    assert declared_size(frame[:header_end], ts) == full


@pytest.mark.parametrize("components", [1, 3])
def test_truncated_jpeg(components: int) -> None:
    frame = pillow_jpeg(components)
    sof = sof_offset(frame)
    (length,) = struct.unpack_from(">H", frame, sof + 2)
    assert_prefixes(frame, JPEGBaseline8Bit, sof + 2 + length, expected(components))


def test_truncated_jpeg_ls() -> None:
    frame = charls_jls(3)
    sof = sof_offset(frame, 0xF7)
    (length,) = struct.unpack_from(">H", frame, sof + 2)
    assert_prefixes(frame, JPEGLSLossless, sof + 2 + length, expected(3))


@pytest.mark.parametrize("components", [1, 3])
def test_truncated_j2k(components: int) -> None:
    frame = openjpeg_j2k(components)
    (lsiz,) = struct.unpack_from(">H", frame, 4)
    assert_prefixes(frame, JPEG2000Lossless, 4 + lsiz, expected(components))


def test_every_proper_prefix_of_a_jp2_file_is_refused() -> None:
    """Its last box (jp2c) then runs past the end."""
    frame = openjpeg_j2k(1, codec_format=1)
    assert_prefixes(frame, JPEG2000Lossless, len(frame), expected(1))


@pytest.mark.parametrize(
    "marker", [0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF]
)
def test_every_sof_marker_is_a_frame_header(marker: int) -> None:
    frame = bytearray(pillow_jpeg(1))
    frame[sof_offset(bytes(frame)) + 1] = marker
    assert declared_size(bytes(frame), JPEGLossless) == expected(1)


@pytest.mark.parametrize("marker", [0xC4, 0xC8, 0xCC, 0xEF])  # DHT, JPG, DAC, APP15
def test_non_sof_marker_in_its_place_reaches_sos(marker: int) -> None:
    frame = bytearray(pillow_jpeg(1))
    frame[sof_offset(bytes(frame)) + 1] = marker
    with pytest.raises(MalformedDatasetError, match="SOS before a SOF"):
        declared_size(bytes(frame), JPEGBaseline8Bit)


def test_fill_bytes_and_standalone_markers_are_skipped() -> None:
    frame = pillow_jpeg(3)
    sof = sof_offset(frame)
    padded = frame[:sof] + b"\xff\xff\xff" + b"\xff\x01" + b"\xff\xd3" + frame[sof:]
    assert declared_size(padded, JPEGBaseline8Bit) == expected(3)


def test_jpeg_structural_errors() -> None:
    frame = pillow_jpeg(1)
    sof = sof_offset(frame)
    (length,) = struct.unpack_from(">H", frame, sof + 2)
    cases = {
        "does not start with SOI": frame[2:],
        "EOI before a SOF": b"\xff\xd8\xff\xd9" + frame[2:],
        "SOS before a SOF": frame[:sof] + frame[sof + 2 + length :],
        "where a marker must be": frame[:sof] + b"\x00" + frame[sof:],
        "declares 65535 bytes": frame[:4] + b"\xff\xff" + frame[6:],
        "0 lines": frame[: sof + 5] + b"\x00\x00" + frame[sof + 7 :],
        "another JPEG family": charls_jls(1),
    }
    for message, broken in cases.items():
        with pytest.raises(MalformedDatasetError, match=message):
            declared_size(broken, JPEGBaseline8Bit)
    with pytest.raises(MalformedDatasetError, match="another JPEG family"):
        declared_size(frame, JPEGLSLossless)


def test_j2k_structural_errors() -> None:
    frame = openjpeg_j2k(1)
    jp2 = openjpeg_j2k(1, codec_format=1)
    cases = {
        "does not start with SOC": frame[2:],
        "no SIZ marker after SOC": frame[:2] + b"\xff\x52" + frame[4:],
        "SIZ of 40 bytes for Csiz 1": frame[:4] + b"\x00\x28" + frame[6:],
        "not inside its extent": frame[:16] + frame[8:16] + frame[24:],  # XOsiz = Xsiz
        "no contiguous codestream": b"".join(
            struct.pack(">I4s", 8 + len(body), kind) + body
            for kind, body in boxes(jp2)
            if kind != b"jp2c"
        ),
        "declares 4 bytes": jp2[:12] + b"\x00\x00\x00\x04" + jp2[16:],
    }
    for message, broken in cases.items():
        with pytest.raises(MalformedDatasetError, match=message):
            declared_size(broken, JPEG2000)


def test_declared_size_validates() -> None:
    for rows, columns, components in ((0, 1, 1), (1, 0, 1), (1, 1, 0), (-1, 5, 5)):
        with pytest.raises(MalformedDatasetError):
            DeclaredSize(rows=rows, columns=columns, components=components)


@pytest.mark.parametrize("ts", SIZELESS_SYNTAXES)
def test_sizeless_syntaxes_return_none(ts: str) -> None:
    assert declared_size(pixels(1).tobytes(), ts) is None
    assert declared_size(pillow_jpeg(1), ts) is None  # not even a JPEG frame is looked into
    assert declared_size(b"", ts) is None


# --- random input ---

REAL_HEADERS = [pillow_jpeg(1)[:700], openjpeg_j2k(3)[:80], openjpeg_j2k(1, 1)[:120]]
MAGIC = [b"", b"\xff\xd8", b"\xff\xd8\xff", b"\xff\x4f\xff\x51", b"\x00\x00\x00\x0cjP  \r\n\x87\n"]


@st.composite
def mutated_header(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(REAL_HEADERS)))
    for _ in range(draw(st.integers(1, 4))):
        frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    return bytes(frame[: draw(st.integers(0, len(frame)))])


@settings(max_examples=400, deadline=timedelta(milliseconds=250))
@given(
    frame=st.one_of(
        st.binary(max_size=300),
        st.builds(lambda m, b: m + b, st.sampled_from(MAGIC), st.binary(max_size=300)),
        mutated_header(),
    ),
    ts=st.sampled_from(ALL_SYNTAXES),
)
def test_random_bytes_only_raise_malformed(frame: bytes, ts: str) -> None:
    try:
        result = declared_size(frame, ts)
    except MalformedDatasetError:
        return
    assert result is None or isinstance(result, DeclaredSize)
