"""Inference: one image (numpy + LPS affine) in, a segmentation on the same grid out.

:func:`segment` pre-processes (:mod:`models.grid_preprocess`: separably, straight onto the
part of the grid it predicts; :mod:`models.transforms` for rotated grids), runs MONAI
``sliding_window_inference`` with Gaussian blending, ``DEFAULT_SW_BATCH_SIZE`` windows
per call (under ``torch.autocast`` on CUDA, plain fp32 on CPU; the same code on both),
over the body's box when the task has a ``body_crop``, turns logits into probabilities,
inverts the pre-processing so that they land on the exact input grid (bilinear; by
separable interpolation of what decides the labels near the foreground,
:mod:`models.resample`, or MONAI ``Invertd`` for grids rotated against each other and
with ``reference=True``), and there:

- softmax task: takes the argmax and post-processes (:mod:`models.postprocess`); the
  result is a uint8 label map with the input's shape and axis order
  ``(slice, row, column)``;
- sigmoid task (overlapping segments, :class:`models.tasks.OutputActivation`):
  thresholds each label's probability at 0.5, removes components under the label's
  ``min_volume_ml``, then enforces the nesting the task's regions imply
  (:func:`models.regions.enforce_nesting`: an inner label's voxels join the labels
  containing it); the result is a bool ``(S, slice, row, column)`` mask, ``mask[i]``
  being label ``i + 1`` - the per-segment form ``dicom_bridge.seg.write_seg`` accepts
  for overlapping segments.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.transforms import Compose
from torch import nn

from .errors import InferenceError, InputError, InputTooLargeError, ModelsError
from .geometry import voxel_volume_ml
from .grid_preprocess import preprocess_box, preprocessed_grid
from .postprocess import postprocess as apply_postprocess
from .postprocess import remove_small_components
from .regions import enforce_nesting
from .resample import (
    AxisMaps,
    Box,
    background_value,
    box_above,
    decisive_values,
    grid_box_of_input_box,
    labels_on_input,
    separable_map,
)
from .tasks import MAX_WORKING_VOXELS, TaskSpec
from .threads import checked_threads
from .transforms import IMAGE_KEY, build_preprocess, invert_to_input_grid, make_sample

#: Windows per network call. 1 makes most 3-D convolutions of a small batch fall back to
#: ``aten::slow_conv3d`` on CPU; 4 measured fastest on 1 and 2 threads
#: (benchmarks/README.md, "Inference engine").
DEFAULT_SW_BATCH_SIZE = 4


@dataclass(frozen=True, slots=True)
class SegmentationResult:
    """``mask``: for a softmax task a uint8 label map with the input's
    ``(slice, row, column)`` shape, values 0 (background) or a label index of the task;
    for a sigmoid task a bool ``(len(labels), slice, row, column)`` array, ``mask[i]``
    the voxels of label ``i + 1`` (segments may overlap). ``timings_s``: seconds per stage
    (``preprocess``, ``inference``, ``invert``, ``postprocess``, ``total``).
    ``roi_found``: False when a two-stage model's first stage found nothing to refine
    (:mod:`models.cascade`; the mask is then empty); ``roi``: the box, as
    ``(start, stop)`` per axis of the input grid, that the second stage segmented."""

    mask: np.ndarray
    timings_s: Mapping[str, float] = field(default_factory=dict)
    device: str = "cpu"
    amp_dtype: str | None = None
    roi_found: bool = True
    roi: tuple[tuple[int, int], ...] | None = None


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a ``torch.device``; by default CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"invalid device {device!r}") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError("CUDA was requested but is not available")
    return resolved


def amp_dtype_for(device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``device``: bf16 (or fp16 where bf16 is unsupported) on CUDA,
    ``None`` (plain fp32) elsewhere."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def apply_thread_policy(threads: int) -> int:
    """Run torch's intra-op work on ``threads`` threads (1..1024; see
    :mod:`models.threads`), once per process at start-up; returns it."""
    torch.set_num_threads(checked_threads(threads))
    return threads


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block; its previous train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: Probability above which a sigmoid task's voxel belongs to a label.
SIGMOID_THRESHOLD = 0.5


def argmax_channels(scores: torch.Tensor) -> torch.Tensor:
    """uint8 index of the largest channel of ``(C, ...)`` scores (first one on ties).

    A loop over the few channels is several times faster on CPU than ``torch.argmax``
    over the leading dimension of a large volume."""
    if scores.shape[0] > 256:
        raise InferenceError("more than 256 classes do not fit a uint8 label map")
    best = scores[0].clone()
    index = torch.zeros(scores.shape[1:], dtype=torch.uint8, device=scores.device)
    for k in range(1, scores.shape[0]):
        better = scores[k] > best
        index[better] = k
        best = torch.maximum(best, scores[k])
    return index


def predict_probabilities(
    model: nn.Module,
    spec: TaskSpec,
    image: torch.Tensor,
    *,
    device: torch.device,
    sw_batch_size: int = DEFAULT_SW_BATCH_SIZE,
    overlap: float = 0.25,
    amp: bool = True,
) -> torch.Tensor:
    """Probabilities ``(num_classes, X, Y, Z)`` (float32, on ``device``) for a
    pre-processed channel-first image, by Gaussian-blended sliding windows: softmax over
    the channels, or (sigmoid task) an independent sigmoid per channel."""
    if sw_batch_size < 1:
        raise InputError("sw_batch_size must be >= 1")
    if not 0.0 <= overlap < 1.0:
        raise InputError("overlap must be in [0, 1)")
    batch = image.unsqueeze(0).to(device=device, dtype=torch.float32)
    amp_dtype = amp_dtype_for(device) if amp else None
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    try:
        with eval_mode(model), torch.no_grad(), autocast:
            logits = sliding_window_inference(
                batch,
                roi_size=spec.patch_size,
                sw_batch_size=sw_batch_size,
                predictor=model,
                overlap=overlap,
                mode="gaussian",
                # Where the image is smaller than the patch (a short stack), pad with its
                # edge values, never zeros: zeros are an intensity the network reads as
                # tissue (-100 HU after the CT window), and cost a 3-slice series all of
                # its liver (docs/training.md, "Short stacks").
                padding_mode="replicate",
            )
    except RuntimeError as exc:
        raise InferenceError(f"network inference failed: {exc}") from exc
    if isinstance(logits, tuple | list):
        logits = logits[0]
    if not isinstance(logits, torch.Tensor):
        raise InferenceError(f"the network returned {type(logits).__name__}, not a tensor")
    expected = (1, spec.num_classes, *batch.shape[2:])
    if tuple(logits.shape) != expected:
        raise InferenceError(
            f"the network returned shape {tuple(logits.shape)}; task {spec.name} needs {expected}"
        )
    if spec.is_sigmoid:
        return torch.sigmoid(logits.float())[0]
    return torch.softmax(logits.float(), dim=1)[0]


def working_voxels(
    shape: tuple[int, ...], affine_lps: np.ndarray, target_spacing_mm: tuple[float, ...]
) -> int:
    """The voxels of the grid a ``(slice, row, column)`` image with index->LPS
    ``affine_lps`` is resampled to at ``target_spacing_mm``: the image's physical volume
    over the target voxel's, whatever the orientation. From the header numbers alone, so
    a geometry bomb (few pixels, huge spacing) is caught before anything is allocated."""
    affine = np.asarray(affine_lps, dtype=np.float64)
    if affine.ndim != 2 or affine.shape[0] < 3 or affine.shape[1] < 3 or len(shape) != 3:
        raise InputError(f"need a (slice, row, column) shape and a 4x4 affine, not {shape}")
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError("the image affine has no finite, positive spacing")
    volume_mm3 = float(np.prod(np.asarray(shape, dtype=np.float64) * spacing))
    return math.ceil(volume_mm3 / float(np.prod(target_spacing_mm)))


def check_working_grid(
    shape: tuple[int, ...], affine_lps: np.ndarray, spec: TaskSpec, limit: int
) -> int:
    """Raise :class:`InputTooLargeError` when the resampled grid is over ``limit``."""
    voxels = working_voxels(tuple(shape), affine_lps, spec.target_spacing_mm)
    if voxels > limit:
        spacing = " x ".join(f"{s:g}" for s in spec.target_spacing_mm)
        raise InputTooLargeError(
            f"resampled to the model's {spacing} mm grid the series would be {voxels} "
            f"voxels, over the limit of {limit}"
        )
    return voxels


def _finish_regions(
    masks: np.ndarray, affine_lps: np.ndarray, spec: TaskSpec, *, postprocess: bool
) -> np.ndarray:
    """Thresholded per-label masks of a sigmoid task: optionally without components under
    each label's ``min_volume_ml``, then nested (:func:`models.regions.enforce_nesting`),
    so the nesting holds whatever the clean-up removed."""
    out = np.array(masks, dtype=bool, copy=True)
    if postprocess:
        ml_per_voxel = voxel_volume_ml(affine_lps)
        conn = spec.postprocess.connectivity
        for label in spec.labels:
            min_ml = spec.postprocess.min_volume(label.index)
            if min_ml > 0 and out[label.index - 1].any():
                out[label.index - 1] = remove_small_components(
                    out[label.index - 1], min_ml / ml_per_voxel * (1 - 1e-9), conn
                )
    return enforce_nesting(spec, out)


def window_aligned(lo: int, hi: int, size: int, roi: int, overlap: float) -> tuple[int, int]:
    """The smallest ``[start, stop)`` of an axis of ``size`` voxels whose sliding windows
    (``roi`` long, MONAI's placement for ``overlap``: every ``int(roi * (1 - overlap))``
    from 0, the last one ending at the axis end) are exactly the whole axis's windows that
    overlap ``[lo, hi)``: every voxel of ``[lo, hi)`` is then predicted from the same
    patches, blended with the same weights, as over the whole image."""
    if size <= roi:
        return 0, size
    step = max(int(roi * (1 - overlap)), 1)
    last = size - roi  # where the axis's final window starts
    # the first window that ends after lo, and the last one that starts before hi
    start = min(max(0, (lo - roi) // step + 1) * step, last)
    stop = size if hi > last else ((hi - 1) // step) * step + roi
    return start, stop


def body_grid_box(
    image: np.ndarray,
    spec: TaskSpec,
    maps: AxisMaps,
    grid_shape: tuple[int, int, int],
    overlap: float,
) -> Box:
    """The box of the pre-processed grid the windows run over: with ``spec.body_crop``
    the box of the ``(C, slice, row, column)`` input voxels above its threshold (before
    the intensity window) on that grid, grown by its margin and then to whole windows of
    the full grid (:func:`window_aligned`); otherwise (or when no voxel is above the
    threshold) the whole grid."""
    whole: Box = ((0, grid_shape[0]), (0, grid_shape[1]), (0, grid_shape[2]))
    crop = spec.body_crop
    if crop is None:
        return whole
    body = box_above(image, crop.threshold_hu)
    if body is None:
        return whole
    margin = tuple(math.ceil(crop.margin_mm / s - 1e-9) for s in spec.target_spacing_mm)
    box = grid_box_of_input_box(maps, body, grid_shape, margin)
    aligned = [
        window_aligned(lo, hi, grid_shape[a], spec.patch_size[a], overlap)
        for a, (lo, hi) in enumerate(box)
    ]
    return (aligned[0], aligned[1], aligned[2])


def _run_preprocess(transform: Compose, sample: dict[Hashable, Any]) -> dict[Hashable, Any]:
    """``transform(sample)``, a failure reported as the models package's error."""
    try:
        return dict(transform(sample))
    except ModelsError:
        raise
    except RuntimeError as exc:  # MONAI wraps a failing transform in RuntimeError
        cause = exc.__cause__
        if isinstance(cause, ModelsError):
            raise cause from exc
        raise InferenceError(f"pre-processing failed: {exc}") from exc


