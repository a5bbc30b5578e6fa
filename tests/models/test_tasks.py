"""Task specs validate themselves; the shipped tasks say what they should (models.tasks)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from models.errors import ModelsError, SpecError
from models.tasks import (
    ANATOMICAL_STRUCTURE,
    MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
    NEOPLASM,
    PATCH_MULTIPLE,
    TASKS,
    ChannelSpec,
    Code,
    CTWindow,
    LabelSpec,
    Modality,
    MRZScore,
    ParentConstraint,
    PostprocessSpec,
    TaskName,
    TaskSpec,
    get_task,
)

LIVER_SPEC = get_task(TaskName.LIVER_CT)


def glioma_subregions_spec() -> TaskSpec:
    """What a later multi-sequence glioma task looks like: 4 channels, 3 labels."""
    oedema = Code("SCT", "79654002", "Edema")
    necrosis = Code("SCT", "6574001", "Necrosis")
    return TaskSpec(
        name=TaskName.GLIOMA_MR,
        description="Glioma sub-regions from T1, T1C, T2 and FLAIR",
        modality=Modality.MR,
        labels=(
            LabelSpec(
                1, "Necrotic core", MORPHOLOGICALLY_ABNORMAL_STRUCTURE, necrosis, (0, 0, 255)
            ),
            LabelSpec(2, "Oedema", MORPHOLOGICALLY_ABNORMAL_STRUCTURE, oedema, (0, 255, 0)),
            LabelSpec(
                3, "Enhancing tumour", MORPHOLOGICALLY_ABNORMAL_STRUCTURE, NEOPLASM, (255, 0, 0)
            ),
        ),
        channels=tuple(
            ChannelSpec(name, Modality.MR, (name.upper(),)) for name in ("t1", "t1c", "t2", "flair")
        ),
        target_spacing_mm=(1.0, 1.0, 1.0),
        patch_size=(128, 128, 128),
        intensity=MRZScore(),
        postprocess=PostprocessSpec(min_volume_ml=((1, 0.05), (2, 0.05), (3, 0.05))),
    )


def test_shipped_tasks() -> None:
    assert set(TASKS) == set(TaskName)
    for name, spec in TASKS.items():
        assert spec.name is name
        assert [label.index for label in spec.labels] == list(range(1, len(spec.labels) + 1))
        outputs = len(spec.labels) + (0 if spec.is_sigmoid else 1)
        assert spec.num_classes == outputs
        assert all(p % PATCH_MULTIPLE == 0 for p in spec.patch_size)


def test_liver_task_codes() -> None:
    liver, tumour = LIVER_SPEC.labels
    assert (liver.property_type.scheme, liver.property_type.value) == ("SCT", "10200004")
    assert liver.category == ANATOMICAL_STRUCTURE
    assert tumour.category == Code("SCT", "49755003", "Morphologically Abnormal Structure")
    assert tumour.property_type == Code("SCT", "108369006", "Neoplasm")
    assert tumour.anatomic_region == liver.property_type
    assert isinstance(LIVER_SPEC.intensity, CTWindow)
    assert LIVER_SPEC.modality is Modality.CT


def test_glioma_task() -> None:
    spec = get_task("glioma_mr")
    assert spec.in_channels == 1
    assert set(spec.channels[0].accepted_series) == {"T1C", "FLAIR"}
    (glioma,) = spec.labels
    assert glioma.name == "Glioma"
    assert glioma.category == MORPHOLOGICALLY_ABNORMAL_STRUCTURE
    assert glioma.anatomic_region is not None and glioma.anatomic_region.value == "12738006"
    assert isinstance(spec.intensity, MRZScore)


def test_unknown_task() -> None:
    with pytest.raises(SpecError, match="unknown task"):
        get_task("spleen_ct")


def test_a_multi_sequence_task_is_just_another_spec() -> None:
    spec = glioma_subregions_spec()
    assert spec.in_channels == 4
    assert spec.num_classes == 4


def test_strings_are_accepted_for_enums() -> None:
    spec = dataclasses.replace(LIVER_SPEC, name="liver_ct", modality="CT")  # type: ignore[arg-type]
    assert spec.name is TaskName.LIVER_CT
    assert spec.modality is Modality.CT
    assert ChannelSpec("x", "MR", ("T2",)).modality is Modality.MR  # type: ignore[arg-type]


def test_specs_are_frozen_and_hashable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        LIVER_SPEC.patch_size = (16, 16, 16)  # type: ignore[misc]
    assert hash(LIVER_SPEC) == hash(dataclasses.replace(LIVER_SPEC))


def _label(index: int, name: str = "x") -> LabelSpec:
    return LabelSpec(index, name, ANATOMICAL_STRUCTURE, NEOPLASM, (1, 2, 3))


INVALID: dict[str, Callable[[], Any]] = {
    "labels-not-contiguous": lambda: dataclasses.replace(
        LIVER_SPEC, labels=(_label(1, "a"), _label(3, "b")), postprocess=PostprocessSpec()
    ),
    "labels-not-from-1": lambda: dataclasses.replace(
        LIVER_SPEC, labels=(_label(2, "a"),), postprocess=PostprocessSpec()
    ),
    "labels-duplicate-index": lambda: dataclasses.replace(
        LIVER_SPEC, labels=(_label(1, "a"), _label(1, "b")), postprocess=PostprocessSpec()
    ),
    "labels-duplicate-name": lambda: dataclasses.replace(
        LIVER_SPEC, labels=(_label(1, "a"), _label(2, "a"))
    ),
    "no-labels": lambda: dataclasses.replace(LIVER_SPEC, labels=(), postprocess=PostprocessSpec()),
    "no-channels": lambda: dataclasses.replace(LIVER_SPEC, channels=()),
    "duplicate-channels": lambda: dataclasses.replace(
        LIVER_SPEC, channels=(ChannelSpec("a", Modality.CT, ("CT",)),) * 2
    ),
    "zero-spacing": lambda: dataclasses.replace(LIVER_SPEC, target_spacing_mm=(1.0, 0.0, 1.0)),
    "negative-spacing": lambda: dataclasses.replace(LIVER_SPEC, target_spacing_mm=(1.0, -1.0, 1.0)),
    "nan-spacing": lambda: dataclasses.replace(
        LIVER_SPEC, target_spacing_mm=(1.0, float("nan"), 1.0)
    ),
    "two-spacings": lambda: dataclasses.replace(LIVER_SPEC, target_spacing_mm=(1.0, 1.0)),
    "patch-not-multiple": lambda: dataclasses.replace(LIVER_SPEC, patch_size=(96, 96, 40)),
    "patch-float": lambda: dataclasses.replace(LIVER_SPEC, patch_size=(96.0, 96, 64)),
    "patch-zero": lambda: dataclasses.replace(LIVER_SPEC, patch_size=(0, 96, 64)),
    "ct-window-on-mr": lambda: dataclasses.replace(get_task("glioma_mr"), intensity=CTWindow(0, 1)),
    "window-reversed": lambda: CTWindow(250.0, -100.0),
    "window-nan": lambda: CTWindow(float("nan"), 1.0),
    "zscore-negative": lambda: MRZScore(-0.1),
    "intensity-type": lambda: dataclasses.replace(LIVER_SPEC, intensity="window"),
    "unknown-task-name": lambda: dataclasses.replace(LIVER_SPEC, name="spleen_ct"),
    "unknown-modality": lambda: dataclasses.replace(LIVER_SPEC, modality="PET"),
    "postprocess-unknown-label": lambda: dataclasses.replace(
        get_task("glioma_mr"), postprocess=PostprocessSpec(largest_component=(2,))
    ),
    "parent-is-child": lambda: ParentConstraint(1, 1, 5.0),
    "parent-distance-zero": lambda: ParentConstraint(2, 1, 0.0),
    "two-parents": lambda: PostprocessSpec(
        inside_parent=(ParentConstraint(2, 1, 5.0), ParentConstraint(2, 3, 5.0))
    ),
    "chained-parents": lambda: PostprocessSpec(
        inside_parent=(ParentConstraint(2, 1, 5.0), ParentConstraint(3, 2, 5.0))
    ),
    "negative-volume": lambda: PostprocessSpec(min_volume_ml=((1, -1.0),)),
    "volume-twice": lambda: PostprocessSpec(min_volume_ml=((1, 1.0), (1, 2.0))),
    "connectivity": lambda: PostprocessSpec(connectivity=18),
    "code-empty": lambda: Code("SCT", "", "Liver"),
    "code-padded": lambda: Code("SCT", "123 ", "Liver"),
    "code-long-meaning": lambda: Code("SCT", "1", "x" * 65),
    "label-index-zero": lambda: _label(0),
    "label-index-256": lambda: _label(256),
    "label-colour": lambda: LabelSpec(1, "x", ANATOMICAL_STRUCTURE, NEOPLASM, (0, 0, 256)),
    "label-colour-2": lambda: LabelSpec(1, "x", ANATOMICAL_STRUCTURE, NEOPLASM, (0, 0)),  # type: ignore[arg-type]
    "label-empty-name": lambda: LabelSpec(1, " ", ANATOMICAL_STRUCTURE, NEOPLASM, (0, 0, 0)),
    "channel-no-series": lambda: ChannelSpec("t1", Modality.MR, ()),
}


@pytest.mark.parametrize("build", list(INVALID.values()), ids=list(INVALID))
def test_invalid_specs_are_rejected(build: Callable[[], Any]) -> None:
    with pytest.raises(SpecError) as info:
        build()
    assert isinstance(info.value, ModelsError)
    assert isinstance(info.value, ValueError)


def test_min_volume_helpers() -> None:
    spec = LIVER_SPEC.postprocess
    assert spec.min_volume(2) == pytest.approx(0.02)
    assert spec.min_volume(7) == 0.0
    changed = spec.with_min_volume(2, 0.5).with_min_volume(3, 1.0)
    assert changed.min_volume(2) == 0.5 and changed.min_volume(3) == 1.0
    assert spec.min_volume(2) == pytest.approx(0.02)  # the original is unchanged
    assert spec.children_of(1) == (2,)
    with pytest.raises(SpecError):  # a site config cannot make the task inconsistent
        dataclasses.replace(
            get_task("glioma_mr"), postprocess=PostprocessSpec().with_min_volume(4, 1.0)
        )
