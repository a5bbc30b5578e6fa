"""Running a :class:`~models.bundle_pipeline.BundlePipeline` on the appliance's input.

:func:`build_preprocess` builds a MONAI ``Compose`` over the key ``image`` from the
recorded steps; :func:`run_pipeline` pre-processes, runs the inferer, applies the
post-processing in the bundle's order, inverts onto the input grid and maps network
channels to task labels (a label map, or one mask per label for a thresholded output).
The working grid is bounded before anything is allocated (:func:`check_working_grid`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Final

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.transforms import (
    Activations,
    AsDiscrete,
    Compose,
    CropForegroundd,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
)
from torch import nn

from .bundle_pipeline import BundlePipeline, Op, Step, check_channel_labels, working_spacing
from .errors import (
    BundleImportError,
    InferenceError,
    InputError,
    InputTooLargeError,
    ModelsError,
)
from .geometry import to_metatensor, validate_affine
from .inference import SegmentationResult, amp_dtype_for, eval_mode, resolve_device, working_voxels
from .tasks import MAX_WORKING_VOXELS
from .transforms import IMAGE_KEY, invert_to_input_grid

# -- execution -----------------------------------------------------------------------------


_SPATIAL: Final = frozenset({Op.ORIENTATION, Op.SPACING, Op.CROP_FOREGROUND})
_RAS_LABELS: Final = (("L", "R"), ("P", "A"), ("I", "S"))


def build_preprocess(pipeline: BundlePipeline) -> Compose:
    """The running pre-processing steps as MONAI dictionary transforms over ``image``.
    Keep the instance: inverting needs the one that processed the sample."""
    steps: list[Any] = []
    for step in pipeline.preprocessing:
        if not step.runs:
            continue
        p = step.params
        if step.op is Op.ORIENTATION:
            # the labels spelled out (MONAI's former default): RAS as NIfTI and DICOM mean it
            steps.append(Orientationd(keys=IMAGE_KEY, axcodes=p["axcodes"], labels=_RAS_LABELS))
        elif step.op is Op.SPACING:
            steps.append(
                Spacingd(
                    keys=IMAGE_KEY,
                    pixdim=p["pixdim"],
                    mode=p["mode"],
                    padding_mode=p["padding_mode"],
                    align_corners=p["align_corners"],
                    dtype=np.float32,
                )
            )
        elif step.op is Op.SCALE_INTENSITY_RANGE:
            steps.append(
                ScaleIntensityRanged(
                    keys=IMAGE_KEY,
                    a_min=p["a_min"],
                    a_max=p["a_max"],
                    b_min=p["b_min"],
                    b_max=p["b_max"],
                    clip=p["clip"],
                )
            )
        elif step.op is Op.NORMALIZE_INTENSITY:
            steps.append(
                NormalizeIntensityd(
                    keys=IMAGE_KEY, nonzero=p["nonzero"], channel_wise=p["channel_wise"]
                )
            )
        elif step.op is Op.SCALE_INTENSITY:
            steps.append(
                ScaleIntensityd(
                    keys=IMAGE_KEY, minv=p["minv"], maxv=p["maxv"], channel_wise=p["channel_wise"]
                )
            )
        elif step.op is Op.CROP_FOREGROUND:
            channels = p["channel_indices"]
            steps.append(
                CropForegroundd(
                    keys=IMAGE_KEY,
                    source_key=IMAGE_KEY,
                    margin=p["margin"],
                    allow_smaller=p["allow_smaller"],
                    k_divisible=p["k_divisible"],
                    channel_indices=None if channels is None else list(channels),
                    mode=p["mode"],
                    start_coord_key=None,
                    end_coord_key=None,
                )
            )
        else:  # pragma: no cover - every running pre-processing op is handled above
            raise BundleImportError(f"{step.where}: {step.op} has no executor")
    return Compose(steps)


def working_grid_voxels(
    pipeline: BundlePipeline, shape: Sequence[int], affine_lps: np.ndarray
) -> int:
    """An upper estimate of the voxels (per channel) of the grid the network works on:
    the image resampled to :func:`working_spacing` (or as it is), each axis padded to the
    sliding window (whatever the axis order after re-orientation)."""
    shape3 = tuple(int(s) for s in shape)
    affine = np.asarray(affine_lps, dtype=np.float64)
    spacing = working_spacing(pipeline)
    voxels = working_voxels(shape3, affine, spacing) if spacing else math.prod(shape3)
    in_spacing = np.linalg.norm(affine[:3, :3], axis=0)
    extent = np.asarray(shape3, dtype=np.float64) * in_spacing
    roi = (
        pipeline.inferer.params["roi_size"]
        if pipeline.inferer.op is Op.SLIDING_WINDOW
        else (1, 1, 1)
    )
    padded = 0
    for perm in itertools.permutations(range(3)):
        sizes = [
            max(
                math.ceil(extent[perm[i]] / spacing[i]) if spacing else shape3[perm[i]],
                int(roi[i]),
            )
            for i in range(3)
        ]
        padded = max(padded, math.prod(sizes))
    return max(voxels, padded)


def check_working_grid(
    pipeline: BundlePipeline, shape: Sequence[int], affine_lps: np.ndarray, limit: int
) -> int:
    """:func:`working_grid_voxels`, or :class:`~models.errors.InputTooLargeError` when it
    is over ``limit``."""
    voxels = working_grid_voxels(pipeline, shape, affine_lps)
    if voxels > limit:
        spacing = working_spacing(pipeline)
        grid = "its own grid" if spacing is None else " x ".join(f"{s:g}" for s in spacing) + " mm"
        raise InputTooLargeError(
            f"on the bundle's working grid ({grid}, padded to the window) the series would "
            f"be {voxels} voxels, over the limit of {limit}"
        )
    return voxels


def _channels(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or min(array.shape) < 1:
        raise InputError(
            f"need (slice, row, column) or (C, slice, row, column), not {np.shape(image)}"
        )
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"image must be real-valued, got dtype {array.dtype}")
    out = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(out)):
        raise InputError("image has non-finite values")
    return out


#: (slice, row, column) <-> (column, row, slice): the axis order LoadImage gives a series.
_LOADER_AXES: Final = (2, 1, 0)


def preprocess_image(
    pipeline: BundlePipeline, image: np.ndarray, affine_lps: np.ndarray
) -> tuple[dict[Hashable, Any], Compose]:
    """``(pre-processed sample, the Compose that made it)`` for the appliance's image:
    the image enters as MONAI's LoadImage gives a series (channel-first, axes
    ``(column, row, slice)``, RAS affine)."""
    channels = _channels(image)
    affine = validate_affine(affine_lps)
    loader = np.ascontiguousarray(channels.transpose(0, *(a + 1 for a in _LOADER_AXES)))
    loader_affine = affine[:, [*_LOADER_AXES, 3]]
    sample: dict[Hashable, Any] = {IMAGE_KEY: to_metatensor(loader, loader_affine)}
    transform = build_preprocess(pipeline)
    try:
        data = transform(sample)
    except ModelsError:
        raise
    except RuntimeError as exc:  # MONAI wraps a failing transform in RuntimeError
        raise InferenceError(f"pre-processing failed: {exc}") from exc
    return data, transform


def _infer(
    network: nn.Module, step: Step, image: torch.Tensor, device: torch.device, amp: bool
) -> torch.Tensor:
    batch = image.unsqueeze(0).to(device=device, dtype=torch.float32)
    inferer: Callable[..., Any]
    if step.op is Op.SLIDING_WINDOW:
        p = step.params
        inferer = SlidingWindowInferer(
            roi_size=p["roi_size"],
            sw_batch_size=p["sw_batch_size"],
            overlap=p["overlap"],
            mode=p["mode"],
            sigma_scale=p["sigma_scale"],
            padding_mode=p["padding_mode"],
            cval=p["cval"],
        )
    else:
        inferer = SimpleInferer()
    amp_dtype = amp_dtype_for(device) if amp else None
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    try:
        network.to(device)
        with eval_mode(network), torch.no_grad(), autocast:
            out = inferer(batch, network)
    except RuntimeError as exc:
        raise InferenceError(f"network inference failed: {exc}") from exc
    if isinstance(out, tuple | list):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise InferenceError(f"the network returned {type(out).__name__}, not a tensor")
    if out.ndim != 5 or out.shape[0] != 1 or tuple(out.shape[2:]) != tuple(batch.shape[2:]):
        raise InferenceError(
            f"the network returned shape {tuple(out.shape)} for an input of {tuple(batch.shape)}"
        )
    result = out[0].float()
    return result.as_tensor() if isinstance(result, MetaTensor) else result


def run_pipeline(
    network: nn.Module,
    pipeline: BundlePipeline,
    image: np.ndarray,
    affine_lps: np.ndarray,
    *,
    device: str | torch.device | None = None,
    channel_labels: Mapping[int, int],
    max_working_voxels: int | None = MAX_WORKING_VOXELS,
    amp: bool = True,
) -> SegmentationResult:
    """Segment ``image`` (``(slice, row, column)`` or ``(C, slice, row, column)``, with an
    index->LPS ``affine_lps``) the way the bundle does, returning on the input grid.

    ``channel_labels``: network output channel -> task label (unlisted channels are
    background). An argmax pipeline gives a uint8 ``(slice, row, column)`` label map; a
    thresholded one a bool ``(S, slice, row, column)`` mask, ``mask[i]`` = task label
    ``i + 1``. ``max_working_voxels`` bounds :func:`working_grid_voxels` before anything
    is allocated (None: no bound).
    """
    timings: dict[str, float] = {}
    start = time.perf_counter()
    count = check_channel_labels(pipeline, channel_labels)
    dev = resolve_device(device)
    shape = np.shape(image)[-3:]
    if max_working_voxels is not None:
        check_working_grid(pipeline, shape, validate_affine(affine_lps), max_working_voxels)
    data, transform = preprocess_image(pipeline, image, affine_lps)
    timings["preprocess"] = time.perf_counter() - start

    mark = time.perf_counter()
    output = _infer(network, pipeline.inferer, data[IMAGE_KEY].as_tensor(), dev, amp)
    if output.shape[0] <= max(channel_labels):
        raise InferenceError(
            f"the network returned {output.shape[0]} channels; the channel labels use "
            f"channel {max(channel_labels)}"
        )
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    timings["inference"] = time.perf_counter() - mark

    mark = time.perf_counter()
    pred: torch.Tensor = output
    # without a spatial step the input grid is the network's: nothing to invert
    inverted = not any(s.runs and s.op in _SPATIAL for s in pipeline.preprocessing)
    try:
        for step in pipeline.postprocessing:
            if not step.runs:
                continue
            p = step.params
            if step.op is Op.ACTIVATIONS:
                pred = _tensor(Activations(softmax=p["softmax"], sigmoid=p["sigmoid"])(pred))
            elif step.op is Op.AS_DISCRETE:
                pred = _tensor(AsDiscrete(argmax=p["argmax"], threshold=p["threshold"])(pred))
            elif step.op is Op.INVERT:
                if not inverted:
                    pred = invert_to_input_grid(pred, data, transform, nearest=p["nearest_interp"])
                inverted = True
        if not inverted:
            pred = invert_to_input_grid(pred, data, transform, nearest=True)
    except ModelsError:
        raise
    except RuntimeError as exc:
        raise InferenceError(f"post-processing failed: {exc}") from exc
    values = torch.as_tensor(pred).detach()
    values = values.permute(0, *(a + 1 for a in _LOADER_AXES))  # back to (slice, row, column)
    if tuple(values.shape[1:]) != tuple(shape):
        raise InferenceError(f"the result has shape {tuple(values.shape[1:])}, input is {shape}")
    mask = _task_labels(values.cpu(), pipeline.multi_label, channel_labels, count)
    timings["postprocess"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - start
    amp_dtype = amp_dtype_for(dev) if amp else None
    return SegmentationResult(
        mask=mask,
        timings_s=timings,
        device=str(dev),
        amp_dtype=None if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
    )


def _tensor(value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):  # pragma: no cover - MONAI keeps tensors
        raise InferenceError(f"post-processing gave {type(value).__name__}, not a tensor")
    return value


def _task_labels(
    values: torch.Tensor, multi_label: bool, channel_labels: Mapping[int, int], count: int
) -> np.ndarray:
    array = values.numpy()
    if multi_label:
        out = np.zeros((count, *array.shape[1:]), dtype=bool)
        for channel, label in channel_labels.items():
            if label > 0:
                out[label - 1] = array[channel] > 0.5
        return out
    if array.shape[0] != 1:
        raise InferenceError(f"argmax gave {array.shape[0]} channels, not 1")
    lut = np.zeros(256, dtype=np.uint8)
    for channel, label in channel_labels.items():
        lut[channel] = label
    index = np.rint(array[0]).astype(np.int64)
    if index.min() < 0 or index.max() > 255:
        raise InferenceError("argmax gave a channel index outside 0..255")
    return np.ascontiguousarray(lut[index])
