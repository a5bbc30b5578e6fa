"""Local training: checkpoints and resume, pausing for inference, augmentation, AMP."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from models.networks import NetworkConfig, build_network
from models.phantoms import MR_DEFAULT, generate_phantom
from models.precision import Precision, cpu_bf16_flags
from models.tasks import get_task
from models.training import (
    PreparedCase,
    SmallLesionScaling,
    StepInfo,
    TrainConfig,
    TrainingCase,
    TrainingError,
    TrainReport,
    _sample_patch,
    prepare_cases,
    thin_slab,
    train,
)

TINY_NET = NetworkConfig(filters=(4, 8), num_res_units=0)
SPEC = replace(get_task("glioma_mr"), target_spacing_mm=(5.0, 5.0, 5.0), patch_size=(16, 16, 16))
PROFILE = replace(MR_DEFAULT, spacing_mm=(6.0, 6.0, 6.0), matrix=(28, 36, 36), seed=4242)
#: everything that carries state across steps: AdamW moments, augmentation, FedGS
#: accumulated update, FedProx reference
FULL = TrainConfig(
    steps=10,
    batch_size=2,
    lr=1e-2,
    seed=11,
    augment=True,
    prox_mu=0.01,
    small_lesion_scaling=SmallLesionScaling(threshold=0.5),
)


@pytest.fixture(scope="module")
def cases() -> list[TrainingCase]:
    out = []
    for k in range(2):
        p = generate_phantom("mr_t1c", PROFILE, k)
        out.append(TrainingCase(p.image, p.labels, p.affine_lps))
    return out


@pytest.fixture(scope="module")
def prepared(cases: list[TrainingCase]) -> list[PreparedCase]:
    return prepare_cases(SPEC, cases)


def _run(
    prepared: list[PreparedCase], config: TrainConfig, **kwargs: object
) -> tuple[TrainReport, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = build_network(SPEC, TINY_NET)
    report = train(model, SPEC, [], config, prepared=prepared, **kwargs)  # type: ignore[arg-type]
    return report, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _Crash(RuntimeError):
    """Raised from on_step to simulate a crash in the middle of training."""


def test_augmented_training_is_deterministic(prepared: list[PreparedCase]) -> None:
    config = replace(FULL, prox_mu=0.0, small_lesion_scaling=None)
    first, state = _run(prepared, config)
    again, state_again = _run(prepared, config)
    assert first.losses == again.losses and _same(state, state_again)
    plain, plain_state = _run(prepared, replace(config, augment=False))
    assert plain.losses != first.losses and not _same(state, plain_state)


@pytest.mark.parametrize("thin_slab_probability", [0.0, 0.5])
def test_resume_after_a_crash_equals_an_uninterrupted_run(
    prepared: list[PreparedCase], tmp_path: Path, thin_slab_probability: float
) -> None:
    config = replace(FULL, thin_slab_probability=thin_slab_probability)
    reference, reference_state = _run(prepared, config)

    ckpt = tmp_path / "run" / "train.ckpt"

    def crash_at_7(info: StepInfo) -> None:
        if info.step == 7:
            raise _Crash("simulated crash")

    with pytest.raises(_Crash):
        _run(prepared, config, checkpoint=ckpt, checkpoint_every=3, on_step=crash_at_7)
    assert ckpt.exists() and not (tmp_path / "run" / "train.ckpt.tmp").exists()

    seen: list[int] = []
    this_run_s: list[float] = []

    def record(info: StepInfo) -> None:
        seen.append(info.step)
        this_run_s.append(info.elapsed_s)

    resumed, resumed_state = _run(
        prepared, config, checkpoint=ckpt, checkpoint_every=3, on_step=record
    )
    assert resumed.resumed_from_step == 6 and seen == [7, 8, 9, 10]
    # the step time of the crashed run's six checkpointed steps is carried over
    assert resumed.step_seconds_total > this_run_s[-1] > 0
    assert resumed.losses == reference.losses
    assert resumed.step_scales == reference.step_scales
    assert _same(resumed_state, reference_state)
    assert resumed.scaled_update is not None and reference.scaled_update is not None
    assert _same(dict(resumed.scaled_update), dict(reference.scaled_update))

    # the finished run's checkpoint gives back the same result without training again
    done, done_state = _run(prepared, config, checkpoint=ckpt, on_step=crash_at_7)
    assert done.resumed_from_step == 10 and done.losses == reference.losses
    assert done.step_seconds_total == pytest.approx(resumed.step_seconds_total)
    assert _same(done_state, reference_state)
    # thin slabs are part of the run's identity
    other = replace(config, thin_slab_probability=0.25 if thin_slab_probability else 0.5)
    with pytest.raises(TrainingError, match="another training run"):
        _run(prepared, other, checkpoint=ckpt)


class _BestSoFar:
    """A caller's extra checkpoint state: the highest loss seen so far and its step."""

    def __init__(self) -> None:
        self.step, self.loss = 0, -1.0

    def state_dict(self) -> dict[str, object]:
        return {"step": self.step, "loss": torch.tensor(self.loss)}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        loss = state["loss"]
        assert isinstance(loss, torch.Tensor)
        self.step, self.loss = int(state["step"]), float(loss)  # type: ignore[call-overload]

    def __call__(self, info: StepInfo) -> None:
        if info.loss > self.loss:
            self.step, self.loss = info.step, info.loss


