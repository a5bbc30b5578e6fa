"""The four-sequence, overlapping-region glioma task (``glioma_brats``): its spec, its
phantom, training with sigmoid regions, inference to per-label masks and evaluation."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from models.errors import InputError, SpecError
from models.evaluation import evaluate_case
from models.inference import segment
from models.networks import NetworkConfig, build_network
from models.phantoms import (
    BRATS_CHANNELS,
    MR_BRATS,
    MRSequence,
    PhantomKind,
    Tissue,
    brain_mr_phantom,
    brats_mr_study,
    generate_phantom,
)
from models.regions import enforce_nesting, region_masks, region_targets
from models.tasks import (
    LIVER_CT_SPEC,
    TASKS,
    LabelSpec,
    OutputActivation,
    ParentConstraint,
    PostprocessSpec,
    TaskName,
    TaskSpec,
    get_task,
)
from models.training import TrainConfig, TrainingCase, train
from tests.models.test_geometry import make_affine, oblique_directions, ras_spacing

SPEC = get_task(TaskName.GLIOMA_BRATS)
ENHANCING, CORE, WHOLE = 1, 2, 3
# small, coarse studies so that every test stays fast on two cores
SMALL = replace(MR_BRATS, name="ci_brats", spacing_mm=(5.0, 5.0, 5.0), matrix=(32, 46, 40))
TINY_NET = NetworkConfig(filters=(4, 8), num_res_units=0)


def with_regions(**changes: Any) -> TaskSpec:
    return dataclasses.replace(SPEC, **changes)


# -- the spec ---------------------------------------------------------------------------


def test_the_shipped_spec() -> None:
    assert SPEC.activation is OutputActivation.SIGMOID
    assert [c.name for c in SPEC.channels] == ["t1c", "t1", "t2", "flair"]
    assert [c.accepted_series for c in SPEC.channels] == [("T1C",), ("T1",), ("T2",), ("FLAIR",)]
    assert [x.name for x in SPEC.labels] == ["Enhancing tumour", "Tumour core", "Whole tumour"]
    assert SPEC.in_channels == 4
    assert SPEC.num_classes == 3  # network outputs: one per label, no background
    assert SPEC.training_classes == 4  # background + necrotic, oedema, enhancing
    assert SPEC.regions == ((3,), (1, 3), (1, 2, 3))
    assert SPEC.nesting() == ((1, 2), (1, 3), (2, 3))
    assert len({x.color_rgb for x in SPEC.labels}) == 3
    for label in SPEC.labels:
        assert label.category.value == "49755003"
        assert label.anatomic_region is not None and label.anatomic_region.value == "12738006"
    # the existing tasks keep softmax and their meaning of num_classes
    for name in (TaskName.LIVER_CT, TaskName.GLIOMA_MR):
        spec = TASKS[name]
        assert spec.activation is OutputActivation.SOFTMAX
        assert spec.num_classes == spec.training_classes == len(spec.labels) + 1
        assert spec.regions == () and spec.tissue_classes == () and spec.nesting() == ()


def test_activation_accepts_its_string() -> None:
    spec = with_regions(activation="sigmoid")
    assert spec.activation is OutputActivation.SIGMOID
    with pytest.raises(SpecError, match="unknown output activation"):
        with_regions(activation="relu")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"regions": ((3,), (1, 3))}, "one region per label"),
        ({"regions": ((3,), (), (1, 2, 3))}, "is empty"),
        ({"regions": ((0, 3), (1, 3), (1, 2, 3))}, "contains 0"),
        ({"regions": ((4,), (1, 3), (1, 2, 3))}, "outside the tissue classes"),
        ({"regions": ((3, 3), (1, 3), (1, 2, 3))}, "twice"),
        ({"regions": ((1, 3), (1, 3), (1, 2, 3))}, "same region"),
        ({"regions": ((3,), (1, 3), (1, 3))}, "same region"),
        ({"regions": ((3,), (3,), (1, 2, 3))}, "same region"),
        ({"regions": (("3",), (1, 3), (1, 2, 3))}, "integer tissue values"),
        ({"regions": ((3,), (1, 3), (1, 3, 2)), "tissue_classes": ("a", "b", "c", "d")}, "no"),
        ({"tissue_classes": ()}, "needs tissue_classes"),
        ({"tissue_classes": ("necrotic", "necrotic", "enhancing")}, "unique"),
        ({"tissue_classes": ("background", "oedema", "enhancing")}, "no background"),
        ({"postprocess": PostprocessSpec(largest_component=(3,))}, "only min_volume_ml"),
        (
            {"postprocess": PostprocessSpec(inside_parent=(ParentConstraint(1, 3, 5.0),))},
            "only min_volume_ml",
        ),
    ],
)
def test_bad_region_specs_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        with_regions(**changes)


def test_a_background_label_is_refused_for_sigmoid() -> None:
    first = SPEC.labels[0]
    background = LabelSpec(1, "Background", first.category, first.property_type, (0, 0, 0))
    with pytest.raises(SpecError, match="no background channel"):
        with_regions(labels=(background, *SPEC.labels[1:]))


def test_softmax_tasks_take_no_regions() -> None:
    with pytest.raises(SpecError, match="for sigmoid tasks"):
        dataclasses.replace(LIVER_CT_SPEC, regions=((1,), (2,)))
    with pytest.raises(SpecError, match="for sigmoid tasks"):
        dataclasses.replace(LIVER_CT_SPEC, tissue_classes=("a", "b"))
    with pytest.raises(SpecError, match="for sigmoid tasks"):
        with_regions(activation=OutputActivation.SOFTMAX)


def test_region_masks_targets_and_nesting() -> None:
    tissues = np.array([[[0, 1, 2, 3]]], dtype=np.uint8)
    masks = region_masks(SPEC, tissues)
    assert masks.shape == (3, 1, 1, 4)
    np.testing.assert_array_equal(masks[:, 0, 0], [[0, 0, 0, 1], [0, 1, 0, 1], [0, 1, 1, 1]])
    targets = region_targets(SPEC, torch.as_tensor(tissues)[None, None])
    assert targets.dtype == torch.float32
    np.testing.assert_array_equal(targets[0].numpy(), masks.astype(np.float32))
    # an enhancing voxel outside the predicted core and whole tumour joins both
    loose = np.zeros((3, 1, 1, 3), dtype=bool)
    loose[ENHANCING - 1, 0, 0, 0] = True
    loose[CORE - 1, 0, 0, 1] = True
    nested = enforce_nesting(SPEC, loose)
    np.testing.assert_array_equal(nested[:, 0, 0], [[1, 0, 0], [1, 1, 0], [1, 1, 0]])
    with pytest.raises(InputError, match="softmax"):
        region_masks(LIVER_CT_SPEC, tissues)


# -- the phantom ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def study() -> Any:
    return brats_mr_study(MR_BRATS, MR_BRATS.rng(2))


def test_four_sequences_on_one_grid(study: Any) -> None:
    assert study.image.shape == (4, *MR_BRATS.matrix)
    assert study.image.dtype == np.int16
    assert study.labels.shape == MR_BRATS.matrix
    assert np.allclose(study.affine_lps, MR_BRATS.affine())
    assert set(np.unique(study.labels)) == {0, 1, 2, 3}
    assert tuple(c.accepted_series[0] for c in SPEC.channels) == BRATS_CHANNELS
    # skull-stripped: exactly 0 outside the brain, tissue signal inside
    brain = study.masks["brain"]
    assert not study.image[:, ~brain].any()
    assert (study.image[:, brain] > 0).mean() > 0.99
    # the same patient as the single-sequence phantom drawn with the same generator
    single = brain_mr_phantom(MR_BRATS, MR_BRATS.rng(2), MRSequence.T1C)
    np.testing.assert_array_equal(single.tissues, study.tissues)
    np.testing.assert_array_equal(single.labels > 0, study.labels > 0)


def test_tissue_contrasts_per_sequence(study: Any) -> None:
    def mean(channel: str, where: np.ndarray) -> float:
        return float(study.image[BRATS_CHANNELS.index(channel)][where].mean())

    necrotic, oedema, enhancing = (study.labels == k for k in (1, 2, 3))
    white = study.tissues == Tissue.WHITE_MATTER
    csf = study.tissues == Tissue.VENTRICLE
    # T1C: enhancing rim brightest, necrosis dark
    assert mean("T1C", enhancing) > mean("T1C", white) > mean("T1C", oedema)
    assert mean("T1C", oedema) > mean("T1C", necrotic)
    # T1 (native): the tumour does not enhance
    assert mean("T1", white) > mean("T1", enhancing)
    assert mean("T1C", enhancing) > 1.5 * mean("T1", enhancing)
    # T2: fluid and necrosis bright, oedema bright, white matter dark
    assert mean("T2", csf) > mean("T2", oedema) > mean("T2", white)
    assert mean("T2", necrotic) > mean("T2", oedema)
    # FLAIR: oedema brightest, free fluid suppressed
    assert mean("FLAIR", oedema) > mean("FLAIR", enhancing) > mean("FLAIR", white)
    assert mean("FLAIR", white) > mean("FLAIR", csf)


def test_generate_phantom_makes_reproducible_studies() -> None:
    a = generate_phantom(PhantomKind.MR_BRATS, SMALL, 1)
    b = generate_phantom("mr_brats", SMALL, 1)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    c = generate_phantom("mr_brats", SMALL, 2)
    assert not np.array_equal(a.labels, c.labels)  # sizes and positions vary with the case


# -- training ---------------------------------------------------------------------------

TRAIN_SPEC = with_regions(target_spacing_mm=(5.0, 5.0, 5.0), patch_size=(16, 16, 16))


@pytest.fixture(scope="module")
def cases() -> list[TrainingCase]:
    out = []
    for k in range(2):
        p = generate_phantom("mr_brats", replace(SMALL, seed=4242), k)
        out.append(TrainingCase(p.image, p.labels, p.affine_lps))
    return out


def _run(cases: list[TrainingCase], seed: int = 3) -> tuple[list[float], dict[str, Any]]:
    torch.manual_seed(0)
    model = build_network(TRAIN_SPEC, TINY_NET)
    assert model(torch.zeros(1, 4, 16, 16, 16)).shape == (1, 3, 16, 16, 16)
    config = TrainConfig(steps=40, batch_size=2, lr=1e-2, seed=seed, device="cpu")
    report = train(model, TRAIN_SPEC, cases, config)
    return list(report.losses), {k: v.clone() for k, v in model.state_dict().items()}


def test_sigmoid_training_decreases_the_loss_and_is_deterministic(
    cases: list[TrainingCase],
) -> None:
    losses, state = _run(cases)
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.05
    again, state_again = _run(cases)
    assert again == losses
    assert all(torch.equal(state[k], state_again[k]) for k in state)


def test_class_ratios_count_the_tissue_classes(cases: list[TrainingCase]) -> None:
    model = build_network(TRAIN_SPEC, TINY_NET)
    ok = TrainConfig(steps=1, class_ratios=(0.25, 0.25, 0.25, 0.25), device="cpu")
    assert train(model, TRAIN_SPEC, cases, ok).steps == 1
    with pytest.raises(Exception, match="class_ratios needs 4 values"):
        train(model, TRAIN_SPEC, cases, replace(ok, class_ratios=(0.5, 0.5, 0.5)))


# -- inference --------------------------------------------------------------------------

SHAPE = (10, 22, 26)
NON_AXIAL = make_affine(
    directions=oblique_directions(30, 20), pixel_spacing=(0.9, 0.7), reverse_slices=True
)


class RegionNet(nn.Module):
    """Fixed function of the z-scored channels: label 1 where T1C is above its mean,
    label 2 where T2 is, label 3 where FLAIR is (logits +-5)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, [0, 2, 3]] > 0).float() * 10.0 - 5.0


