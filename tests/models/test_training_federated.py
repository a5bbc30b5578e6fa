"""Local training for the federated strategies: FedProx proximal term, FedGS step scaling."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.lesion_scaling import (
    LesionScalingError,
    batch_step_scale,
    small_lesion_term,
    step_scale_from_counts,
)
from models.networks import NetworkConfig, build_network
from models.phantoms import MR_DEFAULT, generate_phantom
from models.tasks import get_task
from models.training import (
    SmallLesionScaling,
    StepInfo,
    TrainConfig,
    TrainingCase,
    TrainingError,
    TrainReport,
    fine_tune,
    train,
)

TINY_NET = NetworkConfig(filters=(4, 8), num_res_units=0)
MR_SPEC = replace(get_task("glioma_mr"), target_spacing_mm=(5.0, 5.0, 5.0), patch_size=(16, 16, 16))
CT_SPEC = replace(get_task("liver_ct"), target_spacing_mm=(2.0, 2.0, 2.0), patch_size=(16, 16, 16))
PROFILE = replace(MR_DEFAULT, spacing_mm=(6.0, 6.0, 6.0), matrix=(28, 36, 36), seed=4242)


@pytest.fixture(scope="module")
def mr_cases() -> list[TrainingCase]:
    out = []
    for k in range(2):
        p = generate_phantom("mr_t1c", PROFILE, k)
        out.append(TrainingCase(p.image, p.labels, p.affine_lps))
    return out


def _liver_case(tumour: tuple[slice, slice, slice]) -> TrainingCase:
    """A 24^3 block of liver at 2 mm with one tumour at ``tumour``."""
    labels = np.zeros((24, 24, 24), dtype=np.uint8)
    labels[2:22, 2:22, 2:22] = 1
    labels[tumour] = 2
    image = np.where(labels > 0, 60.0, -500.0).astype(np.float32)
    image[labels == 2] = 150.0
    return TrainingCase(image, labels, np.diag([2.0, 2.0, 2.0, 1.0]))


SMALL_TUMOUR = (slice(11, 12), slice(11, 12), slice(11, 13))  # 2 voxels of 4096 in a patch
LARGE_TUMOUR = (slice(6, 14), slice(6, 14), slice(6, 14))  # 512 voxels


def _tumour_config(**kwargs: object) -> TrainConfig:
    base = TrainConfig(
        steps=1, batch_size=2, lr=1e-2, seed=5, class_ratios=(0.0, 0.0, 1.0), intensity_jitter=0.0
    )
    return replace(base, **kwargs)  # type: ignore[arg-type]


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- FedGS: the factor p -------------------------------------------------------------


def test_step_scale_matches_the_formula_by_hand() -> None:
    # patch of 16^3 = 4096 voxels, one item with a 2-voxel lesion, one without:
    # p = 1 + (2/2) * tanh((log_1000(4096 / 2))^2) = 1 + tanh(1.10377^2) = 1.83916
    p = step_scale_from_counts([4096, 4096], [2, 0], threshold=0.001, base=1000.0)
    assert p == pytest.approx(1.8391588, abs=1e-6)
    assert p == pytest.approx(1 + math.tanh((math.log(2048) / math.log(1000)) ** 2))
    # both items small: the terms add up
    both = step_scale_from_counts([4096, 4096], [2, 2], threshold=0.001, base=1000.0)
    assert both == pytest.approx(1 + 2 * (p - 1))
    # no lesion, or only lesions above the threshold: p == 1 exactly
    assert step_scale_from_counts([4096, 4096], [0, 0], threshold=0.001, base=1000.0) == 1.0
    assert step_scale_from_counts([4096, 4096], [512, 0], threshold=0.001, base=1000.0) == 1.0
    # "small" is inclusive at the threshold (the reference: A_total / A_lesion >= 1000)
    assert small_lesion_term(1000, 1, threshold=0.001, base=1000.0) == pytest.approx(math.tanh(1.0))
    assert small_lesion_term(1000, 2, threshold=0.001, base=1000.0) == 0.0


def test_batch_step_scale_counts_lesion_labels_only() -> None:
    labels = torch.zeros((2, 1, 16, 16, 16), dtype=torch.long)
    labels[0, 0, :8] = 1  # liver: not a lesion
    labels[0, 0, 3, 3, 3:5] = 2  # 2 tumour voxels
    settings = SmallLesionScaling()
    assert settings.lesion_labels(CT_SPEC) == (2,)
    assert batch_step_scale(labels, (2,), settings) == pytest.approx(1.8391588, abs=1e-6)
    assert batch_step_scale(torch.zeros_like(labels), (2,), settings) == 1.0
    labels[1, 0, :4] = 2  # a large tumour in the other item does not count
    assert batch_step_scale(labels, (2,), settings) == pytest.approx(1.8391588, abs=1e-6)


def test_scaling_settings_are_validated() -> None:
    for bad in ({"threshold": 0.0}, {"threshold": 1.5}, {"base": 1.0}, {"labels": (0,)}):
        with pytest.raises(LesionScalingError):
            SmallLesionScaling(**bad)
    with pytest.raises(LesionScalingError, match="not labels of task"):
        SmallLesionScaling(labels=(7,)).lesion_labels(CT_SPEC)


# --- FedGS: in training --------------------------------------------------------------


def _one_step(
    case: TrainingCase, config: TrainConfig
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], TrainReport]:
    torch.manual_seed(0)
    model = build_network(CT_SPEC, TINY_NET)
    start = _state(model)
    report = train(model, CT_SPEC, [case], config)
    return start, _state(model), report


def _change(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor]) -> float:
    return float(sum(float((end[k].float() - start[k].float()).norm() ** 2) for k in start)) ** 0.5


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_small_lesion_batches_are_scaled_and_large_ones_are_not(optimizer: str) -> None:
    small, large = _liver_case(SMALL_TUMOUR), _liver_case(LARGE_TUMOUR)
    plain = _tumour_config(optimizer=optimizer)
    # every patch is centred on the 2-voxel tumour: both items small
    expected = 1 + 2 * math.tanh((math.log(4096 / 2) / math.log(1000)) ** 2)

    start, unscaled_end, unscaled = _one_step(small, plain)
    reference_mode = replace(plain, small_lesion_scaling=SmallLesionScaling())
    _, ref_end, ref = _one_step(small, reference_mode)
    local_mode = replace(plain, small_lesion_scaling=SmallLesionScaling(scale_local_step=True))
    _, local_end, local = _one_step(small, local_mode)

    assert unscaled.step_scales == (1.0,) and unscaled.scaled_update is None
    assert ref.step_scales == pytest.approx((expected,))
    assert local.step_scales == pytest.approx((expected,))

    # the reference code: the local step is the plain one, the accumulated update is p x it
    assert all(torch.equal(ref_end[k], unscaled_end[k]) for k in start)
    update = ref.scaled_update
    assert update is not None
    for name, delta in update.items():
        torch.testing.assert_close(
            delta, expected * (unscaled_end[name] - start[name]), rtol=1e-5, atol=1e-7
        )
    # scale_local_step: the weight change of the scaled step is p times the plain one
    plain_change, scaled_change = _change(start, unscaled_end), _change(start, local_end)
    assert scaled_change > plain_change > 0
    assert scaled_change / plain_change == pytest.approx(expected, rel=1e-3)

    # a large tumour is not small: p == 1 and the update is the plain weight change
    start, end, big = _one_step(large, reference_mode)
    assert big.step_scales == (1.0,)
    assert big.scaled_update is not None
    for name, delta in big.scaled_update.items():
        torch.testing.assert_close(delta, end[name] - start[name], rtol=0, atol=1e-7)


def test_step_scales_are_reported_per_step(mr_cases: list[TrainingCase]) -> None:
    torch.manual_seed(0)
    model = build_network(MR_SPEC, TINY_NET)
    seen: list[StepInfo] = []
    # a generous threshold so that the phantom's glioma patches count as small
    config = TrainConfig(
        steps=12,
        batch_size=2,
        lr=1e-2,
        seed=3,
        small_lesion_scaling=SmallLesionScaling(threshold=0.5),
    )
    report = train(model, MR_SPEC, mr_cases, config, on_step=seen.append)
    assert len(report.step_scales) == 12
    assert [s.scale for s in seen] == list(report.step_scales)
    assert all(1.0 <= p <= 3.0 for p in report.step_scales)
    assert any(p > 1.0 for p in report.step_scales)


# --- FedProx ---------------------------------------------------------------------------


def test_proximal_term_keeps_weights_closer_to_the_reference(
    mr_cases: list[TrainingCase],
) -> None:
    torch.manual_seed(0)
    initial = _state(build_network(MR_SPEC, TINY_NET))
    distances = {}
    for mu in (0.0, 1.0):
        model = build_network(MR_SPEC, TINY_NET)
        config = TrainConfig(steps=20, batch_size=2, lr=1e-2, seed=3, prox_mu=mu)
        fine_tune(model, MR_SPEC, mr_cases, config, initial_state=initial)
        distances[mu] = _change(initial, _state(model))
    assert 0 < distances[1.0] < distances[0.0]


def test_proximal_reference_must_fit_the_network(mr_cases: list[TrainingCase]) -> None:
    model = build_network(MR_SPEC, TINY_NET)
    config = TrainConfig(steps=1, prox_mu=0.1)
    with pytest.raises(TrainingError, match="none of the network"):
        train(model, MR_SPEC, mr_cases, config, reference_state={"nope": torch.zeros(1)})
    with pytest.raises(TrainingError, match="prox_mu"):
        TrainConfig(prox_mu=-1.0)
    with pytest.raises(TrainingError, match="optimizer must be one of adamw, sgd"):
        TrainConfig(optimizer="lbfgs")  # type: ignore[arg-type]
