"""The local training loop: a tiny run learns and is reproducible with a seed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from models.networks import NetworkConfig, build_network
from models.phantoms import MR_DEFAULT, generate_phantom
from models.tasks import get_task
from models.training import (
    StepInfo,
    TrainConfig,
    TrainingCase,
    TrainingError,
    fine_tune,
    prepare_cases,
    train,
)

TINY_NET = NetworkConfig(filters=(4, 8), num_res_units=0)
SPEC = replace(get_task("glioma_mr"), target_spacing_mm=(5.0, 5.0, 5.0), patch_size=(16, 16, 16))
PROFILE = replace(MR_DEFAULT, spacing_mm=(6.0, 6.0, 6.0), matrix=(28, 36, 36), seed=4242)


@pytest.fixture(scope="module")
def cases() -> list[TrainingCase]:
    out = []
    for k in range(2):
        p = generate_phantom("mr_t1c", PROFILE, k)
        out.append(TrainingCase(p.image, p.labels, p.affine_lps))
    return out


def _run(cases: list[TrainingCase], steps: int, seed: int = 3) -> tuple[list[float], dict]:
    torch.manual_seed(0)
    model = build_network(SPEC, TINY_NET)
    seen: list[StepInfo] = []
    config = TrainConfig(steps=steps, batch_size=2, lr=1e-2, seed=seed)
    report = train(model, SPEC, cases, config, on_step=seen.append)
    assert [s.step for s in seen] == list(range(1, steps + 1))
    assert report.steps == steps and report.patches == 2 * steps and report.cases == 2
    return list(report.losses), {k: v.clone() for k, v in model.state_dict().items()}


def test_tiny_training_decreases_loss_and_is_deterministic(cases: list[TrainingCase]) -> None:
    losses, state = _run(cases, 40)
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.05
    again, state_again = _run(cases, 40)
    assert again == losses
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    other, _ = _run(cases, 40, seed=4)
    assert other != losses


def test_prepare_once_and_fine_tune_from_a_state(cases: list[TrainingCase]) -> None:
    prepared = prepare_cases(SPEC, cases)
    assert len(prepared) == 2
    for item in prepared:
        assert item.image.shape[0] == 1
        assert all(s >= 16 for s in item.image.shape[1:])
        assert item.indices[1].size > 0  # glioma voxels to centre patches on
    model = build_network(SPEC, TINY_NET)
    start = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    report = fine_tune(
        model, SPEC, cases, TrainConfig(steps=0), initial_state=start, prepared=prepared
    )
    assert report.steps == 0
    assert all(torch.count_nonzero(v) == 0 for v in model.state_dict().values())
    with pytest.raises(TrainingError):
        fine_tune(model, SPEC, cases, TrainConfig(steps=1), initial_state={})


def test_config_validation() -> None:
    with pytest.raises(TrainingError):
        TrainConfig(batch_size=0)
    with pytest.raises(TrainingError):
        TrainConfig(pos_fraction=1.5)
    with pytest.raises(TrainingError):
        TrainConfig(class_ratios=(0.0, 0.0))
    with pytest.raises(TrainingError):
        train(build_network(SPEC, TINY_NET), SPEC, [], TrainConfig(steps=1))


def test_lesion_balanced_sampling_picks_small_lesions_as_often_as_large() -> None:
    """A 1-voxel tumour next to a 216-voxel one: voxel-uniform sampling centres almost
    every tumour patch on the large one; lesion-balanced sampling splits them evenly."""
    from models.training import _class_ratios, _sample_patch

    spec = replace(get_task("liver_ct"), target_spacing_mm=(2.0, 2.0, 2.0), patch_size=(16, 16, 16))
    labels = np.zeros((24, 24, 24), dtype=np.uint8)
    labels[2:22, 2:22, 2:22] = 1
    labels[4:10, 4:10, 4:10] = 2  # large tumour: 216 voxels at 100 HU
    labels[18, 18, 18] = 2  # small tumour: 1 voxel at 200 HU
    image = np.where(labels > 0, 50.0, -500.0).astype(np.float32)
    image[labels == 2] = 100.0
    image[18, 18, 18] = 200.0
    case = TrainingCase(image, labels, np.diag([2.0, 2.0, 2.0, 1.0]))
    ratios = _class_ratios(spec, TrainConfig(steps=0, class_ratios=(0.0, 0.0, 1.0)))
    for balance, low, high in ((False, 0.0, 0.03), (True, 0.4, 0.6)):
        (prepared,) = prepare_cases(spec, [case], balance_lesions=balance)
        rng = np.random.default_rng(0)
        small = 0
        for _ in range(400):
            patch, label = _sample_patch(prepared, ratios, (1, 1, 1), rng, 0.0)
            assert int(label.max()) == 2  # always centred on a tumour voxel
            small += int(float(patch.max()) > float(prepared.image.max()) - 1e-3)
        assert low <= small / 400 <= high, (balance, small)
