"""Two-stage models (models.cascade): the box, its geometry, the stages, the card."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.card_inference import segment_with_card
from models.cascade import CascadeNetwork, crop_affine, region_of_interest, segment_cascade
from models.cascade_spec import RefinerSettings, cascade_architecture, refiner_spec
from models.errors import NetworkConfigError, SpecError
from models.evaluation import dice
from models.inference import segment
from models.model_card import ModelCard, ModelCardError, thaw
from models.phantoms import CT_DEFAULT, generate_phantom
from models.registry import ModelRegistry, build_network
from models.tasks import TASKS, TaskName, get_task
from tests.appliance.tiny_models import make_tiny_bundle, make_tiny_cascade_bundle
from tests.models.test_geometry import make_affine, oblique_directions, ras_spacing
from tests.models.test_inference import ThresholdNet, liver_spec

SHAPE = (12, 24, 28)
NON_AXIAL = make_affine(
    directions=oblique_directions(30, 20), pixel_spacing=(0.9, 0.7), reverse_slices=True
)
BUNDLES = Path(__file__).resolve().parents[2] / "models" / "bundles"


class ConstantNet(nn.Module):
    """Class ``k`` everywhere."""

    def __init__(self, k: int, classes: int = 3) -> None:
        super().__init__()
        self.k, self.classes = k, classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros((x.shape[0], self.classes, *x.shape[2:]), dtype=x.dtype)
        out[:, self.k] = 10.0
        return out


class RefusingNet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("stage 2 must not run")


def organ_image() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros(SHAPE, dtype=np.uint8)
    truth[3:9, 6:17, 8:20] = 1
    truth[5:7, 9:12, 11:15] = 2
    image = np.select([truth == 1, truth == 2], [100.0, 230.0], -500.0).astype(np.float32)
    return image, truth


def same_grid_settings(margin_mm: float = 3.0) -> RefinerSettings:
    return RefinerSettings(ras_spacing(NON_AXIAL), (16, 16, 16), margin_mm)


# -- settings and card -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"target_spacing_mm": [1, 1], "patch_size": [16, 16, 16]}, "target_spacing_mm"),
        ({"target_spacing_mm": [1, 1, 0], "patch_size": [16, 16, 16]}, "[0.1, 20]"),
        ({"target_spacing_mm": [1, 1, 1], "patch_size": [16, 16, 40]}, "multiples of 16"),
        ({"target_spacing_mm": [1, 1, 1], "patch_size": [16, 16, 16], "margin_mm": -1}, "margin"),
        ({"target_spacing_mm": [1, 1, 1], "patch_size": [16, 16, 16], "extra": 1}, "unknown"),
        ({"patch_size": [16, 16, 16]}, "target_spacing_mm"),
    ],
)
def test_refiner_settings_name_what_is_wrong(data: dict[str, object], words: str) -> None:
    with pytest.raises(SpecError, match=words.replace("[", r"\[").replace("]", r"\]")):
        RefinerSettings.from_dict(data)


def test_refiner_settings_round_trip_and_the_stage_2_spec() -> None:
    settings = RefinerSettings((1.0, 1.0, 1.5), (64, 64, 48), 12)
    assert RefinerSettings.from_dict(settings.to_dict()) == settings
    spec = refiner_spec(get_task(TaskName.LIVER_CT), settings)
    assert spec.target_spacing_mm == (1.0, 1.0, 1.5) and spec.patch_size == (64, 64, 48)
    assert spec.labels == get_task(TaskName.LIVER_CT).labels
    with pytest.raises(SpecError, match="softmax only"):
        refiner_spec(get_task(TaskName.GLIOMA_BRATS), settings)


def test_a_cascade_card_needs_its_refiner_grid_and_only_it_may_have_one(tmp_path: Path) -> None:
    bundle = make_tiny_cascade_bundle(tmp_path)
    card = bundle.card
    assert card.refiner == RefinerSettings((2.0, 2.0, 2.0), (32, 32, 32), 6.0)
    data = card.to_dict()
    without = {**data, "preprocessing": {k: v for k, v in data["preprocessing"].items()}}
    del without["preprocessing"]["refiner"]
    with pytest.raises(ModelCardError, match=r"needs 'preprocessing\.refiner'"):
        ModelCard.from_dict(without)
    plain = make_tiny_bundle(tmp_path / "plain").card.to_dict()
    plain["preprocessing"]["refiner"] = data["preprocessing"]["refiner"]
    with pytest.raises(ModelCardError, match="only a cascade card"):
        ModelCard.from_dict(plain)
    nested = dict(data)
    nested["architecture"] = cascade_architecture(thaw(card.architecture), data["architecture"])
    with pytest.raises(ModelCardError, match="cannot itself be a cascade"):
        ModelCard.from_dict(nested)


def test_registry_builds_both_stages_and_verifies_one_weights_file(tmp_path: Path) -> None:
    bundle = make_tiny_cascade_bundle(tmp_path)
    network = ModelRegistry(tmp_path).load_network(bundle)
    assert isinstance(network, CascadeNetwork)
    names = set(network.state_dict())
    assert names and all(n.startswith(("locator.", "refiner.")) for n in names)
    assert {n.split(".")[0] for n in names} == {"locator", "refiner"}
    with pytest.raises(NetworkConfigError, match="exactly"):
        build_network({"network": "Cascade", "kwargs": {"locator": thaw(card_stage(bundle))}})


def card_stage(bundle: object) -> object:
    return bundle.card.architecture["kwargs"]["locator"]  # type: ignore[attr-defined]


# -- the box ---------------------------------------------------------------------------------


def test_region_of_interest_grows_by_the_margin_in_each_axis_own_spacing() -> None:
    mask = np.zeros((20, 30, 40), dtype=np.uint8)
    mask[5:8, 10:12, 20:30] = 2
    affine = np.diag([2.5, 0.5, 1.0, 1.0])
    box = region_of_interest(mask, affine, 5.0)
    assert box == (slice(3, 10), slice(0, 22), slice(15, 35))  # 2, 10 (clipped), 5 voxels
    assert region_of_interest(np.zeros_like(mask), affine, 5.0) is None
    assert region_of_interest(mask, affine, 0.0) == (slice(5, 8), slice(10, 12), slice(20, 30))


def test_crop_affine_keeps_every_voxel_where_it_was() -> None:
    box = (slice(2, 7), slice(3, 9), slice(4, 11))
    cropped = crop_affine(NON_AXIAL, box)
    for index in ([0, 0, 0], [4, 5, 6], [1, 2, 3]):
        inside = np.array([*index, 1.0])
        outside = np.array([index[0] + 2, index[1] + 3, index[2] + 4, 1.0])
        np.testing.assert_allclose(cropped @ inside, NON_AXIAL @ outside, atol=1e-9)


# -- the stages ------------------------------------------------------------------------------


def test_fixed_function_stages_give_the_exact_mask_on_a_non_axial_grid() -> None:
    image, truth = organ_image()
    spec = liver_spec(ras_spacing(NON_AXIAL))
    result = segment_cascade(
        CascadeNetwork(ThresholdNet(), ThresholdNet()),
        spec,
        same_grid_settings(),
        image,
        NON_AXIAL,
        device="cpu",
    )
    assert result.roi_found
    np.testing.assert_array_equal(result.mask, truth)
    assert {"locator_total", "refiner_total", "total"} <= set(result.timings_s)


def test_stage_2_labels_only_the_box_around_stage_1() -> None:
    image, truth = organ_image()
    spec = liver_spec(ras_spacing(NON_AXIAL))
    settings = same_grid_settings(margin_mm=3.0)
    result = segment_cascade(
        CascadeNetwork(ThresholdNet(), ConstantNet(1)), spec, settings, image, NON_AXIAL
    )
    box = region_of_interest(truth, NON_AXIAL, 3.0)
    assert box is not None and result.roi == tuple((s.start, s.stop) for s in box)
    expected = np.zeros_like(truth)
    expected[box] = 1
    np.testing.assert_array_equal(result.mask, expected)
    assert expected.sum() < expected.size  # the box is a real crop


def test_nothing_found_by_stage_1_is_said_and_stage_2_never_runs() -> None:
    image = np.full(SHAPE, -500.0, dtype=np.float32)
    spec = liver_spec(ras_spacing(NON_AXIAL))
    result = segment_cascade(
        CascadeNetwork(ThresholdNet(), RefusingNet()), spec, same_grid_settings(), image, NON_AXIAL
    )
    assert not result.roi_found and result.roi is None
    assert result.mask.shape == SHAPE and not result.mask.any()


def test_the_card_dispatch_runs_a_cascade_and_refuses_a_plain_network(tmp_path: Path) -> None:
    bundle = make_tiny_cascade_bundle(tmp_path, locator_finds=False)
    network = ModelRegistry(tmp_path).load_network(bundle)
    spec = dataclasses.replace(get_task(TaskName.LIVER_CT), patch_size=(32, 32, 32))
    image = np.zeros((20, 40, 40), dtype=np.float32)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    result = segment_with_card(network, bundle.card, spec, image, affine, device="cpu")
    assert not result.roi_found and not result.mask.any()
    with pytest.raises(NetworkConfigError, match="two-stage"):
        segment_with_card(ThresholdNet(), bundle.card, spec, image, affine, device="cpu")


def test_a_refiner_on_the_locators_own_grid_reproduces_the_one_stage_result() -> None:
    """The shipped liver model as both stages, stage 2 on stage 1's grid: the cascade
    gives the one-stage mask up to what a crop changes (the resampled grid starts at the
    box, so interpolation and window tiling differ; the exact geometry is checked above
    with fixed-function stages)."""
    torch.set_num_threads(2)
    registry = ModelRegistry(BUNDLES)
    bundle = registry.get("liver_ct", "0.2.0")
    model = registry.load_network(bundle)
    spec = TASKS[TaskName.LIVER_CT]
    profile = replace(CT_DEFAULT, spacing_mm=(3.0, 3.0, 3.0), matrix=(44, 104, 104), seed=4242)
    phantom = generate_phantom("ct_abdomen", profile, 0)
    one = segment(model, spec, phantom.image, phantom.affine_lps, device="cpu").mask
    settings = RefinerSettings(spec.target_spacing_mm, spec.patch_size, 20.0)
    two = segment_cascade(
        CascadeNetwork(model, model), spec, settings, phantom.image, phantom.affine_lps
    ).mask
    assert (one == 2).any()
    for label, bound in ((1, 0.98), (2, 0.85)):
        assert dice(two == label, one == label) > bound, label


# -- refiner training data -------------------------------------------------------------------


def test_refiner_cases_are_cut_to_jittered_boxes_around_the_truth() -> None:
    from models.cascade_training import refiner_cases
    from models.training import TrainingCase

    image, truth = organ_image()
    affine = np.diag([2.0, 1.0, 1.0, 1.0])
    exact = region_of_interest(truth, affine, 4.0)
    assert exact == (slice(1, 11), slice(2, 21), slice(4, 24))
    empty = TrainingCase(image, np.zeros_like(truth), affine)
    settings = RefinerSettings((1.0, 1.0, 1.0), (16, 16, 16), 4.0)
    cut = refiner_cases([TrainingCase(image, truth, affine), empty] * 3, settings, seed=5)
    assert len(cut) == 3  # the empty cases give nothing
    shapes = {c.labels.shape for c in cut}
    assert len(shapes) > 1  # the margins were jittered
    for case in cut:
        assert int((case.labels != 0).sum()) == int((truth != 0).sum())  # nothing cut off
        # the crop's voxel (0,0,0) is where the box starts in the full image
        start = np.linalg.solve(affine, case.affine[:, 3])[:3]
        box = tuple(
            slice(round(s), round(s) + n) for s, n in zip(start, case.labels.shape, strict=True)
        )
        np.testing.assert_array_equal(case.labels, truth[box])
        np.testing.assert_array_equal(case.image, image[box])
    again = refiner_cases([TrainingCase(image, truth, affine)] * 3, settings, seed=5)
    assert [c.labels.shape for c in again] == [c.labels.shape for c in cut]


def test_cascade_state_dict_splits_back_into_its_stages() -> None:
    from models.cascade_training import cascade_state_dict, split_state_dict
    from models.errors import InputError

    locator, refiner = nn.Linear(2, 3).state_dict(), nn.Conv1d(1, 2, 3).state_dict()
    joined = cascade_state_dict(locator, refiner)
    assert set(joined) == {"locator.weight", "locator.bias", "refiner.weight", "refiner.bias"}
    back_locator, back_refiner = split_state_dict(joined)
    assert all(torch.equal(back_locator[k], locator[k]) for k in locator)
    assert all(torch.equal(back_refiner[k], refiner[k]) for k in refiner)
    with pytest.raises(InputError, match="not a weight"):
        split_state_dict({"other.weight": torch.zeros(1)})