def region_image(tissues: np.ndarray) -> np.ndarray:
    """Four channels in which T1C is bright on enhancing, T2 on the core (necrotic +
    enhancing), FLAIR on the whole tumour; T1 a smooth ramp; 0 outside the 'head'."""
    head = np.zeros(tissues.shape, dtype=bool)
    head[1:-1, 1:-1, 1:-1] = True
    ramp = np.broadcast_to(np.arange(tissues.shape[2], dtype=np.float32) + 50, tissues.shape)
    channels = [
        np.where(tissues == 3, 1000.0, 100.0),
        ramp,
        np.where(np.isin(tissues, (1, 3)), 1000.0, 100.0),
        np.where(tissues > 0, 1000.0, 100.0),
    ]
    return np.stack([np.where(head, c, 0.0) for c in channels]).astype(np.float32)


def tissue_truth() -> np.ndarray:
    t = np.zeros(SHAPE, dtype=np.uint8)
    t[2:9, 4:18, 5:22] = 2  # oedema
    t[3:8, 7:15, 8:18] = 1  # necrotic core
    t[4:7, 7:15, 8:10] = 3  # enhancing rim
    t[4:7, 7:15, 16:18] = 3
    return t


def test_fixed_function_network_gives_the_exact_regions_on_an_oblique_grid() -> None:
    truth = tissue_truth()
    image = region_image(truth)
    image[0, 8, 19, 23] = 1000.0  # a lone enhancing voxel outside core and whole tumour
    spec = with_regions(
        target_spacing_mm=ras_spacing(NON_AXIAL),
        patch_size=(16, 16, 16),
        postprocess=PostprocessSpec(),
    )
    result = segment(RegionNet(), spec, image, NON_AXIAL, device="cpu")
    assert result.mask.dtype == np.bool_
    assert result.mask.shape == (3, *SHAPE)
    expected = region_masks(spec, truth)
    expected[:, 8, 19, 23] = True  # nested: enhancing is core and whole tumour too
    np.testing.assert_array_equal(result.mask, expected)


