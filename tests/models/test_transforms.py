"""Pre-processing and its inversion onto the exact input grid (models.transforms)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from models.errors import InputError
from models.geometry import axis_codes, lps_to_ras, voxel_spacing
from models.tasks import (
    ChannelSpec,
    CTWindow,
    Modality,
    MRZScore,
    PostprocessSpec,
    TaskName,
    TaskSpec,
    get_task,
)
from models.transforms import (
    IMAGE_KEY,
    LABEL_KEY,
    ForegroundSelect,
    as_channels,
    build_preprocess,
    build_train_augmentation,
    invert_to_input_grid,
    make_sample,
)
from tests.models.test_geometry import (
    AXIAL,
    SAGITTAL,
    make_affine,
    oblique_directions,
    ras_spacing,
)

SHAPE = (12, 20, 24)  # (slice, row, column)

GRIDS = {
    "axial": make_affine(),
    "oblique": make_affine(directions=oblique_directions()),
    "reversed-slices": make_affine(reverse_slices=True),
    "sagittal-oblique-reversed": make_affine(
        directions=oblique_directions(10, 5), reverse_slices=True
    ),
    "sagittal": make_affine(directions=SAGITTAL),
    "anisotropic": make_affine(pixel_spacing=(0.6, 0.9), slice_spacing=3.5),
}


def ct_spec(target_spacing: tuple[float, float, float]) -> TaskSpec:
    return dataclasses.replace(
        get_task(TaskName.LIVER_CT),
        target_spacing_mm=target_spacing,
        patch_size=(16, 16, 16),
        postprocess=PostprocessSpec(),
    )


def phantom(shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like image (air around a 'body') and a label map with two labels that touch
    the edges of the grid, so a misplaced axis or an off-by-one shows up."""
    rng = np.random.default_rng(7)
    image = np.full(shape, -1000.0, dtype=np.float32)
    image[1:-1, 3:-2, 4:-3] = 40.0
    label = np.zeros(shape, dtype=np.uint8)
    label[2:8, 5:14, 6:17] = 1
    label[4:6, 8:11, 9:12] = 2
    label[0, 0, 0] = 1  # a corner voxel
    label[-1, 6:9, -1] = 2  # on the far faces
    image[label == 1] = 100.0
    image[label == 2] = 200.0
    image += rng.normal(0, 5, shape).astype(np.float32)
    return image, label


@pytest.mark.parametrize("crop", [False, True], ids=["no-crop", "crop"])
@pytest.mark.parametrize("grid", list(GRIDS), ids=list(GRIDS))
def test_label_round_trip_is_exact_when_spacing_is_kept(grid: str, crop: bool) -> None:
    affine = GRIDS[grid]
    spec = ct_spec(ras_spacing(affine))
    image, label = phantom()
    transform = build_preprocess(spec, with_label=True, crop_foreground=crop)
    data = transform(make_sample(image, affine, spec, label=label))
    back = invert_to_input_grid(data[LABEL_KEY], data, transform, nearest=True)
    assert tuple(back.shape) == (1, *SHAPE)
    np.testing.assert_allclose(back.affine.numpy(), lps_to_ras(affine), atol=1e-9)
    np.testing.assert_array_equal(back[0].numpy().round().astype(np.uint8), label)


@pytest.mark.parametrize("grid", ["axial", "oblique", "reversed-slices", "anisotropic"])
def test_label_round_trip_through_resampling_lands_on_the_input_grid(grid: str) -> None:
    affine = GRIDS[grid]
    spec = ct_spec((1.5, 1.5, 1.5))
    image, label = phantom()
    transform = build_preprocess(spec, with_label=True)
    data = transform(make_sample(image, affine, spec, label=label))
    assert voxel_spacing(data[IMAGE_KEY].affine) == pytest.approx((1.5, 1.5, 1.5))
    back = invert_to_input_grid(data[LABEL_KEY], data, transform, nearest=True)
    assert tuple(back.shape) == (1, *SHAPE)
    np.testing.assert_allclose(back.affine.numpy(), lps_to_ras(affine), atol=1e-9)
    restored = back[0].numpy().round().astype(np.uint8)
    # resampling to a coarser grid loses detail only at boundaries
    assert (restored == label).mean() > 0.95
    big = label == 1
    dice = 2 * (big & (restored == 1)).sum() / (big.sum() + (restored == 1).sum())
    assert dice > 0.75  # the label is only a few target voxels thick in places


