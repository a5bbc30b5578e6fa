"""The demo weights shipped in ``models/bundles``: intact, honestly labelled, small, and
able to segment a fresh phantom (a behavioural check; the full 10-phantom evaluation is
``appliance train``'s own, recorded in each model card)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models.card_inference import segment_with_card
from models.evaluation import dice
from models.model_card import DEMO_INTENDED_USE
from models.phantoms import CT_DEFAULT, MR_BRATS, MR_DEFAULT, SiteProfile, generate_phantom
from models.regions import region_masks
from models.registry import ModelBundle, ModelRegistry
from models.tasks import TASKS, TaskName

BUNDLES = Path(__file__).resolve().parents[2] / "models" / "bundles"
#: every shipped bundle together (the project's limit)
MAX_TOTAL_BYTES = 40 * 1024 * 1024

# Fresh phantoms (seeds unused by training and evaluation) on coarse, small grids so the
# check stays fast on a 2-core CI machine.
SMALL_CT = replace(CT_DEFAULT, name="ci_ct", spacing_mm=(3.0, 3.0, 3.0), matrix=(44, 104, 104))
SMALL_MR = replace(MR_DEFAULT, name="ci_mr", spacing_mm=(3.0, 3.0, 3.0), matrix=(52, 72, 72))
PHANTOM_SEED = 31337
#: glioma_brats: the whole tumour of one fresh phantom (the small demo network's card
#: records all three regions on 10 phantoms)
WHOLE_TUMOUR_BOUND = 0.85


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry(BUNDLES)


def _bundle(registry: ModelRegistry, task: TaskName) -> ModelBundle:
    bundle = registry.latest(str(task))
    assert bundle is not None, f"no shipped bundle for {task} in {BUNDLES}"
    return bundle


@pytest.mark.parametrize("task", list(TASKS))
def test_bundle_verifies_and_says_synthetic(registry: ModelRegistry, task: TaskName) -> None:
    bundle = _bundle(registry, task)
    registry.verify(bundle)
    card = bundle.card
    assert card.task == str(task)
    assert card.intended_use == DEMO_INTENDED_USE
    assert "not for clinical use" in card.intended_use.lower()
    assert "synthetic" in card.intended_use.lower()
    assert "synthetic phantoms" in card.training_data.lower()
    assert card.metrics["cases"] >= 10
    assert [label.name for label in card.labels] == [x.name for x in TASKS[task].labels]


def test_total_size_is_small_enough_to_commit() -> None:
    total = sum(p.stat().st_size for p in BUNDLES.rglob("*") if p.is_file())
    assert 0 < total < MAX_TOTAL_BYTES


@pytest.mark.parametrize(
    ("task", "kind", "profile", "bounds"),
    [
        (TaskName.LIVER_CT, "ct_abdomen", SMALL_CT, {1: 0.85}),
        (TaskName.GLIOMA_MR, "mr_flair", SMALL_MR, {1: 0.7}),
    ],
)
def test_segments_a_fresh_phantom(
    registry: ModelRegistry,
    task: TaskName,
    kind: str,
    profile: SiteProfile,
    bounds: dict[int, float],
) -> None:
    torch.set_num_threads(2)
    phantom = generate_phantom(kind, replace(profile, seed=PHANTOM_SEED), 0)
    bundle = _bundle(registry, task)
    model = registry.load_network(bundle)
    result = segment_with_card(
        model, bundle.card, TASKS[task], phantom.image, phantom.affine_lps, device="cpu"
    )
    assert result.mask.shape == phantom.labels.shape
    for label, bound in bounds.items():
        score = dice(result.mask == label, phantom.labels == label)
        assert score > bound, f"{task} label {label}: Dice {score:.3f} <= {bound}"


def test_glioma_brats_card_records_the_dice_per_region(registry: ModelRegistry) -> None:
    card = _bundle(registry, TaskName.GLIOMA_BRATS).card
    assert card.preprocessing["output_activation"] == "sigmoid"
    assert card.architecture["kwargs"]["out_channels"] == 3
    for region in ("enhancing_tumour", "tumour_core", "whole_tumour"):
        assert 0.0 <= card.metrics[f"dice_{region}"] <= 1.0
        assert 0.0 <= card.metrics[f"dice_pooled_{region}"] <= 1.0
    bundle_bytes = sum(p.stat().st_size for p in (BUNDLES / "glioma_brats").rglob("*"))
    assert bundle_bytes < 3 * 1024 * 1024


def test_glioma_brats_segments_overlapping_regions(registry: ModelRegistry) -> None:
    torch.set_num_threads(2)
    spec = TASKS[TaskName.GLIOMA_BRATS]
    phantom = generate_phantom("mr_brats", replace(MR_BRATS, seed=PHANTOM_SEED), 0)
    bundle = _bundle(registry, TaskName.GLIOMA_BRATS)
    model = registry.load_network(bundle)
    result = segment_with_card(
        model, bundle.card, spec, phantom.image, phantom.affine_lps, device="cpu"
    )
    assert result.mask.dtype == bool
    assert result.mask.shape == (3, *phantom.labels.shape)
    enhancing, core, whole = result.mask
    assert not (enhancing & ~core).any() and not (core & ~whole).any()
    truth = region_masks(spec, phantom.labels)
    score = dice(whole, truth[2])
    assert score > WHOLE_TUMOUR_BOUND, f"whole tumour Dice {score:.3f} <= {WHOLE_TUMOUR_BOUND}"
