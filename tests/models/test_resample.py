"""The inference engine (models.resample, body crop, batching) against the previous path
(``segment(..., reference=True)``: whole grid, MONAI Invertd on every channel)."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data.utils import dense_patch_slices
from torch import nn

from models.cascade import CascadeNetwork, segment_cascade
from models.cascade_spec import RefinerSettings
from models.errors import SpecError
from models.geometry import lps_to_ras
from models.inference import segment, window_aligned
from models.phantoms import CT_DEFAULT, CT_FINE, SiteProfile, generate_phantom
from models.registry import ModelRegistry
from models.resample import box_above, separable_map
from models.tasks import BodyCrop, CTWindow, PostprocessSpec, TaskName, TaskSpec, get_task
from tests.models.test_geometry import make_affine, oblique_directions

NON_AXIAL = make_affine(
    directions=oblique_directions(30, 20), pixel_spacing=(0.9, 0.7), reverse_slices=True
)
AXIAL = make_affine(pixel_spacing=(0.7, 0.7), slice_spacing=1.5)


class SmoothNet(nn.Module):
    """Logits that vary smoothly with the CT-scaled intensity: background below about
    0.35, class 1 above, class 2 above about 0.875; records the voxels it is shown."""

    def __init__(self) -> None:
        super().__init__()
        self.voxels_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.voxels_seen += int(x[:, 0].numel())
        return torch.cat([torch.zeros_like(x), 10.0 * (x - 0.35), 30.0 * (x - 0.7)], dim=1)


class SmoothRegionsNet(nn.Module):
    """Per region channel k, a sigmoid logit rising with channel k's intensity."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * (x[:, :3] - 0.5)


