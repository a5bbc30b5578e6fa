"""End-to-end inference on the input grid (models.inference)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from models.errors import InferenceError, InputError, InputTooLargeError, ModelsError
from models.inference import (
    SegmentationResult,
    amp_dtype_for,
    argmax_channels,
    check_working_grid,
    resolve_device,
    segment,
    working_voxels,
)
from models.networks import NetworkConfig, build_network
from models.tasks import CTWindow, PostprocessSpec, TaskName, TaskSpec, get_task
from models.transforms import IMAGE_KEY, build_preprocess, make_sample
from tests.models.test_geometry import make_affine, oblique_directions, ras_spacing
from tests.models.test_tasks import glioma_subregions_spec

SHAPE = (10, 22, 26)  # (slice, row, column)
STAGES = {"preprocess", "inference", "invert", "postprocess", "total"}

NON_AXIAL = make_affine(
    directions=oblique_directions(30, 20), pixel_spacing=(0.9, 0.7), reverse_slices=True
)


class ThresholdNet(nn.Module):
    """A 'network' whose output is a fixed function of the CT-scaled intensity:
    class 1 for 0.3 <= x < 0.8, class 2 for x >= 0.8, background otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        one = ((x >= 0.3) & (x < 0.8)).float()
        two = (x >= 0.8).float()
        return torch.cat([1.0 - one - two, one, two], dim=1) * 10.0


