"""UID validation (nothing that can name a path outside the spool) and the atomic spool."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest

from dicom_bridge.errors import DicomBridgeError, InvalidUIDError, SpoolError
from dicom_bridge.spool import SUFFIX, Spool, SpoolKey
from dicom_bridge.uids import MAX_UID_LENGTH, is_strict_uid, short_ref, validate_uid

SAFE = re.compile(r"[0-9]+(\.[0-9]+)*")  # what may name something on disk (fullmatch)

STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES = "1.2.826.0.1.3680043.8.498.2"
SOP = "1.2.826.0.1.3680043.8.498.3"


# -- validate_uid ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uid",
    [
        "1.2.840.10008.5.1.4.1.1.2",
        "2.25.329800735698586629295641978511506172918",
        "0",
        "1.2.0.3",
        "1." + "2" * (MAX_UID_LENGTH - 2),  # exactly 64 characters
        "1.02.3",  # leading zero inside a component is tolerated (cannot escape a directory)
    ],
)
def test_validate_uid_accepts(uid: str) -> None:
    assert validate_uid(uid) == uid


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("1.2.3\x00", "1.2.3"),  # DICOM UI values are padded with NUL to an even length
        (" 1.2.3 ", "1.2.3"),
        ("1.2.3\n", "1.2.3"),
    ],
)
def test_validate_uid_trims_padding(raw: str, clean: str) -> None:
    assert validate_uid(raw) == clean


def test_validate_uid_accepts_non_strings() -> None:
    assert validate_uid(123) == "123"


@pytest.mark.parametrize(
    "uid",
    [
        None,
        "",
        "   ",
        "\x00",
        "../x",
        "..",
        ".",
        "1.2/3",
        "1.2\\3",
        "/1.2",
        "1..2",
        ".1",
        "1.",
        "1." + "2" * (MAX_UID_LENGTH - 1),  # 65 characters
        "1.2 3",
        "1.2\x003",
        "1.2.3a",
        "1.2.-3",
        "1.2.+3",
        "1,2",
        "\u0661.2",  # Arabic-Indic one
        "\uff11.2",  # fullwidth one
        "1.2\n\x00",  # newline hidden behind NUL padding
        "1.2\r\n\x00",
        "1.2 \x00",
        "1.2.\x00",
        "\x001.2",
    ],
)
def test_validate_uid_rejects(uid: object) -> None:
    with pytest.raises(InvalidUIDError):
        validate_uid(uid, what="SOPInstanceUID")


def test_invalid_uid_error_is_a_value_error_and_bridge_error() -> None:
    with pytest.raises(ValueError) as info:
        validate_uid("../etc", what="StudyInstanceUID")
    assert isinstance(info.value, DicomBridgeError)
    assert "StudyInstanceUID" in str(info.value)
    assert "../etc" not in str(info.value)  # the bad value is not echoed


@pytest.mark.parametrize(
    "value",
    [
        "1.2",
        "1.2\x00",
        " 1.2",
        "1.2\n\x00",
        "1.2\x00\n",
        "\t1.2\x00",
        "1.2\x00\x00",
        "1.2\x0b\x00",
        "1.2\x0c",
        "1.2\u2028\x00",
        "1.2\u00a0\x00",
        "../1.2",
        "1.2/..",
    ],
)
def test_anything_accepted_is_only_digits_and_dots(value: str) -> None:
    """Whatever validate_uid returns is fit to name a file: digits and single dots only."""
    try:
        out = validate_uid(value)
    except InvalidUIDError:
        return
    assert SAFE.fullmatch(out), f"validate_uid({value!r}) returned unsafe {out!r}"
    assert len(out) <= MAX_UID_LENGTH


def test_is_strict_uid() -> None:
    assert is_strict_uid("1.2.840.10008")
    assert is_strict_uid("0.1")
    assert not is_strict_uid("1.02.3")
    assert not is_strict_uid("1..2")
    assert not is_strict_uid("1." + "2" * 63)
    assert not is_strict_uid("1.2\n")


def test_short_ref_is_short_stable_and_not_the_uid() -> None:
    ref = short_ref(STUDY)
    assert ref == short_ref(STUDY)
    assert len(ref) == 12 and re.fullmatch(r"[0-9a-f]{12}", ref)
    assert ref not in STUDY
    assert short_ref(SERIES) != ref


# -- SpoolKey --------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["study_uid", "series_uid", "sop_uid"])
@pytest.mark.parametrize("bad", ["..", "../../etc", "1.2/3", "", "1..2", "1.2\n\x00"])
def test_spool_key_rejects_unsafe_uids(field: str, bad: str) -> None:
    uids = {"study_uid": STUDY, "series_uid": SERIES, "sop_uid": SOP, field: bad}
    with pytest.raises(InvalidUIDError):
        SpoolKey(**uids)


@pytest.mark.parametrize("padded", [" 1.2.3", "1.2.3\x00", "1.2.3 "])
def test_spool_key_holds_only_clean_uids(padded: str, tmp_path: Path) -> None:
    """A SpoolKey that exists is valid: either padding is refused or it is trimmed away,
    so the key never names a file with spaces or NULs in it."""
    try:
        key = SpoolKey(padded, SERIES, SOP)
    except InvalidUIDError:
        return
    assert SAFE.fullmatch(key.study_uid), f"SpoolKey kept {key.study_uid!r}"
    path = Spool(tmp_path, fsync=False).path_for(key)
    assert path.parent.parent.name == "1.2.3"


# -- Spool -----------------------------------------------------------------------------------------


def key(n: int = 3, series: str = SERIES) -> SpoolKey:
    return SpoolKey(STUDY, series, f"{SOP}.{n}")


@pytest.fixture(params=[True, False], ids=["fsync", "nofsync"])
def spool(request: pytest.FixtureRequest, tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool", fsync=request.param)


def tmp_entries(spool: Spool) -> list[Path]:
    return sorted((spool.root / ".tmp").iterdir())


def test_path_layout(spool: Spool) -> None:
    assert spool.path_for(key(7)) == spool.root / STUDY / SERIES / f"{SOP}.7{SUFFIX}"


def test_write_is_complete_and_leaves_nothing_in_tmp(spool: Spool) -> None:
    chunks = (b"DICM" * 1000, memoryview(b"\x01\x02\x03"), b"", bytearray(b"tail"))
    final = spool.write(key(), chunks)  # type: ignore[arg-type]
    assert final == spool.path_for(key())
    assert final.read_bytes() == b"DICM" * 1000 + b"\x01\x02\x03" + b"tail"
    assert tmp_entries(spool) == []
    assert final.resolve().is_relative_to(spool.root.resolve())


def test_write_replaces_an_earlier_copy(spool: Spool) -> None:
    spool.write(key(), (b"old",))
    final = spool.write(key(), (b"new contents",))
    assert final.read_bytes() == b"new contents"
    assert tmp_entries(spool) == []
    assert list(spool.iter_files()) == [final]


def test_write_large_chunk(spool: Spool) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    assert spool.write(key(), (memoryview(data),)).read_bytes() == data


def test_failing_write_with_non_bytes_chunk(spool: Spool) -> None:
    """A chunk that is not bytes-like: SpoolError, no final file, nothing left in .tmp."""
    with pytest.raises(SpoolError):
        spool.write(key(), (b"part one", "not bytes"))  # type: ignore[arg-type]
    assert not spool.path_for(key()).exists()
    assert tmp_entries(spool) == []


def test_failing_write_when_directory_cannot_be_made(spool: Spool) -> None:
    # A plain file where the study directory should be (works even as root, unlike chmod).
    (spool.root / STUDY).write_bytes(b"in the way")
    with pytest.raises(SpoolError):
        spool.write(key(), (b"data",))
    assert not spool.path_for(key()).exists()
    assert tmp_entries(spool) == []


def test_failing_rename_leaves_no_partial(spool: Spool) -> None:
    final = spool.path_for(key())
    final.mkdir(parents=True)  # a directory where the final file should go
    with pytest.raises(SpoolError):
        spool.write(key(), (b"data",))
    assert final.is_dir()
    assert tmp_entries(spool) == []


def test_failing_write_keeps_earlier_copy(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    final = spool.write(key(), (b"good copy",))

    def disk_full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("dicom_bridge.spool.os.write", disk_full)
    with pytest.raises(SpoolError, match="No space left"):
        spool.write(key(), (b"new copy",))
    monkeypatch.undo()
    assert final.read_bytes() == b"good copy"
    assert tmp_entries(spool) == []


def test_remove_partials(spool: Spool) -> None:
    tmp = spool.root / ".tmp"
    for n in range(3):
        (tmp / f"{SOP}.{n}.deadbeef.part").write_bytes(b"partial")
    kept = spool.write(key(), (b"complete",))
    assert spool.remove_partials() == 3
    assert tmp_entries(spool) == []
    assert kept.read_bytes() == b"complete"
    assert spool.remove_partials() == 0


def test_iter_files_lists_spooled_files_only(spool: Spool) -> None:
    written = {
        spool.write(key(1), (b"a",)),
        spool.write(key(2), (b"b",)),
        spool.write(key(1, series="1.2.3.99"), (b"c",)),
    }
    (spool.root / ".tmp" / f"{SOP}.9.cafe.part").write_bytes(b"partial")
    (spool.root / ".tmp" / f"{SOP}.8{SUFFIX}").write_bytes(b"partial with the suffix")
    (spool.root / "stray-file.dcm").write_bytes(b"not in a series directory")
    assert set(spool.iter_files()) == written


def test_spool_reopens_existing_root(tmp_path: Path) -> None:
    first = Spool(tmp_path / "spool", fsync=False)
    path = first.write(key(), (b"data",))
    again = Spool(tmp_path / "spool", fsync=False)
    assert list(again.iter_files()) == [path]
