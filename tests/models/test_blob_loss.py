"""Blob loss (models.blob_loss): one Dice term per lesion instance."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceLoss

from models.blob_loss import blob_dice_loss
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