def test_extra_state_is_saved_with_each_checkpoint_and_restored(
    prepared: list[PreparedCase], tmp_path: Path
) -> None:
    config = replace(FULL, steps=6)
    whole = _BestSoFar()
    _run(prepared, config, on_step=whole)
    ckpt = tmp_path / "extra.ckpt"
    first = _BestSoFar()

    def crash_at_5(info: StepInfo) -> None:
        first(info)
        if info.step == 5:
            raise _Crash("simulated crash")

    with pytest.raises(_Crash):
        _run(
            prepared,
            config,
            checkpoint=ckpt,
            checkpoint_every=2,
            on_step=crash_at_5,
            extra_state=first,
        )
    resumed = _BestSoFar()
    _run(
        prepared, config, checkpoint=ckpt, checkpoint_every=2, on_step=resumed, extra_state=resumed
    )
    assert (resumed.step, resumed.loss) == (whole.step, whole.loss)


def test_thin_slab_keeps_a_slab_and_replicates_its_edges() -> None:
    column = torch.arange(16, dtype=torch.uint8).reshape(1, 1, 1, 16)
    slab = thin_slab(column, 5, 4)  # slices 5..8, 12 copies around, 6 before and 6 after
    assert slab.dtype == torch.uint8
    assert slab.flatten().tolist() == [5] * 7 + [6, 7] + [8] * 7
    assert thin_slab(column, 0, 16).flatten().tolist() == list(range(16))
    assert thin_slab(column, 13, 3).flatten().tolist() == [13] * 7 + [14] + [15] * 8
    with pytest.raises(TrainingError, match="does not fit"):
        thin_slab(column, 14, 3)


def _runs(t: torch.Tensor) -> list[int]:
    """Lengths of the runs of identical consecutive slices along the last axis."""
    lengths = [1]
    for k in range(1, t.shape[-1]):
        if torch.equal(t[..., k], t[..., k - 1]):
            lengths[-1] += 1
        else:
            lengths.append(1)
    return lengths


def test_thin_slab_patches_look_like_a_padded_short_stack(prepared: list[PreparedCase]) -> None:
    patch = SPEC.patch_size
    ratios = np.full(SPEC.training_classes, 1.0 / SPEC.training_classes)
    depths = set()
    for draw in range(12):
        rng = np.random.default_rng([3, draw])
        image, label = _sample_patch(prepared[draw % 2], ratios, patch, rng, 0.0, 1.0)
        runs = _runs(image)
        depth = len(runs)  # the noisy phantom has no two equal slices of its own
        assert 3 <= depth <= patch[2]
        # only the end slices repeat, as MONAI's replicate padding of a centred stack
        assert runs[1:-1] == [1] * (depth - 2)
        assert runs[0] - 1 == (patch[2] - depth) // 2
        assert runs[0] + runs[-1] - 2 == patch[2] - depth
        # the label is replicated the same way: equal wherever the image is
        ends = [(0, runs[0]), (patch[2] - runs[-1], patch[2])]
        for lo, hi in ends:
            for k in range(lo + 1, hi):
                assert torch.equal(label[..., k], label[..., lo])
        depths.add(depth)
        # the same draw gives the same patch
        again = _sample_patch(
            prepared[draw % 2], ratios, patch, np.random.default_rng([3, draw]), 0.0, 1.0
        )
        assert torch.equal(again[0], image) and torch.equal(again[1], label)
    assert len(depths) > 1
    # probability 0 draws nothing more than before: the same patch as without the option
    plain = _sample_patch(prepared[0], ratios, patch, np.random.default_rng(5), 0.1)
    zero = _sample_patch(prepared[0], ratios, patch, np.random.default_rng(5), 0.1, 0.0)
    assert torch.equal(plain[0], zero[0]) and torch.equal(plain[1], zero[1])


def test_thin_slab_training_is_deterministic_and_differs(prepared: list[PreparedCase]) -> None:
    config = replace(FULL, steps=4, prox_mu=0.0, small_lesion_scaling=None)
    slabs = replace(config, thin_slab_probability=1.0)
    first, state = _run(prepared, slabs)
    again, state_again = _run(prepared, slabs)
    assert first.losses == again.losses and _same(state, state_again)
    plain, _ = _run(prepared, config)
    assert plain.losses != first.losses
    with pytest.raises(TrainingError, match="thin_slab_probability must be in"):
        TrainConfig(thin_slab_probability=1.5)
    with pytest.raises(TrainingError, match="patch depth of at least 3"):
        _run(prepared, replace(slabs, patch_size=(16, 16, 2)))


