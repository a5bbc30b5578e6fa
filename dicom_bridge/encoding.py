"""A walk over a received dataset's raw encoding: every element's declared length must fit.

pydicom defers large values and stops quietly at the end of its input, so an element
whose declared length runs past the end of the dataset (a truncated private element
declaring 0xFFFFFFF0 bytes, say) swallows everything behind it without an error. This
walk reads only element headers (tag, VR, length) and skips values, so it costs a few
microseconds per element whatever the pixel data's size. It descends into sequences
(defined or undefined length) and encapsulated pixel data items; a value must fit inside
whatever contains it. Messages name tags and offsets, never values.
"""

from __future__ import annotations

import hashlib
import struct
import zlib

from pydicom.datadict import DicomDictionary

from dicom_bridge.errors import MalformedDatasetError

UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD
_MAX_DEPTH = 16
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_TAG = {True: struct.Struct("<HHI"), False: struct.Struct(">HHI")}  # tag + 32-bit length
_SHORT = {True: struct.Struct("<H"), False: struct.Struct(">H")}
_LONG = {True: struct.Struct("<I"), False: struct.Struct(">I")}


def check_lengths(data: bytes | memoryview, *, implicit_vr: bool, little_endian: bool) -> int:
    """Raise :class:`MalformedDatasetError` when an element's declared length runs past the
    end of the dataset (or of the sequence or item holding it); return the element count.

    A tail shorter than one element header is tolerated, as pydicom does.
    """
    walk = _Walk(memoryview(data), little_endian)
    walk.dataset(0, len(walk.buf), implicit_vr, 0, delimited=False, top=True)
    return walk.elements


def inflate(data: bytes, limit: int) -> bytes:
    """Inflate a deflated dataset (raw deflate, PS3.5 A.5) to at most ``limit`` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(data, limit)
    except zlib.error as exc:
        raise _error(f"deflated dataset cannot be inflated: {exc}") from exc
    if inflater.unconsumed_tail:
        raise _error(f"deflated dataset inflates beyond {limit // 2**20} MiB")
    return inflated


#: Output chunk of :func:`inflated_size`: what the counting pass holds at once.
_COUNT_CHUNK = 1 << 20


def inflated_size(data: bytes, limit: int) -> int:
    """How many bytes ``data`` (raw deflate) inflates to, counted in 1 MiB chunks that
    are discarded at once; counting stops at ``limit + 1``, so a bomb costs one chunk of
    memory and at most ``limit`` bytes of work."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    pending = data
    try:
        while pending and total <= limit:
            total += len(inflater.decompress(pending, _COUNT_CHUNK))
            pending = inflater.unconsumed_tail
        if total <= limit:
            total += len(inflater.flush())
    except zlib.error as exc:
        raise _error(f"deflated dataset cannot be inflated: {exc}") from exc
    return total


def dataset_offset(raw: bytes | memoryview) -> int:
    """Where the dataset starts in a Part 10 file: after the preamble and group 0002
    (explicit VR little endian); 0 for a bare dataset."""
    view = memoryview(raw)
    pos = 132 if bytes(view[128:132]) == b"DICM" else 0
    while pos + 8 <= len(view) and bytes(view[pos : pos + 2]) == b"\x02\x00":
        if bytes(view[pos + 4 : pos + 6]) in _LONG_VRS and pos + 12 <= len(view):
            pos += 12 + _LONG[True].unpack_from(view, pos + 8)[0]
        else:
            pos += 8 + _SHORT[True].unpack_from(view, pos + 6)[0]
    return min(pos, len(view))


def dataset_sha256(raw: bytes | memoryview) -> str:
    """sha256 (hex) of the encoded dataset in a Part 10 file, file meta left out: the same
    value the listener records for the dataset it received."""
    view = memoryview(raw)
    return hashlib.sha256(view[dataset_offset(view) :]).hexdigest()