def test_regions_through_resampling_stay_nested_and_clean_up_per_label() -> None:
    shape = (20, 40, 44)
    spacing = np.array([2.0, 0.9, 0.7])
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    distance = np.linalg.norm(index * spacing - np.array([19.3, 18.1, 15.2]), axis=-1)
    truth = np.zeros(shape, dtype=np.uint8)
    truth[distance < 10.0] = 2
    truth[distance < 7.0] = 3
    truth[distance < 3.5] = 1
    image = region_image(truth)
    image[0, 3, 3, 3] = 1000.0  # a stray one-voxel 'enhancing' spot
    spec = with_regions(
        target_spacing_mm=(1.2, 1.2, 1.2),
        patch_size=(16, 16, 16),
        postprocess=PostprocessSpec(min_volume_ml=((1, 0.01),)),
    )
    result = segment(RegionNet(), spec, image, NON_AXIAL, device="cpu", overlap=0.5)
    assert result.mask.shape == (3, *shape)
    enhancing, core, whole = result.mask
    assert not (enhancing & ~core).any() and not (core & ~whole).any()
    assert not result.mask[:, 3, 3, 3].any()  # removed before nesting, so from no label
    # a threshold at each channel's foreground mean widens the thin enhancing shell a
    # little where resampling mixes intensities; the regions stay where they are
    for label, predicted, min_dice in zip(spec.labels, result.mask, (0.7, 0.85, 0.85), strict=True):
        region = np.isin(truth, spec.regions[label.index - 1])
        assert 2 * (predicted & region).sum() / (predicted.sum() + region.sum()) > min_dice
        shift = (np.argwhere(predicted).mean(0) - np.argwhere(region).mean(0)) * spacing
        assert np.linalg.norm(shift) < 0.5  # mm
    # the raw thresholded output, without clean-up, keeps the stray voxel everywhere
    raw = segment(RegionNet(), spec, image, NON_AXIAL, device="cpu", postprocess=False)
    assert raw.mask[:, 3, 3, 3].all()


