"""Short series get the mask the whole volume gets (issue 16).

A CT series of 3 or 10 slices (a partial acquisition, a thick-slab reconstruction, the
dcmqi 3-slice example) must not be segmented worse than the same slices are inside the
whole volume: inference pads a short stack by replication, never with zeros, and the
shipped models were trained on thin slabs too. Checked with the newest shipped liver
model through the clinical inference path (:func:`models.card_inference.segment_with_card`,
both stages of a two-stage model), on slabs cut through the middle of the liver of a fresh
phantom (a seed no training or evaluation set uses).

"Within 1 %": the multi-label Dice between the slab's mask and the whole volume's mask on
the same slices (voxels that carry the same non-zero label, against the foreground of
both) is at least 0.99, i.e. at most about 1 % of the foreground is labelled differently.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.card_inference import segment_with_card
from models.demo_weights import named_profile
from models.model_card import ModelCard
from models.phantoms import generate_phantom
from models.registry import ModelRegistry
from models.tasks import TASKS, TaskName

BUNDLES = Path(__file__).resolve().parents[2] / "models" / "bundles"
PHANTOM_SEED = 31415
AGREEMENT = 0.99


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Multi-label Dice of two label maps (1.0 when both are empty)."""
    both = int(np.count_nonzero((a == b) & (a > 0)))
    total = int(np.count_nonzero(a > 0)) + int(np.count_nonzero(b > 0))
    return 1.0 if total == 0 else 2.0 * both / total


def test_agreement_counts_a_different_label_as_a_disagreement() -> None:
    a = np.array([[[0, 1, 1, 2]]])
    assert agreement(a, a) == 1.0
    assert agreement(a, np.array([[[0, 1, 1, 1]]])) == pytest.approx(2 * 2 / 6)
    assert agreement(np.zeros((1, 1, 3)), np.zeros((1, 1, 3))) == 1.0


@dataclass(frozen=True)
class WholeVolume:
    model: torch.nn.Module
    card: ModelCard
    image: np.ndarray
    affine: np.ndarray
    mask: np.ndarray


@pytest.fixture(scope="module")
def whole_volume() -> WholeVolume:
    torch.set_num_threads(2)
    registry = ModelRegistry(BUNDLES)
    bundle = registry.latest(str(TaskName.LIVER_CT))
    assert bundle is not None, f"no shipped liver_ct bundle in {BUNDLES}"
    model = registry.load_network(bundle)
    profile = replace(named_profile(TaskName.LIVER_CT, "ct_fine"), seed=PHANTOM_SEED)
    phantom = generate_phantom("ct_abdomen", profile, 0)
    spec = TASKS[TaskName.LIVER_CT]
    full = segment_with_card(
        model, bundle.card, spec, phantom.image, phantom.affine_lps, device="cpu"
    ).mask
    return WholeVolume(model, bundle.card, phantom.image, phantom.affine_lps, full)


@pytest.mark.parametrize(
    "slices",
    [
        pytest.param(
            3,
            marks=pytest.mark.xfail(
                strict=True,
                reason=(
                    "missing: a liver model that holds 3-slice series to the whole volume's "
                    "mask (issue 16); liver_ct 0.3.0 gives a 3-slice series 0.982 "
                    "agreement (liver 0.985 plus ~130 false tumour voxels; 0.2.0: 0.958); "
                    "strict, so the test turns red when a model meets the 1 % target"
                ),
            ),
        ),
        10,
    ],
)
def test_a_short_series_gets_the_whole_volumes_mask(whole_volume: WholeVolume, slices: int) -> None:
    image, affine, full = whole_volume.image, whole_volume.affine, whole_volume.mask
    liver_slices = np.flatnonzero((full == 1).any(axis=(1, 2)))
    assert liver_slices.size > 2 * slices, "the whole-volume mask has too little liver"
    first = int(liver_slices[liver_slices.size // 2]) - slices // 2
    slab_affine = affine.copy()
    slab_affine[:3, 3] = affine[:3, :3] @ np.array([first, 0.0, 0.0]) + affine[:3, 3]
    slab = segment_with_card(
        whole_volume.model,
        whole_volume.card,
        TASKS[TaskName.LIVER_CT],
        image[first : first + slices],
        slab_affine,
        device="cpu",
    ).mask
    reference = full[first : first + slices]
    assert slab.shape == reference.shape
    assert np.count_nonzero(reference == 1) > 1000
    score = agreement(slab, reference)
    assert score >= AGREEMENT, (
        f"{slices}-slice series: mask agrees with the whole volume's on the same slices "
        f"with Dice {score:.4f} < {AGREEMENT}"
    )
