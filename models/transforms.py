"""Pre-processing as MONAI ``Compose`` chains of dictionary transforms, and its inverse.

The chain, for the keys ``image`` (and ``label`` when training):

1. :class:`OrientToRASd` - reorder/flip the axes so they run to R, A, S (exactly
   invertible; MONAI's ``Orientationd`` needs nibabel, which is not a dependency);
2. ``Spacingd`` - resample to ``spec.target_spacing_mm`` (bilinear image, nearest label),
   keeping the grid's rotation, so oblique series are not rotated onto the world axes;
3. optionally ``CropForegroundd`` around the body / head (:class:`ForegroundSelect`);
4. intensity: CT window then scale to [0, 1] (``ScaleIntensityRanged``), or MR z-score
   over the foreground (:class:`ForegroundZScored`).

Every spatial step records itself in the MetaTensor's ``applied_operations``, so
:func:`invert_to_input_grid` (MONAI ``Invertd``) brings a prediction back onto the exact
input grid: same shape, same ``(slice, row, column)`` axis order, same affine.

Inputs enter through :func:`make_sample`, which builds the MetaTensors from numpy arrays
and an LPS affine (see :mod:`models.geometry`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    CropForegroundd,
    Invertd,
    InvertibleTransform,
    MapTransform,
    RandCropByPosNegLabeld,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
)
from monai.utils import TraceKeys

from .errors import GeometryError, InputError
from .geometry import ras_orientation, to_metatensor, validate_affine
from .tasks import CTWindow, IntensitySpec, MRZScore, TaskSpec

IMAGE_KEY = "image"
LABEL_KEY = "label"
PRED_KEY = "pred"

#: Margin kept around the foreground when cropping, in millimetres.
CROP_MARGIN_MM = 10.0


def reorient_matrix(
    perm: Sequence[int], flips: Sequence[bool], in_shape: Sequence[int]
) -> np.ndarray:
    """4x4 matrix mapping an output voxel index to the input voxel index."""
    xform = np.zeros((4, 4))
    xform[3, 3] = 1.0
    for out_axis, (in_axis, flip) in enumerate(zip(perm, flips, strict=True)):
        xform[in_axis, out_axis] = -1.0 if flip else 1.0
        xform[in_axis, 3] = float(in_shape[in_axis] - 1) if flip else 0.0
    return xform


class OrientToRASd(MapTransform, InvertibleTransform):
    """Permute and flip the spatial axes of channel-first MetaTensors so that they run
    (as closely as possible) towards Right, Anterior, Superior.

    Only whole-voxel reordering happens, so it is exactly invertible; the affine is
    updated to describe the same voxels in their new order.
    """

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._orient(d[key])
        return d

    def _orient(self, img: Any) -> MetaTensor:
        if not isinstance(img, MetaTensor) or img.ndim != 4:
            raise GeometryError("OrientToRASd needs channel-first 3-D MetaTensors")
        affine = validate_affine(img.affine)
        in_shape = tuple(int(s) for s in img.shape[1:])
        perm, flips = ras_orientation(affine)
        out = img.permute(0, *(p + 1 for p in perm))
        dims = [i + 1 for i, flip in enumerate(flips) if flip]
        if dims:
            out = torch.flip(out, dims)
        out = out.contiguous()  # later steps (and argmax over channels) are much faster
        assert isinstance(out, MetaTensor)
        out.affine = torch.as_tensor(affine @ reorient_matrix(perm, flips, in_shape))
        self.push_transform(
            out, orig_size=in_shape, extra_info={"perm": list(perm), "flips": list(flips)}
        )
        return out

    def inverse(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            info = self.pop_transform(img)
            perm = [int(p) for p in info[TraceKeys.EXTRA_INFO]["perm"]]
            flips = [bool(f) for f in info[TraceKeys.EXTRA_INFO]["flips"]]
            in_shape = [int(s) for s in info[TraceKeys.ORIG_SIZE]]
            dims = [i + 1 for i, flip in enumerate(flips) if flip]
            out = torch.flip(img, dims) if dims else img
            # left as a strided view: copying 3-channel float volumes of 50 million
            # voxels costs seconds; callers reduce over channels first (see inference)
            out = out.permute(0, *(int(a) + 1 for a in np.argsort(perm)))
            assert isinstance(out, MetaTensor)
            undo = np.linalg.inv(reorient_matrix(perm, flips, in_shape))
            out.affine = torch.as_tensor(validate_affine(img.affine) @ undo)
            d[key] = out
        return d


class ForegroundSelect:
    """``select_fn`` for ``CropForegroundd``: the body (CT: above the window's lower
    bound) or the head (MR: the z-score foreground rule). Selects everything when
    nothing passes, so an empty image is never cropped to nothing. Picklable."""

    def __init__(self, intensity: IntensitySpec) -> None:
        self.intensity = intensity

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if isinstance(self.intensity, CTWindow):
            mask = img > self.intensity.lower_hu
        else:
            mask = _foreground(img, self.intensity.foreground_threshold)
        if not bool(mask.any()):
            mask = torch.ones_like(mask, dtype=torch.bool)
        return mask


def _foreground(img: torch.Tensor, threshold: float) -> torch.Tensor:
    """Per channel: voxels brighter than ``threshold`` x the channel mean (or > 0)."""
    flat = img.reshape(img.shape[0], -1).float()
    means = flat.mean(dim=1).view(-1, *([1] * (img.ndim - 1)))
    return img > threshold * means.clamp(min=0.0)


class ForegroundZScored(MapTransform):
    """Z-score each channel with the mean and standard deviation of its foreground
    voxels (see :class:`models.tasks.MRZScore`); all voxels are normalised."""

    def __init__(
        self, keys: KeysCollection, foreground_threshold: float, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.foreground_threshold = float(foreground_threshold)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            raw = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
            x = raw.float()
            fg = _foreground(x, self.foreground_threshold)
            out = torch.empty_like(x)
            for c in range(x.shape[0]):
                values = x[c][fg[c]] if int(fg[c].sum()) >= 2 else x[c].reshape(-1)
                std = values.std().clamp(min=1e-8)
                out[c] = (x[c] - values.mean()) / std
            if isinstance(img, MetaTensor):
                out = MetaTensor(out, meta=img.meta, applied_operations=img.applied_operations)
            d[key] = out
        return d


def intensity_transform(spec: TaskSpec) -> MapTransform:
    """The task's intensity step on ``IMAGE_KEY`` (CT window and scale, or MR z-score)."""
    intensity = spec.intensity
    if isinstance(intensity, CTWindow):
        return ScaleIntensityRanged(
            keys=IMAGE_KEY,
            a_min=intensity.lower_hu,
            a_max=intensity.upper_hu,
            b_min=0.0,
            b_max=1.0,
            clip=True,
        )
    assert isinstance(intensity, MRZScore)
    return ForegroundZScored(keys=IMAGE_KEY, foreground_threshold=intensity.foreground_threshold)


