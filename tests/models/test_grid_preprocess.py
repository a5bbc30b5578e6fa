"""The engine's pre-processing (models.grid_preprocess) against MONAI's chain
(models.transforms.build_preprocess): the same grid, the same values to float round-off."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.errors import InferenceError
from models.grid_preprocess import preprocess_box, preprocessed_grid, resample_box
from models.resample import separable_map
from models.tasks import get_task
from models.transforms import IMAGE_KEY, build_preprocess, make_sample

#: (shape, spacing, index axis -> world axis, flips): axial, flipped, permuted (sagittal-like),
#: a 3-slice stack, anisotropic finer than the grid along one axis
GEOMETRIES = [
    ((20, 40, 36), (2.5, 0.8, 0.8), (2, 1, 0), (1, 1, 1)),
    ((17, 33, 29), (1.0, 1.3, 0.7), (2, 1, 0), (-1, 1, -1)),
    ((25, 30, 22), (0.9, 2.2, 1.1), (0, 2, 1), (1, -1, 1)),
    ((3, 50, 50), (5.0, 0.7, 0.7), (2, 1, 0), (1, 1, 1)),
]


def _affine(
    spacing: tuple[float, ...], axes: tuple[int, ...], flips: tuple[int, ...]
) -> np.ndarray:
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for i in range(3):
        affine[axes[i], i] = spacing[i] * flips[i]
    affine[:3, 3] = (12.0, -21.5, 33.0)
    return affine


def _image(task: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    spec = get_task(task)
    one = rng.random(shape, dtype=np.float32)
    one = one * 400 - 100 if task == "liver_ct" else one * 300
    return (
        np.stack([one * (c + 1) for c in range(spec.in_channels)]) if spec.in_channels > 1 else one
    )


@pytest.mark.parametrize("task", ["liver_ct", "glioma_mr", "glioma_brats"])
@pytest.mark.parametrize(("shape", "spacing", "axes", "flips"), GEOMETRIES)
def test_same_grid_and_values_as_monai(
    task: str,
    shape: tuple[int, ...],
    spacing: tuple[float, ...],
    axes: tuple[int, ...],
    flips: tuple[int, ...],
) -> None:
    spec = get_task(task)
    rng = np.random.default_rng(len(task) * 100 + shape[0])
    sample = make_sample(_image(task, shape, rng), _affine(spacing, axes, flips), spec)
    reference = build_preprocess(spec)(sample)[IMAGE_KEY]

    grid_shape, grid_affine = preprocessed_grid(sample[IMAGE_KEY], spec)
    assert grid_shape == tuple(reference.shape[1:])
    np.testing.assert_allclose(grid_affine, np.asarray(reference.affine), atol=1e-9)

    maps = separable_map(sample[IMAGE_KEY].affine, grid_affine)
    assert maps is not None
    whole = ((0, grid_shape[0]), (0, grid_shape[1]), (0, grid_shape[2]))
    values = preprocess_box(sample[IMAGE_KEY].as_tensor(), spec, maps, grid_shape, whole)
    assert values.shape == reference.shape and values.dtype == torch.float32
    assert values.is_contiguous()
    torch.testing.assert_close(values, reference.as_tensor(), atol=1e-4, rtol=0)

    # a box: the same values as the whole grid's, there (the MR z-score still uses the
    # whole grid's statistics)
    box = ((1, grid_shape[0]), (0, max(1, grid_shape[1] - 2)), (2, grid_shape[2]))
    part = preprocess_box(sample[IMAGE_KEY].as_tensor(), spec, maps, grid_shape, box)
    torch.testing.assert_close(
        part, reference.as_tensor()[:, 1:, : max(1, grid_shape[1] - 2), 2:], atol=1e-4, rtol=0
    )


def test_resample_box_interpolates_linearly_and_clamps_at_the_border() -> None:
    """One axis scaled by 2 (grid = 2 * input + 0.5): nodes between input voxels
    are weighted by distance, nodes beyond the first or last voxel get that voxel
    (border padding)."""
    from models.resample import AxisMap

    line = torch.tensor([0.0, 10.0, 30.0]).view(1, 1, 1, 3)
    maps = (AxisMap(0, 1.0, 0.0), AxisMap(1, 1.0, 0.0), AxisMap(2, 2.0, 0.5))
    out = resample_box(line, maps, ((0, 1), (0, 1), (0, 6)))
    assert out.flatten().tolist() == pytest.approx([0.0, 2.5, 7.5, 15.0, 25.0, 30.0])
    with pytest.raises(InferenceError):
        resample_box(line[0], maps, ((0, 1), (0, 1), (0, 6)))