@pytest.mark.parametrize("grid", ["axial", "reversed-slices", "sagittal"])
def test_preprocessed_grid_is_ras_at_target_spacing(grid: str) -> None:
    spec = ct_spec((1.0, 1.25, 2.5))
    image, _ = phantom()
    data = build_preprocess(spec)(make_sample(image, GRIDS[grid], spec))
    assert axis_codes(data[IMAGE_KEY].affine) == "RAS"
    assert voxel_spacing(data[IMAGE_KEY].affine) == pytest.approx((1.0, 1.25, 2.5))


def test_orientation_moves_voxels_not_just_the_affine() -> None:
    affine = GRIDS["axial"]
    spec = ct_spec(ras_spacing(affine))
    image = np.zeros(SHAPE, dtype=np.float32)
    image[0, 0, 0] = (
        250.0  # first slice (most inferior), first row (anterior), first column (right)
    )
    data = build_preprocess(spec)(make_sample(image, affine, spec))
    out = data[IMAGE_KEY][0].numpy()
    # RAS: x runs towards the right (so 'right-most' is the last x), y to anterior, z up
    assert out.shape == (SHAPE[2], SHAPE[1], SHAPE[0])
    assert np.unravel_index(int(out.argmax()), out.shape) == (SHAPE[2] - 1, SHAPE[1] - 1, 0)


def test_ct_window_then_scale() -> None:
    affine = GRIDS["axial"]
    spec = dataclasses.replace(ct_spec(ras_spacing(affine)), intensity=CTWindow(-100.0, 250.0))
    image = np.full(SHAPE, -1000.0, dtype=np.float32)
    image[:, :, 0] = 75.0
    image[:, :, 1] = 1000.0
    data = build_preprocess(spec)(make_sample(image, affine, spec))
    values = np.unique(data[IMAGE_KEY].numpy().round(6))
    assert values.tolist() == pytest.approx([0.0, 0.5, 1.0])


def mr_spec(channels: int = 1) -> TaskSpec:
    base = get_task(TaskName.GLIOMA_MR)
    return dataclasses.replace(
        base,
        channels=tuple(ChannelSpec(f"c{i}", Modality.MR, (f"S{i}",)) for i in range(channels)),
        target_spacing_mm=ras_spacing(GRIDS["axial"]),
        patch_size=(16, 16, 16),
        intensity=MRZScore(foreground_threshold=0.5),
    )


def test_mr_z_score_uses_foreground_statistics_per_channel() -> None:
    rng = np.random.default_rng(3)
    image = np.zeros((2, *SHAPE), dtype=np.float32)
    head = (slice(2, 10), slice(4, 16), slice(4, 20))
    image[0][head] = rng.normal(300.0, 30.0, image[0][head].shape)
    image[1][head] = rng.normal(50.0, 5.0, image[1][head].shape)
    image[:, 0, 0, 0] = rng.uniform(0, 1, 2)  # air noise far below the threshold
    spec = mr_spec(channels=2)
    data = build_preprocess(spec)(make_sample(image, GRIDS["axial"], spec))
    out = data[IMAGE_KEY].numpy()
    for channel in range(2):
        fg = image[channel][head]  # statistics of the head only, not of the air
        expected = (image[channel] - fg.mean()) / fg.std(ddof=1)
        # the grid was only reoriented (spacing kept), so compare the sorted values
        np.testing.assert_allclose(
            np.sort(out[channel].ravel()), np.sort(expected.ravel()), rtol=1e-4, atol=1e-4
        )