class BrightestChannelNet(nn.Module):
    """Class k (1..3) where channel k-1 is bright (z > 1), background otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.ones_like(x[:, :1]), x[:, :3]], dim=1)


def liver_spec(target_spacing: tuple[float, float, float], postprocess: bool = False) -> TaskSpec:
    base = get_task(TaskName.LIVER_CT)
    return dataclasses.replace(
        base,
        target_spacing_mm=target_spacing,
        patch_size=(16, 16, 16),
        intensity=CTWindow(-100.0, 250.0),
        postprocess=base.postprocess if postprocess else PostprocessSpec(),
    )


def ct_phantom() -> tuple[np.ndarray, np.ndarray]:
    """HU image and its truth: liver 100 HU (scaled 0.57 -> class 1), tumour 230 HU
    (0.94 -> class 2), everything else -500 HU."""
    truth = np.zeros(SHAPE, dtype=np.uint8)
    truth[1:9, 3:19, 4:22] = 1
    truth[3:6, 8:13, 9:15] = 2
    truth[9, 21, 25] = 1  # a far corner voxel: only exact geometry gets it right
    image = np.select([truth == 1, truth == 2], [100.0, 230.0], -500.0).astype(np.float32)
    return image, truth


def test_fixed_function_model_gives_the_exact_mask_on_a_non_axial_grid() -> None:
    image, truth = ct_phantom()
    spec = liver_spec(ras_spacing(NON_AXIAL))
    result = segment(ThresholdNet(), spec, image, NON_AXIAL, device="cpu")
    assert isinstance(result, SegmentationResult)
    assert result.mask.dtype == np.uint8
    assert result.mask.shape == SHAPE
    np.testing.assert_array_equal(result.mask, truth)
    assert set(result.timings_s) == STAGES
    assert result.device == "cpu" and result.amp_dtype is None


def sphere_phantom() -> tuple[np.ndarray, np.ndarray]:
    """On NON_AXIAL's (20, 40, 44) grid: a 'liver' ball of 9 mm radius holding a 4 mm
    'tumour' ball, plus one stray liver-bright voxel in a far corner."""
    shape = (20, 40, 44)
    spacing = np.array([2.0, 0.9, 0.7])
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    mm = index * spacing
    centre = np.array([19.3, 18.1, 15.2])
    truth = np.zeros(shape, dtype=np.uint8)
    truth[np.linalg.norm(mm - centre, axis=-1) < 9.0] = 1
    truth[np.linalg.norm(mm - centre - 1.0, axis=-1) < 4.0] = 2
    truth[-1, -1, -1] = 1
    image = np.select([truth == 1, truth == 2], [100.0, 230.0], -500.0).astype(np.float32)
    return image, truth


def test_fixed_function_model_through_resampling_and_postprocessing() -> None:
    image, truth = sphere_phantom()
    spec = liver_spec((1.2, 1.2, 1.2), postprocess=True)
    result = segment(ThresholdNet(), spec, image, NON_AXIAL, device="cpu", overlap=0.5)
    assert result.mask.shape == truth.shape
    assert result.mask[-1, -1, -1] == 0  # the stray voxel is not the largest liver component
    expected = truth.copy()
    expected[-1, -1, -1] = 0
    # Resampling blurs the boundaries (a voxel half liver, half air is 'air' to the
    # threshold model), but the structures stay where they are: the overlap is high and
    # the centres of mass agree to a fraction of a voxel (a half-voxel error in the
    # geometry would show up here).
    spacing = np.array([2.0, 0.9, 0.7])
    for label, min_dice in ((1, 0.85), (2, 0.7)):
        a, b = result.mask == label, expected == label
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > min_dice
        shift = (np.argwhere(a).mean(0) - np.argwhere(b).mean(0)) * spacing
        assert np.linalg.norm(shift) < 0.5  # mm


def test_crop_foreground_gives_the_same_mask() -> None:
    image, truth = ct_phantom()
    big = np.full((14, 40, 40), -1000.0, dtype=np.float32)
    big[2:12, 9:31, 7:33] = image
    big_truth = np.zeros(big.shape, dtype=np.uint8)
    big_truth[2:12, 9:31, 7:33] = truth
    spec = liver_spec(ras_spacing(NON_AXIAL))
    result = segment(ThresholdNet(), spec, big, NON_AXIAL, device="cpu", crop_foreground=True)
    np.testing.assert_array_equal(result.mask, big_truth)


def test_untrained_network_returns_a_mask_of_the_input_shape() -> None:
    torch.manual_seed(0)
    spec = liver_spec((1.5, 1.5, 2.0), postprocess=True)
    model = build_network(spec, NetworkConfig(filters=(4, 8, 16)))
    model.train()
    rng = np.random.default_rng(1)
    image = rng.normal(0, 300, SHAPE).astype(np.int16)
    result = segment(model, spec, image, make_affine(), device="cpu")
    assert result.mask.shape == SHAPE
    assert result.mask.dtype == np.uint8
    assert set(np.unique(result.mask)) <= {0, 1, 2}
    assert model.training, "segment() restores the model's mode"
    assert set(result.timings_s) == STAGES
    assert all(v >= 0 for v in result.timings_s.values())


def test_multi_channel_input() -> None:
    spec = dataclasses.replace(
        glioma_subregions_spec(),
        target_spacing_mm=ras_spacing(NON_AXIAL),
        patch_size=(16, 16, 16),
        postprocess=PostprocessSpec(),
    )
    image = np.full((4, *SHAPE), 100.0, dtype=np.float32)
    truth = np.zeros(SHAPE, dtype=np.uint8)
    for k, block in enumerate(
        [np.s_[1:3, 2:6, 2:6], np.s_[5:8, 10:14, 3:8], np.s_[2:5, 15:20, 18:24]], start=1
    ):
        image[k - 1][block] = 1000.0
        truth[block] = k
    result = segment(BrightestChannelNet(), spec, image, NON_AXIAL, device="cpu")
    np.testing.assert_array_equal(result.mask, truth)


def test_wrong_inputs_are_rejected() -> None:
    image, _ = ct_phantom()
    spec = liver_spec((1.0, 1.0, 1.0))
    with pytest.raises(InputError):
        segment(ThresholdNet(), spec, np.stack([image, image]), make_affine(), device="cpu")
    with pytest.raises(ModelsError):
        segment(ThresholdNet(), spec, image, np.eye(3), device="cpu")
    with pytest.raises(InputError):
        segment(ThresholdNet(), spec, image, make_affine(), device="cpu", overlap=1.0)


def test_a_model_with_the_wrong_number_of_classes_is_reported() -> None:
    image, _ = ct_phantom()
    spec = liver_spec((1.0, 1.0, 1.0))
    with pytest.raises(InferenceError, match="shape"):
        segment(nn.Conv3d(1, 2, 1), spec, image, make_affine(), device="cpu")


def test_device_selection() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert amp_dtype_for(torch.device("cpu")) is None
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == expected
    if not torch.cuda.is_available():
        with pytest.raises(InputError):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_with_amp_matches_cpu() -> None:
    image, truth = ct_phantom()
    spec = liver_spec(ras_spacing(NON_AXIAL))
    result = segment(ThresholdNet(), spec, image, NON_AXIAL, device="cuda")
    assert result.device.startswith("cuda")
    assert result.amp_dtype in {"bfloat16", "float16"}
    np.testing.assert_array_equal(result.mask, truth)
    torch.manual_seed(0)
    model = build_network(liver_spec((1.5, 1.5, 2.0)), NetworkConfig(filters=(8, 16, 32)))
    fp32 = segment(model, spec, image, NON_AXIAL, device="cpu").mask
    amp = segment(model, spec, image, NON_AXIAL, device="cuda").mask
    assert (fp32 == amp).mean() > 0.95


def test_argmax_channels_matches_torch() -> None:
    scores = torch.randn(4, 5, 6, 7)
    scores[2, 0, 0, 0] = scores[1, 0, 0, 0] = 9.0  # a tie goes to the first channel
    out = argmax_channels(scores)
    assert out.dtype == torch.uint8
    assert torch.equal(out.long(), torch.argmax(scores, dim=0))


class _MustNotRun(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the network ran on an input over the working-grid limit")


def test_the_working_grid_estimate_matches_the_resampled_size() -> None:
    spec = liver_spec((1.5, 1.5, 2.0))
    image, _ = ct_phantom()
    for affine in (make_affine(), NON_AXIAL):
        estimate = working_voxels(SHAPE, affine, spec.target_spacing_mm)
        data = build_preprocess(spec)(make_sample(image, affine, spec))
        resampled = int(np.prod(data[IMAGE_KEY].shape[1:]))
        assert abs(estimate - resampled) <= 0.35 * resampled  # rounding of each axis


def test_a_geometry_bomb_is_refused_before_anything_is_resampled() -> None:
    # Eight 96 x 96 slices with 40 mm pixels and slices: 3.8 m x 3.8 m x 32 cm, which the
    # liver task's 1.5 x 1.5 x 2 mm grid would make ~1.05 G voxels (4 GB as float32).
    bomb = make_affine(pixel_spacing=(40.0, 40.0), slice_spacing=40.0)
    image = np.zeros((8, 96, 96), dtype=np.float32)
    spec = get_task(TaskName.LIVER_CT)
    assert working_voxels(image.shape, bomb, spec.target_spacing_mm) > 10**9
    with pytest.raises(InputTooLargeError, match=r"over the limit of 134217728"):
        segment(_MustNotRun(), spec, image, bomb, device="cpu")
    with pytest.raises(InputTooLargeError, match=r"over the limit of 1000"):
        check_working_grid(SHAPE, make_affine(), spec, 1000)
    # A normal image is within the default.
    image, _ = ct_phantom()
    result = segment(ThresholdNet(), liver_spec((1.5, 1.5, 2.0)), image, make_affine())
    assert result.mask.shape == SHAPE


class _SlabMeanNet(nn.Module):
    """Class 1 where the mean over 5 slices of the input is above 0.5: a receptive field
    along the slice axis (S, the last axis after the RAS reorientation of an axial
    series), as every real network has."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.nn.functional.avg_pool3d(
            x, (1, 1, 5), stride=1, padding=(0, 0, 2), count_include_pad=False
        )
        one = (mean > 0.5).float()
        return torch.cat([1.0 - one, one, torch.zeros_like(one)], dim=1) * 10.0


def test_a_short_stack_is_padded_with_its_own_edges_not_zeros() -> None:
    # A liver-like block through every slice. Zero padding to the patch depth (16 here)
    # dilutes the network's z-neighbourhood at the ends of a 3-slice stack; padding by
    # replication gives the same mask as the full volume on the same slices.
    spec = liver_spec(ras_spacing(make_affine()))
    image = np.full((12, 22, 26), -500.0, dtype=np.float32)
    image[:, 4:18, 5:21] = 100.0
    full = segment(_SlabMeanNet(), spec, image, make_affine(), device="cpu").mask
    for lo, n in ((0, 3), (4, 3), (1, 10)):
        affine = make_affine()
        affine[:3, 3] = affine[:3, :3] @ np.array([lo, 0.0, 0.0]) + affine[:3, 3]
        cut = segment(_SlabMeanNet(), spec, image[lo : lo + n], affine, device="cpu").mask
        np.testing.assert_array_equal(cut, full[lo : lo + n])
    assert (full == 1).sum() == 12 * 14 * 16  # every slice, the full block
