"""Mapping a bundle's output channels to task labels by the names in its channel_def."""

from __future__ import annotations

import json

import pytest

from models.channel_map import (
    ChannelMap,
    LabelVocabulary,
    map_channels,
    normalise,
    parse_channel_def,
    parse_label_map,
)
from models.errors import BundleImportError, ChannelMapError
from models.model_card import labels_for_task
from models.tasks import (
    BRAIN,
    GLIOMA_MR_SPEC,
    LIVER_CT_SPEC,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    NEOPLASM,
    LabelSpec,
    OutputActivation,
)
from tests.models.zoo import zoo_metadata

LIVER = LIVER_CT_SPEC.labels
# The labels of the glioma_brats task another change adds to models/tasks.py.
GLIOMA_BRATS = (
    LabelSpec(
        1, "Enhancing tumour", MORPHOLOGICALLY_ABNORMAL_STRUCTURE, NEOPLASM, (255, 0, 0), BRAIN
    ),
    LabelSpec(2, "Tumour core", MORPHOLOGICALLY_ABNORMAL_STRUCTURE, NEOPLASM, (0, 255, 0), BRAIN),
    LabelSpec(3, "Whole tumour", MORPHOLOGICALLY_ABNORMAL_STRUCTURE, NEOPLASM, (0, 0, 255), BRAIN),
)


def zoo_channel_def(bundle: str) -> dict[int, str]:
    metadata = zoo_metadata(bundle)
    return parse_channel_def(metadata["network_data_format"]["outputs"]["pred"]["channel_def"])


def test_names_are_normalised() -> None:
    assert normalise("  Liver_Tumor ") == "liver tumor"
    assert normalise("whole-TUMOR") == "whole tumor"


def test_wholebody_maps_liver_and_misses_the_tumour() -> None:
    channels = zoo_channel_def("wholeBody_ct_segmentation")
    result = map_channels(
        LIVER, out_channels=105, channel_def=channels, bundle="wb", task="liver_ct"
    )
    assert dict(result.channel_labels) == {5: 1}
    assert result.missing == ("Liver tumour",)
    assert result.activation is OutputActivation.SOFTMAX
    assert result.to_card()["channel_labels"] == {"5": 1}
    assert result.to_card()["channel_def"]["5"] == "liver"


def test_spleen_is_refused_for_liver_with_what_it_segments_and_what_is_needed() -> None:
    channels = zoo_channel_def("spleen_ct_segmentation")
    with pytest.raises(ChannelMapError) as info:
        map_channels(
            LIVER,
            out_channels=2,
            channel_def=channels,
            bundle="spleen_ct_segmentation",
            task="liver_ct",
        )
    assert str(info.value) == (
        "spleen_ct_segmentation segments background, spleen; task liver_ct needs Liver, "
        "Liver tumour: no output channel for Liver (give --label-map CHANNEL=Liver if one of "
        "the bundle's channels is liver)"
    )
    assert isinstance(info.value, BundleImportError)


def test_brats_channels_map_to_the_glioma_brats_labels_by_name() -> None:
    channels = zoo_channel_def("brats_mri_segmentation")
    result = map_channels(
        GLIOMA_BRATS, out_channels=3, activation=OutputActivation.SIGMOID, channel_def=channels
    )
    # channel_def: 0 Tumor core, 1 Whole tumor, 2 Enhancing tumor
    assert dict(result.channel_labels) == {0: 2, 1: 3, 2: 1}
    assert result.missing == ()
    assert result.activation is OutputActivation.SIGMOID
    # The same bundle for the one-label glioma_mr task: its whole tumour is the glioma.
    single = map_channels(GLIOMA_MR_SPEC.labels, out_channels=3, channel_def=channels)
    assert dict(single.channel_labels) == {1: 1}


def test_abbreviations_and_lesion_only_tasks() -> None:
    result = map_channels(GLIOMA_BRATS, out_channels=2, channel_def={0: "WT", 1: "ET"})
    assert dict(result.channel_labels) == {0: 3, 1: 1}
    assert result.missing == ("Tumour core",)
    with pytest.raises(ChannelMapError, match="no output channel for Enhancing tumour, Tumour"):
        map_channels(GLIOMA_BRATS, out_channels=2, channel_def={0: "background", 1: "edema"})


def test_generic_tumour_means_liver_tumour_only_next_to_a_liver() -> None:
    result = map_channels(LIVER, out_channels=3, channel_def={0: "bg", 1: "Liver", 2: "Tumor"})
    assert dict(result.channel_labels) == {1: 1, 2: 2}
    result = map_channels(
        LIVER, out_channels=3, channel_def={0: "background", 1: "hepatic", 2: "liver_lesions"}
    )
    assert dict(result.channel_labels) == {1: 1, 2: 2}
    # "tumor" next to a kidney is not a liver tumour.
    with pytest.raises(ChannelMapError, match=r"no output channel for Liver \(give"):
        map_channels(LIVER, out_channels=3, channel_def={0: "bg", 1: "kidney", 2: "tumor"})