def test_a_checkpoint_is_not_resumed_by_another_run(
    prepared: list[PreparedCase], tmp_path: Path
) -> None:
    ckpt = tmp_path / "train.ckpt"
    config = replace(FULL, steps=2)
    _run(prepared, config, checkpoint=ckpt)
    with pytest.raises(TrainingError, match="another training run"):
        _run(prepared, replace(config, seed=12), checkpoint=ckpt)
    torch.manual_seed(1)  # other starting weights
    with pytest.raises(TrainingError, match="another training run"):
        train(build_network(SPEC, TINY_NET), SPEC, [], config, prepared=prepared, checkpoint=ckpt)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="cannot read the training checkpoint"):
        _run(prepared, config, checkpoint=ckpt)
    with pytest.raises(TrainingError, match="checkpoint_every"):
        _run(prepared, config, checkpoint=ckpt, checkpoint_every=0)


def test_pausing_between_steps_changes_nothing_but_the_time(
    prepared: list[PreparedCase],
) -> None:
    config = replace(FULL, steps=6)
    reference, reference_state = _run(prepared, config)
    assert reference.paused_seconds == 0.0

    # a job is waiting for the first three polls
    polls: list[int] = []

    def busy_at_first() -> bool:
        polls.append(1)
        return len(polls) <= 3

    paused, paused_state = _run(prepared, config, should_pause=busy_at_first, pause_poll_s=0.01)
    assert paused.paused_seconds > 0 and len(polls) == 3 + 6  # 3 busy polls + one per step
    assert paused.losses == reference.losses and _same(paused_state, reference_state)

    # a job arrives after step 3 and another thread marks it done a little later
    queue_busy = threading.Event()
    timer = threading.Timer(0.2, queue_busy.clear)
    steps_seen: list[int] = []

    def job_arrives(info: StepInfo) -> None:
        steps_seen.append(info.step)
        if info.step == 3:
            queue_busy.set()
            timer.start()

    try:
        flipped, flipped_state = _run(
            prepared,
            config,
            should_pause=queue_busy.is_set,
            pause_poll_s=0.01,
            on_step=job_arrives,
        )
    finally:
        timer.cancel()
    assert steps_seen == [1, 2, 3, 4, 5, 6] and not queue_busy.is_set()
    assert flipped.paused_seconds > 0
    assert flipped.losses == reference.losses and _same(flipped_state, reference_state)


@pytest.mark.skipif(bool(cpu_bf16_flags()), reason="this CPU has native bf16")
def test_amp_on_a_cpu_without_native_bf16_trains_in_fp32(prepared: list[PreparedCase]) -> None:
    config = replace(FULL, steps=3, device="cpu")
    with_amp, state = _run(prepared, replace(config, amp=True))
    without, state_without = _run(prepared, replace(config, amp=False))
    assert with_amp.losses == without.losses and _same(state, state_without)
    assert (
        with_amp.precision == Precision.FP32 and "without native bf16" in with_amp.precision_reason
    )
    assert without.precision == Precision.FP32
    with pytest.raises(TrainingError, match="no native bf16"):
        _run(prepared, replace(config, precision=Precision.BF16))
    with pytest.raises(TrainingError, match="precision must be one of auto, fp32, bf16"):
        TrainConfig(precision="fp16")  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (AMP runs on CUDA)")
def test_amp_training_on_cuda(prepared: list[PreparedCase], tmp_path: Path) -> None:
    config = replace(FULL, steps=6, device="cuda", amp=True)
    report, state = _run(prepared, config)
    assert report.device.startswith("cuda") and len(report.losses) == 6
    assert all(torch.isfinite(torch.tensor(report.losses)))
    torch.manual_seed(0)
    initial = build_network(SPEC, TINY_NET).state_dict()
    assert not _same({k: v.cpu() for k, v in state.items()}, dict(initial))
    # checkpoint and resume on CUDA (grad scaler / CUDA RNG state round-trip)
    ckpt = tmp_path / "cuda.ckpt"

    def crash(info: StepInfo) -> None:
        if info.step == 4:
            raise _Crash("simulated crash")

    with pytest.raises(_Crash):
        _run(prepared, config, checkpoint=ckpt, checkpoint_every=2, on_step=crash)
    resumed, _ = _run(prepared, config, checkpoint=ckpt, checkpoint_every=2)
    assert resumed.resumed_from_step == 4 and len(resumed.losses) == 6