class _Walk:
    def __init__(self, buf: memoryview, little_endian: bool) -> None:
        self.buf = buf
        self.little = little_endian
        self.tag = _TAG[little_endian]
        self.short = _SHORT[little_endian]
        self.long = _LONG[little_endian]
        self.elements = 0

    def dataset(
        self, pos: int, end: int, implicit: bool, depth: int, *, delimited: bool, top: bool = False
    ) -> int:
        """Walk the elements in ``[pos, end)``; with ``delimited``, up to an item delimiter."""
        buf = self.buf
        while pos < end:
            if pos + 8 > end:
                if top:
                    return end
                raise _error(f"element header cut short at offset {pos}")
            group, elem, length = self.tag.unpack_from(buf, pos)
            tag = (group << 16) | elem
            if tag == _ITEM_END:
                if delimited:
                    return pos + 8
                raise _error(f"item delimiter outside an item at offset {pos}")
            self.elements += 1
            vr = b""
            header = 8
            if not implicit and group != 0xFFFE:
                vr = bytes(buf[pos + 4 : pos + 6])
                if vr in _LONG_VRS:
                    if pos + 12 > end:
                        raise _error(f"element ({group:04X},{elem:04X}) header cut short")
                    (length,) = self.long.unpack_from(buf, pos + 8)
                    header = 12
                else:
                    (length,) = self.short.unpack_from(buf, pos + 6)
            start = pos + header
            if length == UNDEFINED:
                items_are_datasets = vr in (b"SQ", b"UN") or implicit
                # An undefined-length UN holds an implicit VR little endian sequence.
                pos = self.items(
                    start,
                    end,
                    implicit or vr == b"UN",
                    depth + 1,
                    datasets=items_are_datasets,
                    delimited=True,
                    where=(group, elem),
                )
                continue
            if start + length > end:
                raise _error(
                    f"element ({group:04X},{elem:04X}) declares {length} bytes at offset "
                    f"{start}, only {max(0, end - start)} remain"
                )
            if length and _is_sequence(vr, implicit, tag):
                self.items(
                    start,
                    start + length,
                    implicit,
                    depth + 1,
                    datasets=True,
                    delimited=False,
                    where=(group, elem),
                )
            pos = start + length
        if delimited:
            raise _error("item without its delimiter before the end of the dataset")
        return pos

    def items(
        self,
        pos: int,
        end: int,
        implicit: bool,
        depth: int,
        *,
        datasets: bool,
        delimited: bool,
        where: tuple[int, int],
    ) -> int:
        """Walk sequence (or encapsulated pixel data) items; return the position after them."""
        if depth > _MAX_DEPTH:
            raise _error(f"sequences nested deeper than {_MAX_DEPTH} levels")
        name = f"({where[0]:04X},{where[1]:04X})"
        buf = self.buf
        while pos < end:
            if pos + 8 > end:
                raise _error(f"item header in {name} cut short at offset {pos}")
            group, elem, length = self.tag.unpack_from(buf, pos)
            tag = (group << 16) | elem
            if tag == _SEQUENCE_END:
                if delimited:
                    return pos + 8
                raise _error(f"sequence delimiter inside defined-length {name}")
            if tag != _ITEM:
                raise _error(f"unexpected tag ({group:04X},{elem:04X}) among the items of {name}")
            start = pos + 8
            if length == UNDEFINED:
                if not datasets:
                    raise _error(f"undefined-length fragment in {name}")
                pos = self.dataset(start, end, implicit, depth, delimited=True)
                continue
            if start + length > end:
                raise _error(
                    f"item in {name} declares {length} bytes at offset {start}, "
                    f"only {max(0, end - start)} remain"
                )
            if datasets:
                self.dataset(start, start + length, implicit, depth, delimited=False)
            pos = start + length
        if delimited:
            raise _error(f"{name} has no sequence delimiter before the end of its container")
        return pos


def _is_sequence(vr: bytes, implicit: bool, tag: int) -> bool:
    if not implicit:
        return vr == b"SQ"
    entry = DicomDictionary.get(tag)
    return entry is not None and entry[0] == "SQ"


def _error(message: str) -> MalformedDatasetError:
    return MalformedDatasetError(message)