def build_preprocess(
    spec: TaskSpec, *, with_label: bool = False, crop_foreground: bool = False
) -> Compose:
    """The deterministic pre-processing of ``spec`` (inference, or training with a label).

    Keep the returned ``Compose``: its inverse (:func:`invert_to_input_grid`) needs the
    same instance that processed the sample.
    """
    keys = [IMAGE_KEY, LABEL_KEY] if with_label else [IMAGE_KEY]
    modes = ["bilinear", "nearest"] if with_label else ["bilinear"]
    steps: list[Any] = [
        OrientToRASd(keys=keys),
        Spacingd(
            keys=keys,
            pixdim=spec.target_spacing_mm,
            mode=modes,
            padding_mode="border",
            dtype=np.float32,
        ),
    ]
    if crop_foreground:
        margin = [math.ceil(CROP_MARGIN_MM / s) for s in spec.target_spacing_mm]
        steps.append(
            CropForegroundd(
                keys=keys,
                source_key=IMAGE_KEY,
                select_fn=ForegroundSelect(spec.intensity),
                margin=margin,
                allow_smaller=True,
                start_coord_key=None,
                end_coord_key=None,
            )
        )
    steps.append(intensity_transform(spec))
    return Compose(steps)


def build_train_augmentation(spec: TaskSpec, *, num_samples: int = 2) -> Compose:
    """Random patches (half of them centred on a labelled voxel) with mild intensity
    jitter, for training after :func:`build_preprocess` ``(with_label=True)``."""
    return Compose(
        [
            RandCropByPosNegLabeld(
                keys=[IMAGE_KEY, LABEL_KEY],
                label_key=LABEL_KEY,
                spatial_size=spec.patch_size,
                pos=1.0,
                neg=1.0,
                num_samples=num_samples,
                allow_smaller=True,
            ),
            RandScaleIntensityd(keys=IMAGE_KEY, factors=0.1, prob=0.5),
            RandShiftIntensityd(keys=IMAGE_KEY, offsets=0.1, prob=0.5),
        ]
    )


