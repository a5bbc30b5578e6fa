"""describe(): what a received instance's header tells the layers above, MR sequence
attributes included (top level only; absent ones are empty / None)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicom_bridge.instance import ReceivedInstance, describe
from dicom_bridge.spool import SpoolKey

KEY = SpoolKey("1.2.3", "1.2.3.4", "1.2.3.4.5")


def _describe(ds: Dataset) -> ReceivedInstance:
    return describe(
        ds,
        key=KEY,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=Path("x.dcm"),
        size=10,
        calling_ae="SCANNER",
        peer_host="127.0.0.1",
    )


def _mr() -> Dataset:
    ds = Dataset()
    ds.Modality = "MR"
    ds.SeriesDescription = "AX 3D"
    return ds


def test_mr_sequence_attributes_are_picked_up() -> None:
    ds = _mr()
    ds.ContrastBolusAgent = "GADOTERATE "
    ds.ScanningSequence = ["SE", "IR"]
    ds.EchoTime = "95.5"
    ds.RepetitionTime = 9000
    ds.InversionTime = "2500"
    received = _describe(ds)
    assert received.contrast_bolus_agent == "GADOTERATE"
    assert received.scanning_sequence == ("SE", "IR")
    assert received.echo_time_ms == 95.5
    assert received.repetition_time_ms == 9000.0
    assert received.inversion_time_ms == 2500.0


def test_a_single_scanning_sequence_value_is_a_tuple_of_one() -> None:
    ds = _mr()
    ds.ScanningSequence = "GR"
    assert _describe(ds).scanning_sequence == ("GR",)


def test_absent_attributes_are_empty_or_none() -> None:
    received = _describe(_mr())
    assert received.contrast_bolus_agent == ""
    assert received.scanning_sequence == ()
    assert received.echo_time_ms is None
    assert received.repetition_time_ms is None
    assert received.inversion_time_ms is None


@pytest.mark.parametrize("value", ["", "abc", "nan"])
def test_an_unreadable_time_is_none(value: str) -> None:
    ds = _mr()
    ds.add_new(0x00180081, "LO", value)  # EchoTime with a value that is no number
    assert _describe(ds).echo_time_ms is None


def test_enhanced_mr_values_only_in_functional_groups_are_not_read() -> None:
    ds = _mr()
    echo = Dataset()
    echo.EffectiveEchoTime = 90.0
    group = Dataset()
    group.MREchoSequence = Sequence([echo])
    ds.SharedFunctionalGroupsSequence = Sequence([group])
    ds.NumberOfFrames = 20
    received = _describe(ds)
    assert received.echo_time_ms is None and received.number_of_frames == 20