def test_a_wrong_output_channel_count_is_an_error() -> None:
    spec = with_regions(target_spacing_mm=ras_spacing(NON_AXIAL), patch_size=(16, 16, 16))

    class FourChannels(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(Exception, match="needs"):
        segment(FourChannels(), spec, region_image(tissue_truth()), NON_AXIAL, device="cpu")


# -- evaluation -------------------------------------------------------------------------


def test_evaluation_scores_each_region() -> None:
    truth = tissue_truth()
    affine = make_affine()
    perfect = region_masks(SPEC, truth)
    metrics = evaluate_case(perfect, truth, affine, SPEC)
    assert dict(metrics.dice) == {label.name: 1.0 for label in SPEC.labels}
    assert set(metrics.lesions) == {label.name for label in SPEC.labels}
    # the truth may also be given as region masks
    assert evaluate_case(perfect, perfect, affine, SPEC).dice == metrics.dice
    # no enhancing tumour predicted: that region scores 0, the others still 1
    missing = perfect.copy()
    missing[ENHANCING - 1] = False
    scores = evaluate_case(missing, truth, affine, SPEC).dice
    assert scores["Enhancing tumour"] == 0.0
    assert scores["Tumour core"] == scores["Whole tumour"] == 1.0
    # whole-tumour volume counts oedema, core does not
    vt = metrics.volume_ml_truth
    assert vt["Whole tumour"] > vt["Tumour core"] > vt["Enhancing tumour"] > 0
    with pytest.raises(InputError, match="overlapping labels"):
        evaluate_case(truth, truth, affine, SPEC)