def test_coded_channel_names() -> None:
    result = map_channels(
        LIVER,
        out_channels=3,
        channel_def={0: "background", 1: "SRT:10200004", 2: "SCT:108369006"},
    )
    assert dict(result.channel_labels) == {1: 1, 2: 2}


def test_without_channel_def_the_task_layout_is_required() -> None:
    assert dict(map_channels(LIVER, out_channels=3).channel_labels) == {1: 1, 2: 2}
    sigmoid = map_channels(GLIOMA_BRATS, out_channels=3, activation=OutputActivation.SIGMOID)
    assert dict(sigmoid.channel_labels) == {0: 1, 1: 2, 2: 3}
    with pytest.raises(ChannelMapError, match=r"out_channels is 2, but 2 label\(s\) need 3"):
        map_channels(LIVER, out_channels=2)
    # ... unless the site names the channels.
    named = map_channels(LIVER, out_channels=2, override={1: "liver"})
    assert dict(named.channel_labels) == {1: 1}
    assert named.missing == ("Liver tumour",)


def test_out_channels_must_match_the_channel_def() -> None:
    with pytest.raises(ChannelMapError, match="out_channels is 3, but its metadata's channel_def"):
        map_channels(LIVER, out_channels=3, channel_def={0: "background", 1: "liver"})


def test_label_map_parsing() -> None:
    assert parse_label_map("5=liver") == {5: "liver"}
    assert parse_label_map(" 5 = 1 , 6=Liver tumour") == {5: "1", 6: "Liver tumour"}
    for bad in ("", "5", "x=liver", "5=", "5=liver,,6=2", "-1=liver", "5=1,5=2"):
        with pytest.raises(ChannelMapError, match="label-map"):
            parse_label_map(bad)


def test_label_map_overrides_and_is_validated() -> None:
    channels = {0: "background", 1: "spleen", 2: "liver", 3: "lesion"}
    auto = map_channels(LIVER, out_channels=4, channel_def=channels)
    assert dict(auto.channel_labels) == {2: 1, 3: 2}  # "lesion" next to "liver"
    swapped = map_channels(LIVER, out_channels=4, channel_def=channels, override={1: "Liver"})
    assert dict(swapped.channel_labels) == {1: 1, 3: 2}
    by_index = map_channels(LIVER, out_channels=4, channel_def=channels, override={3: "1"})
    assert dict(by_index.channel_labels) == {3: 1}
    assert by_index.missing == ("Liver tumour",)
    cases = {
        "not an output channel": {7: "liver"},
        "background": {0: "liver"},
        "has no label 'kidney'": {1: "kidney"},
        "has no label '3'": {1: "3"},
        "maps two channels to Liver": {1: "liver", 2: "1"},
    }
    for message, override in cases.items():
        with pytest.raises(ChannelMapError, match=message):
            map_channels(LIVER, out_channels=4, channel_def=channels, override=override)


def test_channel_def_is_checked() -> None:
    assert parse_channel_def({"1": "liver", "0": "background"}) == {0: "background", 1: "liver"}
    for bad in ({}, {"a": "x"}, {"0": ""}, {"0": "bg", "2": "liver"}, {"0": 3}, ["bg"]):
        with pytest.raises(ChannelMapError, match="channel_def"):
            parse_channel_def(bad)


def test_the_card_entry_round_trips_and_is_validated() -> None:
    result = map_channels(
        labels_for_task(LIVER_CT_SPEC),
        out_channels=3,
        channel_def={0: "background", 1: "liver", 2: "liver tumor"},
    )
    assert ChannelMap.from_card(json.loads(json.dumps(result.to_card()))) == ChannelMap(
        3, OutputActivation.SOFTMAX, {1: 1, 2: 2}, result.channel_def
    )
    for bad in (
        {"out_channels": 3, "activation": "relu", "channel_labels": {"1": 1}},
        {"out_channels": 3, "activation": "softmax", "channel_labels": {"3": 1}},
        {"out_channels": 3, "activation": "softmax", "channel_labels": {"1": 1, "2": 1}},
        {"out_channels": 3, "activation": "softmax", "channel_labels": {}},
        {"out_channels": 3, "activation": "softmax", "channel_labels": {"x": 1}},
        {"out_channels": 3, "activation": "softmax", "channel_labels": {"1": 1}, "extra": 1},
    ):
        with pytest.raises(ChannelMapError):
            ChannelMap.from_card(bad)


def test_vocabularies_validate_themselves() -> None:
    assert LabelVocabulary(names=("Liver_Tumor",)).names == ("liver tumor",)
    with pytest.raises(ChannelMapError):
        LabelVocabulary(names=())
    with pytest.raises(ChannelMapError):
        LabelVocabulary(names=("x",), generic=("tumor",))