def segment(
    model: nn.Module,
    spec: TaskSpec,
    image: np.ndarray,
    affine_lps: np.ndarray,
    *,
    device: str | torch.device | None = None,
    sw_batch_size: int = DEFAULT_SW_BATCH_SIZE,
    overlap: float = 0.25,
    crop_foreground: bool = False,
    postprocess: bool = True,
    amp: bool = True,
    max_working_voxels: int | None = MAX_WORKING_VOXELS,
    reference: bool = False,
) -> SegmentationResult:
    """Segment ``image`` with ``model`` for task ``spec``.

    ``image``: ``(slice, row, column)`` for a single-channel task, or
    ``(C, slice, row, column)`` with C = ``spec.in_channels`` (channels in the order of
    ``spec.channels``). ``affine_lps``: index -> LPS mm (see :mod:`models.geometry`).
    ``model`` is moved to ``device`` (in place) and run in eval mode; its previous
    train/eval mode is restored afterwards. ``amp=False`` forces fp32 on CUDA too.
    ``max_working_voxels``: the largest grid (per channel) the image may be resampled to
    (:func:`working_voxels`, checked before anything is allocated; None: no bound);
    over it, :class:`InputTooLargeError`.

    The result's ``mask`` is a uint8 label map for a softmax task and a bool
    ``(len(spec.labels), slice, row, column)`` per-label mask for a sigmoid task (see the
    module docstring); ``postprocess=False`` skips the clean-up but not a sigmoid task's
    nesting.

    The engine (default): when the pre-processed grid is the input grid permuted,
    flipped, rescaled and cropped (not rotated against it: :func:`models.resample.
    separable_map`), the input is resampled onto the grid one axis at a time
    (:mod:`models.grid_preprocess`), a task with ``body_crop`` runs its windows (and that
    resampling) only over the body's box (:func:`body_grid_box`), and the prediction comes
    back by separable interpolation of the values that decide the labels, near the
    foreground only (:func:`models.resample.labels_on_input`). Otherwise, or with
    ``reference=True`` (the previous path, kept to check the engine against), MONAI's
    chain (:func:`models.transforms.build_preprocess`) resamples the whole image, the
    whole grid is predicted and MONAI ``Invertd`` resamples every channel back;
    ``crop_foreground`` also takes MONAI's pre-processing.
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    dev = resolve_device(device)

    if max_working_voxels is not None:
        check_working_grid(image.shape[-3:], affine_lps, spec, max_working_voxels)
    sample = make_sample(image, affine_lps, spec)
    source = sample[IMAGE_KEY]
    spatial_shape = tuple(source.shape[1:])
    maps: AxisMaps | None = None
    data: dict[Hashable, Any] = {}
    transform = None
    if not (reference or crop_foreground):
        # the engine: straight onto the grid's box, one axis at a time (models.grid_preprocess)
        grid_shape, grid_affine = preprocessed_grid(source, spec)
        maps = separable_map(source.affine, grid_affine)
    if maps is not None:
        box = body_grid_box(source.as_tensor().numpy(), spec, maps, grid_shape, overlap)
        pre_box = preprocess_box(source.as_tensor(), spec, maps, grid_shape, box)
    else:  # rotated grids, crop_foreground, reference: MONAI over the whole grid
        transform = build_preprocess(spec, crop_foreground=crop_foreground)
        data = _run_preprocess(transform, sample)
        pre = data[IMAGE_KEY]
        grid_shape = (int(pre.shape[1]), int(pre.shape[2]), int(pre.shape[3]))
        maps = None if reference else separable_map(source.affine, pre.affine)
        box = ((0, grid_shape[0]), (0, grid_shape[1]), (0, grid_shape[2]))
        if maps is not None:
            box = body_grid_box(source.as_tensor().numpy(), spec, maps, grid_shape, overlap)
        pre_box = pre.as_tensor()[(slice(None), *(slice(lo, hi) for lo, hi in box))]
    timings["preprocess"] = time.perf_counter() - start

    mark = time.perf_counter()
    try:
        model.to(dev)
    except RuntimeError as exc:
        raise InferenceError(f"cannot move the model to {dev}: {exc}") from exc
    probabilities = predict_probabilities(
        model,
        spec,
        pre_box,
        device=dev,
        sw_batch_size=sw_batch_size,
        overlap=overlap,
        amp=amp,
    )
    _sync(dev)
    timings["inference"] = time.perf_counter() - mark

    mark = time.perf_counter()
    if maps is not None:
        sigmoid = spec.is_sigmoid
        mask = labels_on_input(
            decisive_values(probabilities, sigmoid=sigmoid, threshold=SIGMOID_THRESHOLD),
            box,
            grid_shape,
            maps,
            (spatial_shape[0], spatial_shape[1], spatial_shape[2]),
            outside=background_value(sigmoid=sigmoid, threshold=SIGMOID_THRESHOLD),
            sigmoid=sigmoid,
        )
    else:
        assert transform is not None  # maps is None only on MONAI's path
        try:
            on_input_grid = invert_to_input_grid(probabilities, data, transform, nearest=False)
        except RuntimeError as exc:
            raise InferenceError(f"inverting the pre-processing failed: {exc}") from exc
        scores = on_input_grid.as_tensor()
        if spec.is_sigmoid:
            mask = np.ascontiguousarray((scores > SIGMOID_THRESHOLD).cpu().numpy())
        else:
            mask = np.ascontiguousarray(argmax_channels(scores).cpu().numpy())
    if mask.shape[-3:] != spatial_shape:
        raise InferenceError(f"inverted mask has shape {mask.shape}, input is {spatial_shape}")
    timings["invert"] = time.perf_counter() - mark

    mark = time.perf_counter()
    if spec.is_sigmoid:
        mask = _finish_regions(mask, affine_lps, spec, postprocess=postprocess)
    elif postprocess:
        mask = apply_postprocess(mask, affine_lps, spec.postprocess)
    timings["postprocess"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - start
    amp_dtype = amp_dtype_for(dev) if amp else None
    return SegmentationResult(
        mask=mask,
        timings_s=timings,
        device=str(dev),
        amp_dtype=None if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
    )
