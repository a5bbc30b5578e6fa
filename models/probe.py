"""Test-loading a bundle before it is trusted: weights into the card's network, one forward pass.

A card's sha256 only says that the weights are the bytes the card's author hashed, not
that they load into the card's network or that the network runs. :func:`probe_bundle`
rebuilds the network (:meth:`ModelRegistry.load_network`: sha256, ``weights_only=True``,
``strict=True``) on the CPU and runs one forward pass under ``torch.no_grad`` on a small
input: the task's channel count, at the smallest cube the architecture accepts (its
``img_size`` when it has one, else a multiple of its total downsampling, at least
:data:`PROBE_MIN_SIDE` voxels); a two-stage model's stages each get their own pass.
The output must be one finite tensor with a channel per class and the input's spatial
shape. Every failure is a :class:`BundleProbeError` that
names the bundle and why.

:func:`run_probe` is the forward pass itself; the MONAI bundle importer
(:mod:`models.bundle_import`) runs it at the shape the bundle declares (its inferer's
``roi_size``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from models.cascade import CascadeNetwork
from models.cascade_spec import LOCATOR, REFINER, stage_architectures
from models.errors import ModelsError
from models.model_card import thaw
from models.registry import ModelBundle, ModelRegistry, RegistryError
from models.tasks import get_task

#: the smallest probe cube side, in voxels (divisible by a 5-level UNet's downsampling)
PROBE_MIN_SIDE = 32
#: networks whose encoders need the input divisible by 32 whatever their kwargs say
_DIVISOR_32 = frozenset({"BasicUNet", "SwinUNETR"})


class BundleProbeError(RegistryError):
    """A bundle's weights do not load into its card's network, or the network does not run."""


def _as_sizes(value: Any, dims: int) -> list[int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * dims
    if not isinstance(value, Sequence) or len(value) != dims:
        return None
    if all(isinstance(v, int) for v in value):
        return [int(v) for v in value]
    return None


def probe_shape(architecture: Mapping[str, Any], in_channels: int) -> tuple[int, ...]:
    """The input shape ``(1, channels, *spatial)`` that the probe feeds the network."""
    kwargs = thaw(architecture.get("kwargs", {}))
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    dims = kwargs.get("spatial_dims", 3)
    dims = dims if isinstance(dims, int) and dims in (2, 3) else 3
    fixed = _as_sizes(kwargs.get("img_size"), dims)
    if fixed is not None and architecture.get("network") != "SwinUNETR":
        return (1, in_channels, *fixed)
    divisor = [32 if architecture.get("network") in _DIVISOR_32 else 1] * dims
    strides = kwargs.get("strides")
    if isinstance(strides, Sequence):
        for stride in strides:
            step = _as_sizes(stride, dims)
            if step is not None:
                divisor = [d * max(s, 1) for d, s in zip(divisor, step, strict=True)]
    blocks = kwargs.get("blocks_down")
    if isinstance(blocks, Sequence) and len(blocks) > 1:
        divisor = [max(d, 2 ** (len(blocks) - 1)) for d in divisor]
    side = [d * math.ceil(PROBE_MIN_SIDE / d) for d in divisor]
    return (1, in_channels, *side)


def _task_channels(bundle: ModelBundle) -> tuple[int, int | None]:
    """(input channels, output channels or None) from the task spec, else the card; an
    imported bundle's own output channels (``preprocessing.bundle``) win."""
    card = bundle.card
    try:
        spec = get_task(bundle.task)
    except (ModelsError, KeyError, ValueError):
        kwargs = thaw(card.architecture.get("kwargs", {}))
        channels = kwargs.get("in_channels", 1) if isinstance(kwargs, dict) else 1
        in_channels = channels if isinstance(channels, int) and channels > 0 else 1
        return in_channels, card.out_channels if card.channel_map is not None else None
    return spec.in_channels, card.out_channels


def run_probe(
    network: torch.nn.Module, shape: Sequence[int], out_channels: int | None, what: str
) -> None:
    """One forward pass of ``network`` (on the CPU, in eval mode) under ``torch.no_grad``
    on a seeded random input of ``shape`` ``(1, channels, *spatial)``: the output must be
    one finite tensor with ``out_channels`` channels (any, when None) and the input's
    spatial shape. :class:`BundleProbeError` naming ``what`` otherwise."""
    shape = tuple(shape)
    generator = torch.Generator().manual_seed(0)
    network.eval()
    try:
        with torch.no_grad():
            output = network(torch.randn(shape, generator=generator))
    except Exception as exc:  # any torch/MONAI error in forward: the network does not run
        raise BundleProbeError(
            f"{what}: a forward pass on a {list(shape)} input failed: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(output, (list, tuple)) and output:
        output = output[0]
    if not isinstance(output, torch.Tensor):
        raise BundleProbeError(f"{what}: the network did not return a tensor")
    channels = out_channels if out_channels is not None else output.shape[1]
    expected = (1, channels, *shape[2:])
    if tuple(output.shape) != expected:
        raise BundleProbeError(
            f"{what}: a {list(shape)} input gave an output of shape "
            f"{list(output.shape)}, expected {list(expected)}"
        )
    if not bool(torch.isfinite(output).all()):
        raise BundleProbeError(f"{what}: the network's output is not finite")


def probe_bundle(registry: ModelRegistry, bundle: ModelBundle) -> None:
    """Load ``bundle`` on the CPU and run one forward pass (:func:`run_probe`) on the
    smallest cube its architecture accepts; raise :class:`BundleProbeError` (or the
    registry's integrity errors) when it does not load or run."""
    try:
        network = registry.load_network(bundle, "cpu")
    except RegistryError:
        raise
    except ModelsError as exc:
        raise BundleProbeError(str(exc)) from exc
    in_channels, classes = _task_channels(bundle)
    if isinstance(network, CascadeNetwork):  # each stage on its own smallest input
        for name, stage in zip(
            (LOCATOR, REFINER), stage_architectures(bundle.card.architecture), strict=True
        ):
            shape = probe_shape(stage, in_channels)
            run_probe(network.get_submodule(name), shape, classes, f"model {bundle.ref} {name}")
        return
    shape = probe_shape(bundle.card.architecture, in_channels)
    run_probe(network, shape, classes, f"model {bundle.ref}")
