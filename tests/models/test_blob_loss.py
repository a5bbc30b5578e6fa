"""Blob loss (models.blob_loss): one Dice term per lesion instance."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceLoss

from models.blob_loss import blob_dice_loss, false_blob_loss
from models.errors import InputError
from models.tasks import get_task
from models.training import TrainConfig, TrainingError, _blob_classes


def _target() -> torch.Tensor:
    """(1, 1, 24, 24, 24): liver (1) everywhere in the middle, a large lesion (2) of
    8x8x8 voxels and a small one of 2x2x2."""
    y = torch.zeros(1, 1, 24, 24, 24, dtype=torch.long)
    y[..., 2:22, 2:22, 2:22] = 1
    y[..., 4:12, 4:12, 4:12] = 2
    y[..., 17:19, 17:19, 17:19] = 2
    return y


def _probabilities(tumour: torch.Tensor) -> torch.Tensor:
    """Three-class probabilities whose tumour channel is ``tumour`` (the rest background)."""
    p = torch.zeros(1, 3, *tumour.shape)
    p[0, 2] = tumour
    p[0, 0] = 1 - tumour
    return p


def test_a_perfect_prediction_costs_nothing_and_a_missed_small_lesion_costs_half() -> None:
    y = _target()
    perfect = _probabilities((y[0, 0] == 2).float())
    assert float(blob_dice_loss(perfect, y, (2,))) == pytest.approx(0.0, abs=1e-6)
    # find the large lesion only: the Dice over the whole class hardly moves (8 of 520
    # voxels), the blob loss is the mean of 0 (large) and 1 (small)
    large_only = (y[0, 0] == 2).float()
    large_only[16:20, 16:20, 16:20] = 0
    missed = _probabilities(large_only)
    assert float(blob_dice_loss(missed, y, (2,))) == pytest.approx(0.5, abs=1e-4)
    whole = DiceLoss()(missed[:, 2:], (y == 2).float())
    assert float(whole) < 0.01


def test_each_blob_ignores_the_other_blobs_but_not_false_positives() -> None:
    y = _target()
    tumour = (y[0, 0] == 2).float()
    tumour[0, 0, 0] = 1.0  # one false-positive voxel far from both lesions
    loss = float(blob_dice_loss(_probabilities(tumour), y, (2,)))
    small = 1 - 2 * 8 / (8 + 9)  # the small blob's Dice sees its 8 voxels and the stray one
    large = 1 - 2 * 512 / (512 + 513)
    assert loss == pytest.approx((small + large) / 2, abs=1e-4)


def test_no_lesion_adds_zero_with_a_gradient_and_lesions_give_gradients() -> None:
    logits = torch.zeros(2, 3, 8, 8, 8, requires_grad=True)
    empty = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    loss = blob_dice_loss(torch.softmax(logits, 1), empty, (2,))
    assert float(loss.detach()) == 0.0
    loss.backward()
    y = empty.clone()
    y[1, 0, 2:4, 2:4, 2:4] = 2
    logits.grad = None
    blob_dice_loss(torch.softmax(logits, 1), y, (2,)).backward()
    assert logits.grad is not None
    assert float(logits.grad[1, 2, 2:4, 2:4, 2:4].sum()) < 0  # raise the lesion's logit
    assert float(logits.grad[0].abs().sum()) == 0.0  # the lesion-free sample: no term


def test_bad_shapes_and_classes_are_refused() -> None:
    y = _target()
    p = _probabilities((y[0, 0] == 2).float())
    with pytest.raises(InputError, match="lesion class 3"):
        blob_dice_loss(p, y, (3,))
    with pytest.raises(InputError, match="differ"):
        blob_dice_loss(p, y[..., :20], (2,))
    with pytest.raises(InputError, match=r"\(B, 1, X, Y, Z\)"):
        blob_dice_loss(p, y[:, 0], (2,))


def test_the_config_checks_the_weight_and_the_task() -> None:
    with pytest.raises(TrainingError, match="blob_loss_weight"):
        TrainConfig(blob_loss_weight=-1.0)
    with pytest.raises(TrainingError, match="blob_loss_weight"):
        TrainConfig(blob_loss_weight=float("nan"))
    assert _blob_classes(get_task("liver_ct"), TrainConfig(blob_loss_weight=1.0)) == (2,)
    assert _blob_classes(get_task("liver_ct"), TrainConfig()) == ()
    with pytest.raises(TrainingError, match="softmax"):
        _blob_classes(get_task("glioma_brats"), TrainConfig(blob_loss_weight=1.0))
    assert _blob_classes(get_task("glioma_mr"), TrainConfig(blob_loss_weight=1.0)) == (1,)


def test_each_false_blob_costs_its_mean_probability_whatever_its_size() -> None:
    y = _target()
    # the two lesions found (no false blob: nothing to pay)
    tumour = (y[0, 0] == 2).float() * 0.9
    assert float(false_blob_loss(_probabilities(tumour), y, (2,))) == pytest.approx(0.0, abs=1e-7)
    # plus a 1-voxel false blob at 0.6 and a 4x4x4 one at 0.8 in the parenchyma, and one
    # that touches the large lesion (a lesion found too large: not a false blob)
    tumour[14, 4, 4] = 0.6
    tumour[4:8, 14:18, 4:8] = 0.8
    tumour[12, 4:12, 4:12] = 0.9
    p = _probabilities(tumour)
    p.requires_grad_(True)
    loss = false_blob_loss(p, y, (2,))
    assert float(loss) == pytest.approx((0.6 + 0.8) / 2)
    loss.backward()
    assert p.grad is not None
    grad = p.grad[0, 2]
    # each false blob's voxels share its half of the loss: the lone voxel gets 64 times
    # the gradient of a voxel of the 64-voxel blob; the lesions get none
    assert float(grad[14, 4, 4]) == pytest.approx(0.5)
    assert float(grad[5, 15, 5]) == pytest.approx(0.5 / 64)
    assert float(grad[y[0, 0] == 2].abs().sum()) == 0.0
    # nothing predicted: zero, still attached to the graph
    empty = _probabilities(torch.zeros(24, 24, 24)).requires_grad_(True)
    zero = false_blob_loss(empty, y, (2,))
    assert float(zero) == 0.0 and zero.requires_grad


def test_the_false_blob_weight_is_checked_and_needs_a_softmax_lesion_task() -> None:
    with pytest.raises(TrainingError, match="false_blob_weight must be a finite number >= 0"):
        TrainConfig(false_blob_weight=-0.5)
    assert _blob_classes(get_task("liver_ct"), TrainConfig(false_blob_weight=1.0)) == (2,)
    with pytest.raises(TrainingError, match=r"false_blob_weight: .* softmax"):
        _blob_classes(get_task("glioma_brats"), TrainConfig(false_blob_weight=1.0))
    with pytest.raises(InputError, match="false-blob loss: lesion class 3"):
        false_blob_loss(_probabilities(torch.zeros(24, 24, 24)), _target(), (3,))
