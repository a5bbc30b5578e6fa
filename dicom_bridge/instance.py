"""What the layers above learn about one received instance (no patient data)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_bridge.encoding import dataset_sha256
from dicom_bridge.errors import DicomBridgeError
from dicom_bridge.spool import SpoolKey
from dicom_bridge.uids import validate_uid


@dataclass(frozen=True, slots=True)
class ReceivedInstance:
    """One durable instance in the spool, described for recording and routing."""

    key: SpoolKey
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path
    size: int
    calling_ae: str
    peer_host: str
    modality: str
    series_description: str
    body_part_examined: str
    image_type: tuple[str, ...]
    instance_number: int | None
    number_of_frames: int
    #: sha256 (hex) of the encoded dataset as received (after the file meta), when known
    sha256: str | None = None
    # MR sequence attributes, for routing. Read at the top level of the dataset only: an
    # enhanced multi-frame MR keeps them in functional groups / MR sequences, so there
    # they are empty (None) unless the sender also put them at the top level.
    contrast_bolus_agent: str = ""  # ContrastBolusAgent; "" when absent
    scanning_sequence: tuple[str, ...] = ()  # ScanningSequence (SE, IR, GR, EP, RM)
    echo_time_ms: float | None = None  # EchoTime
    repetition_time_ms: float | None = None  # RepetitionTime
    inversion_time_ms: float | None = None  # InversionTime


def describe(
    ds: Dataset,
    *,
    key: SpoolKey,
    transfer_syntax_uid: str,
    path: Path,
    size: int,
    calling_ae: str,
    peer_host: str,
    sha256: str | None = None,
) -> ReceivedInstance:
    return ReceivedInstance(
        key=key,
        sop_class_uid=text(ds, "SOPClassUID"),
        transfer_syntax_uid=transfer_syntax_uid,
        path=path,
        size=size,
        calling_ae=calling_ae,
        peer_host=peer_host,
        modality=text(ds, "Modality"),
        series_description=text(ds, "SeriesDescription"),
        body_part_examined=text(ds, "BodyPartExamined"),
        image_type=strings(ds, "ImageType"),
        instance_number=integer(ds, "InstanceNumber"),
        number_of_frames=integer(ds, "NumberOfFrames") or 1,
        sha256=sha256,
        contrast_bolus_agent=text(ds, "ContrastBolusAgent"),
        scanning_sequence=tuple(
            v.strip().upper() for v in strings(ds, "ScanningSequence") if v.strip()
        ),
        echo_time_ms=number(ds, "EchoTime"),
        repetition_time_ms=number(ds, "RepetitionTime"),
        inversion_time_ms=number(ds, "InversionTime"),
    )


def describe_spooled_file(path: Path) -> ReceivedInstance:
    """Describe a file already in the spool (used to re-index after a power loss)."""
    try:
        raw = path.read_bytes()
        ds = dcmread(BytesIO(raw), stop_before_pixels=True)
        key = SpoolKey(
            validate_uid(ds.get("StudyInstanceUID"), what="StudyInstanceUID"),
            validate_uid(ds.get("SeriesInstanceUID"), what="SeriesInstanceUID"),
            validate_uid(ds.get("SOPInstanceUID"), what="SOPInstanceUID"),
        )
    except DicomBridgeError:
        raise
    except Exception as exc:
        raise DicomBridgeError(
            f"cannot read spooled file {path.name}: {type(exc).__name__}"
        ) from exc
    return describe(
        ds,
        key=key,
        transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", "")),
        path=path,
        size=len(raw),
        calling_ae="",
        peer_host="",
        sha256=dataset_sha256(raw),
    )


def text(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword, "")
        return str(value).strip().rstrip("\x00") if value is not None else ""
    except Exception:
        return ""


def strings(ds: Dataset, keyword: str) -> tuple[str, ...]:
    try:
        value = ds.get(keyword)
        if value is None:
            return ()
        if isinstance(value, str):
            return (value,)
        return tuple(str(v) for v in value)
    except Exception:
        return ()


def integer(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except Exception:
        return None


def number(ds: Dataset, keyword: str) -> float | None:
    """A numeric (DS/FD) value at the top level; None when absent, empty or not finite."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        result = float(value)
    except Exception:
        return None
    return result if math.isfinite(result) else None