def test_crop_foreground_crops_air_and_never_to_nothing() -> None:
    affine = GRIDS["axial"]
    spec = ct_spec(ras_spacing(affine))
    image = np.full((20, 48, 48), -1000.0, dtype=np.float32)
    image[8:12, 18:22, 18:22] = 50.0
    label = np.zeros(image.shape, dtype=np.uint8)
    label[9:11, 19:21, 19:22] = 1
    transform = build_preprocess(spec, with_label=True, crop_foreground=True)
    cropped = transform(make_sample(image, affine, spec, label=label))
    assert np.prod(cropped[IMAGE_KEY].shape) < image.size
    back = invert_to_input_grid(cropped[LABEL_KEY], cropped, transform, nearest=True)
    np.testing.assert_array_equal(back[0].numpy().round().astype(np.uint8), label)
    air = np.full((6, 7, 8), -1000.0, dtype=np.float32)
    kept = build_preprocess(spec, crop_foreground=True)(make_sample(air, affine, spec))
    assert kept[IMAGE_KEY].shape[1:] == (8, 7, 6)
    select = ForegroundSelect(spec.intensity)
    assert bool(select(torch.full((1, 2, 2, 2), -1000.0)).all())


def test_training_pipeline_gives_patches_with_labels() -> None:
    affine = GRIDS["oblique"]
    spec = ct_spec((1.5, 1.5, 1.5))
    image, label = phantom()
    data = build_preprocess(spec, with_label=True)(make_sample(image, affine, spec, label=label))
    patches = build_train_augmentation(spec, num_samples=2)(data)
    assert len(patches) == 2
    for patch in patches:
        assert patch[IMAGE_KEY].shape[0] == 1
        assert patch[LABEL_KEY].shape == patch[IMAGE_KEY].shape
        assert set(np.unique(patch[LABEL_KEY].numpy())) <= {0.0, 1.0, 2.0}


def test_as_channels_checks_the_input() -> None:
    spec = ct_spec((1.0, 1.0, 1.0))
    assert as_channels(np.zeros(SHAPE, dtype=np.int16), spec).shape == (1, *SHAPE)
    assert as_channels(np.zeros(SHAPE, dtype=np.int16), spec).dtype == np.float32
    with pytest.raises(InputError):
        as_channels(np.zeros((2, *SHAPE)), spec)
    with pytest.raises(InputError):
        as_channels(np.zeros((20, 24)), spec)
    with pytest.raises(InputError):
        as_channels(np.full(SHAPE, np.nan), spec)
    with pytest.raises(InputError):
        as_channels(np.zeros((0, 3, 3)), spec)
    with pytest.raises(InputError):
        make_sample(np.zeros(SHAPE), GRIDS["axial"], spec, label=np.zeros((3, 3, 3)))


def test_inversion_rejects_a_prediction_on_another_grid() -> None:
    affine = GRIDS["axial"]
    spec = ct_spec(ras_spacing(affine))
    image, _ = phantom()
    transform = build_preprocess(spec)
    data = transform(make_sample(image, affine, spec))
    with pytest.raises(InputError):
        invert_to_input_grid(torch.zeros(3, 5, 5, 5), data, transform, nearest=True)


def test_transform_chains_are_independent_of_axial_assumptions() -> None:
    """Same anatomy stored axially and reversed gives the same pre-processed volume."""
    image, _ = phantom()
    axial = GRIDS["axial"]
    flipped_affine = make_affine(
        reverse_slices=True,
        origin=tuple((axial @ np.array([SHAPE[0] - 1, 0, 0, 1]))[:3]),  # type: ignore[arg-type]
        directions=AXIAL,
    )
    spec = ct_spec(ras_spacing(axial))
    a = build_preprocess(spec)(make_sample(image, axial, spec))[IMAGE_KEY]
    b = build_preprocess(spec)(make_sample(image[::-1].copy(), flipped_affine, spec))[IMAGE_KEY]
    np.testing.assert_allclose(a.affine.numpy(), b.affine.numpy(), atol=1e-9)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