def as_channels(image: np.ndarray, spec: TaskSpec) -> np.ndarray:
    """``image`` as float32 ``(C, slice, row, column)`` for ``spec``'s channels.

    A single-channel task also accepts a plain 3-D ``(slice, row, column)`` array.
    """
    array = np.asarray(image)
    if array.ndim == 3 and spec.in_channels == 1:
        array = array[None]
    if array.ndim != 4 or array.shape[0] != spec.in_channels:
        raise InputError(
            f"task {spec.name} expects {spec.in_channels} channel(s) as "
            f"(C, slice, row, column); got an array of shape {tuple(np.shape(image))}"
        )
    if min(array.shape[1:]) < 1:
        raise InputError(f"image has an empty axis: shape {array.shape}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"image must be real-valued, got dtype {array.dtype}")
    out = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(out)):
        raise InputError("image has non-finite values")
    return out


def make_sample(
    image: np.ndarray,
    affine_lps: np.ndarray,
    spec: TaskSpec,
    *,
    label: np.ndarray | None = None,
) -> dict[Hashable, Any]:
    """The dictionary sample the pre-processing expects, built from the boundary format
    (arrays with axes ``(slice, row, column)`` plus an index->LPS affine)."""
    channels = as_channels(image, spec)
    affine = validate_affine(affine_lps)
    sample: dict[Hashable, Any] = {IMAGE_KEY: to_metatensor(channels, affine)}
    if label is not None:
        lab = np.asarray(label)
        if lab.shape != channels.shape[1:]:
            raise InputError(f"label shape {lab.shape} differs from image {channels.shape[1:]}")
        sample[LABEL_KEY] = to_metatensor(lab.astype(np.float32)[None], affine)
    return sample


def invert_to_input_grid(
    prediction: torch.Tensor,
    preprocessed: Mapping[Hashable, Any],
    transform: Compose,
    *,
    nearest: bool,
) -> MetaTensor:
    """Map ``prediction`` (channel-first, on the pre-processed image's grid) back onto
    the input grid by inverting ``transform`` as it was applied to the image.

    ``nearest`` resamples with nearest neighbour (for label maps); otherwise each
    spatial step uses the image's own interpolation (bilinear, for probabilities).
    """
    image = preprocessed[IMAGE_KEY]
    if not isinstance(image, MetaTensor):
        raise InputError("the pre-processed sample has no traced image")
    if tuple(prediction.shape[1:]) != tuple(image.shape[1:]):
        raise InputError(
            f"prediction grid {tuple(prediction.shape[1:])} differs from the pre-processed "
            f"image grid {tuple(image.shape[1:])}"
        )
    pred = prediction if isinstance(prediction, MetaTensor) else MetaTensor(prediction)
    inverter = Invertd(
        keys=PRED_KEY, transform=transform, orig_keys=IMAGE_KEY, nearest_interp=nearest
    )
    out = inverter({IMAGE_KEY: image, PRED_KEY: pred})[PRED_KEY]
    assert isinstance(out, MetaTensor)
    return out