def smooth_ct(shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """Air around an ellipsoidal 'body' holding smooth blobs from -100 to 300 HU."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    body = (grid**2).sum(axis=0) < 0.6
    field = np.zeros(shape)
    for _ in range(4):
        centre = rng.uniform(-0.4, 0.4, size=3)[:, None, None, None]
        field += np.exp(-((grid - centre) ** 2).sum(axis=0) / rng.uniform(0.02, 0.08))
    image = np.where(body, -100.0 + 400.0 * field / field.max(), -1000.0)
    return image.astype(np.float32)


def ct_spec(*, body_crop: BodyCrop | None, patch: int = 16) -> TaskSpec:
    return dataclasses.replace(
        get_task(TaskName.LIVER_CT),
        target_spacing_mm=(1.5, 1.5, 2.0),
        patch_size=(patch, patch, patch),
        intensity=CTWindow(-100.0, 250.0),
        postprocess=PostprocessSpec(),
        body_crop=body_crop,
    )


# -- the geometry --------------------------------------------------------------------------


def test_separable_map_of_a_permuted_flipped_scaled_grid_and_none_when_rotated() -> None:
    grid = np.diag([1.5, 1.5, 2.0, 1.0])
    grid[:3, 3] = (10.0, -4.0, 7.0)
    # input axis 0 runs along grid axis 2 (flipped), input 1 along grid 0, input 2 along 1
    inp = np.zeros((4, 4))
    inp[3, 3] = 1.0
    inp[:3, 0] = (0.0, 0.0, -3.0)
    inp[:3, 1] = (0.75, 0.0, 0.0)
    inp[:3, 2] = (0.0, 0.5, 0.0)
    inp[:3, 3] = (13.0, -1.0, 91.0)
    maps = separable_map(inp, grid)
    assert maps is not None
    assert [m.input_axis for m in maps] == [1, 2, 0]
    rng = np.random.default_rng(0)
    for index in rng.uniform(0, 50, size=(5, 3)):
        world = inp @ np.append(index, 1.0)
        expected = np.linalg.solve(grid, world)[:3]
        got = [m.to_grid(np.array(index[m.input_axis])) for m in maps]
        np.testing.assert_allclose(got, expected, atol=1e-9)
    angle = np.deg2rad(10.0)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    assert separable_map(rotation @ inp, grid) is None


def test_the_preprocessed_grid_of_an_oblique_series_is_separable() -> None:
    """Spacingd keeps the grid's rotation, so even a double-oblique series takes the
    separable path (checked through the affines the pre-processing records)."""
    from models.transforms import IMAGE_KEY, build_preprocess, make_sample

    spec = ct_spec(body_crop=None)
    sample = make_sample(np.zeros((10, 22, 26), dtype=np.float32), NON_AXIAL, spec)
    data = build_preprocess(spec)(dict(sample))
    assert separable_map(sample[IMAGE_KEY].affine, data[IMAGE_KEY].affine) is not None
    assert separable_map(lps_to_ras(NON_AXIAL), np.diag([1.5, 1.5, 2.0, 1.0])) is None


# -- the engine against the previous path ------------------------------------------------


@pytest.mark.parametrize("affine", [AXIAL, NON_AXIAL], ids=["axial", "double-oblique"])
@pytest.mark.parametrize("crop_foreground", [False, True])
def test_separable_invert_gives_the_previous_paths_mask(
    affine: np.ndarray, crop_foreground: bool
) -> None:
    image = smooth_ct((18, 40, 44), seed=1)
    spec = ct_spec(body_crop=None)
    previous = segment(
        SmoothNet(),
        spec,
        image,
        affine,
        postprocess=False,
        crop_foreground=crop_foreground,
        reference=True,
    ).mask
    engine = segment(
        SmoothNet(), spec, image, affine, postprocess=False, crop_foreground=crop_foreground
    ).mask
    assert {1, 2} <= set(np.unique(previous).tolist())
    np.testing.assert_array_equal(engine, previous)


def test_separable_invert_of_overlapping_regions_gives_the_previous_paths_mask() -> None:
    spec = get_task(TaskName.GLIOMA_BRATS)
    image = np.stack([smooth_ct((16, 30, 34), seed=s) + 1000.0 for s in range(4)])
    previous = segment(SmoothRegionsNet(), spec, image, AXIAL, reference=True, device="cpu").mask
    engine = segment(SmoothRegionsNet(), spec, image, AXIAL, device="cpu").mask
    assert previous.dtype == bool and previous.any() and not previous.all()
    np.testing.assert_array_equal(engine, previous)


def test_nothing_found_gives_an_empty_mask_on_the_input_grid() -> None:
    image = np.full((10, 20, 24), -1000.0, dtype=np.float32)
    result = segment(SmoothNet(), ct_spec(body_crop=BodyCrop()), image, AXIAL, device="cpu")
    assert result.mask.shape == image.shape and not result.mask.any()


# -- body crop ------------------------------------------------------------------------------


def _window_starts(size: int, roi: int, overlap: float) -> set[int]:
    """Where MONAI's sliding windows start along an axis of ``size`` voxels."""
    step = roi if size == roi else max(int(roi * (1 - overlap)), 1)
    return {s[0].start for s in dense_patch_slices((size,), (roi,), (step,))}


@pytest.mark.parametrize("overlap", [0.25, 0.5, 0.0])
def test_window_aligned_crops_run_exactly_the_whole_axis_windows_over_the_box(
    overlap: float,
) -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        roi = int(rng.integers(4, 40))
        size = int(rng.integers(1, 200))
        lo = int(rng.integers(0, size))
        hi = int(rng.integers(lo + 1, size + 1))
        start, stop = window_aligned(lo, hi, size, roi, overlap)
        assert 0 <= start <= lo and hi <= stop <= size
        if size <= roi:
            assert (start, stop) == (0, size)
            continue
        assert stop - start >= roi

        crop_starts = {start + s for s in _window_starts(stop - start, roi, overlap)}
        whole_starts = _window_starts(size, roi, overlap)
        # exactly the whole axis's windows that reach into [lo, hi): same patches, same blend
        assert crop_starts == {w for w in whole_starts if w < hi and w + roi > lo}


def test_body_crop_runs_fewer_windows_and_keeps_the_mask() -> None:
    body = smooth_ct((18, 40, 44), seed=2)
    image = np.full((30, 170, 176), -1000.0, dtype=np.float32)
    image[6:24, 65:105, 66:110] = body
    cropped_net, whole_net = SmoothNet(), SmoothNet()
    cropped = segment(cropped_net, ct_spec(body_crop=BodyCrop()), image, AXIAL, device="cpu")
    whole = segment(whole_net, ct_spec(body_crop=None), image, AXIAL, device="cpu", reference=True)
    assert cropped_net.voxels_seen < 0.6 * whole_net.voxels_seen
    np.testing.assert_array_equal(cropped.mask, whole.mask)
    body_voxels = np.argwhere(image > -500.0)
    expected = tuple(
        zip(body_voxels.min(0).tolist(), (body_voxels.max(0) + 1).tolist(), strict=True)
    )
    assert box_above(image[None], -500.0) == expected
    assert box_above(np.full((1, 4, 4, 4), -1000.0), -500.0) is None


def test_body_crop_is_a_ct_option() -> None:
    with pytest.raises(SpecError, match="body_crop"):
        dataclasses.replace(get_task(TaskName.GLIOMA_MR), body_crop=BodyCrop())
    with pytest.raises(SpecError, match="margin_mm"):
        BodyCrop(margin_mm=-1.0)
    assert get_task(TaskName.LIVER_CT).body_crop == BodyCrop(-500.0, 10.0)
    assert get_task(TaskName.GLIOMA_MR).body_crop is None


# -- the shipped liver model on phantoms -----------------------------------------------------

BUNDLES = Path(__file__).resolve().parents[2] / "models" / "bundles"


@pytest.fixture(scope="module")
def liver_model() -> nn.Module:
    registry = ModelRegistry(BUNDLES)
    return registry.load_network(registry.get("liver_ct", "0.2.0"))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


@pytest.mark.slow
@pytest.mark.parametrize(
    ("profile", "seed"),
    [(CT_DEFAULT, 0), (CT_FINE, 0)],  # a 512x512 CT: benchmarks/engine.py
    ids=["ct_default-0", "ct_fine-0"],
)
def test_the_engine_keeps_the_shipped_liver_models_masks(
    liver_model: nn.Module, profile: SiteProfile, seed: int
) -> None:
    """Batch 4, body crop and separable invert against batch 1, the whole grid and
    Invertd: Dice >= 0.99 per label (issue 18)."""
    phantom = generate_phantom("ct_abdomen", replace(profile, seed=1800 + seed), 0)
    spec = get_task(TaskName.LIVER_CT)
    args = (liver_model, spec, phantom.image, phantom.affine_lps)
    previous = segment(*args, device="cpu", reference=True, sw_batch_size=1).mask
    engine = segment(*args, device="cpu").mask
    assert (previous == 1).any()
    for label in (1, 2):
        assert _dice(engine == label, previous == label) >= 0.99, label


@pytest.mark.slow
def test_both_stages_of_a_cascade_run_through_the_engine(liver_model: nn.Module) -> None:
    phantom = generate_phantom("ct_abdomen", replace(CT_DEFAULT, seed=1899), 0)
    spec = get_task(TaskName.LIVER_CT)
    settings = RefinerSettings((1.5, 1.5, 2.0), spec.patch_size, 20.0)
    network = CascadeNetwork(liver_model, liver_model)
    args = (network, spec, settings, phantom.image, phantom.affine_lps)
    previous = segment_cascade(*args, device="cpu", reference=True)
    engine = segment_cascade(*args, device="cpu")
    assert previous.roi_found and engine.roi == previous.roi
    for label in (1, 2):
        assert _dice(engine.mask == label, previous.mask == label) >= 0.99, label
