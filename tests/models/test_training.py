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
