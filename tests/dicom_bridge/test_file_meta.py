"""The listener's file meta group, packed directly, is byte for byte pynetdicom's."""

from __future__ import annotations

import itertools

import pytest
from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.uid import UID
from pynetdicom.dsutils import create_file_meta, encode_file_meta

from dicom_bridge.file_meta import encode_file_meta_group

CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.66.4")
# odd and even lengths, the longest a UID may be, and one that is not a valid UID
INSTANCES = ("1.2.3", "1.2.34", "2.25." + "1" * 60, "1.02.x")
SYNTAXES = (
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.90",
)


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "syntax"), list(itertools.product(CLASSES, INSTANCES, SYNTAXES))
)
def test_the_group_is_pynetdicoms(sop_class: str, sop_instance: str, syntax: str) -> None:
    expected = encode_file_meta(
        create_file_meta(
            sop_class_uid=UID(sop_class),
            sop_instance_uid=UID(sop_instance),
            transfer_syntax=UID(syntax),
        )
    )
    assert encode_file_meta_group(sop_class, sop_instance, syntax) == expected


def test_a_file_with_the_group_reads_back() -> None:
    group = encode_file_meta_group(CLASSES[0], "1.2.3.4", "1.2.840.10008.1.2.1")
    meta = dcmread(DicomBytesIO(b"\x00" * 128 + b"DICM" + group), force=True).file_meta
    assert meta.MediaStorageSOPInstanceUID == "1.2.3.4"
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert meta.FileMetaInformationGroupLength == len(group) - 12


def test_values_that_are_not_ascii_go_through_pynetdicom() -> None:
    odd = "1.2.\u00e9"
    expected = encode_file_meta(
        create_file_meta(
            sop_class_uid=UID(CLASSES[0]),
            sop_instance_uid=UID(odd),
            transfer_syntax=UID("1.2.840.10008.1.2.1"),
        )
    )
    assert encode_file_meta_group(CLASSES[0], odd, "1.2.840.10008.1.2.1") == expected
