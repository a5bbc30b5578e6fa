"""Network factory: a MONAI network for a :class:`TaskSpec` and a :class:`NetworkConfig`.

Every architecture here has normalisation layers (instance norm with learnable affine
parameters, or batch norm): the federation keeps those parameters local to each site,
and :func:`norm_parameter_names` lists them (running statistics included).

The default is small (MONAI UNet, 16-32-64-128 channels, two residual units): weights
of about 5 MB per task and fast CPU inference (see DESIGN.md's timing table).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
from monai.networks.nets import DynUNet, SegResNet, UNet
from torch import nn

from .errors import NetworkConfigError
from .tasks import TaskSpec


class Architecture(StrEnum):
    DYNUNET = "dynunet"
    SEGRESNET = "segresnet"
    UNET = "unet"


class Norm(StrEnum):
    INSTANCE = "instance"
    BATCH = "batch"


_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*d and InstanceNorm*d
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """Architecture of a segmentation network (the task gives channels and classes).

    ``filters`` are the feature channels per resolution level; the network halves the
    resolution ``len(filters) - 1`` times, so patch edges must be multiples of
    :attr:`downsampling_factor`. SegResNet needs ``filters`` to double at each level.
    ``num_res_units`` applies to UNet only.
    """

    name: Architecture = Architecture.UNET
    filters: tuple[int, ...] = (16, 32, 64, 128)
    norm: Norm = Norm.INSTANCE
    num_res_units: int = 2
    dropout: float = 0.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "name", Architecture(self.name))
            object.__setattr__(self, "norm", Norm(self.norm))
        except ValueError as exc:
            raise NetworkConfigError(str(exc)) from exc
        filters = tuple(self.filters)
        if not 2 <= len(filters) <= 5:
            raise NetworkConfigError("filters must list 2 to 5 resolution levels")
        if not all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in filters):
            raise NetworkConfigError("filters must be positive integers")
        if self.name is Architecture.SEGRESNET and any(
            f != filters[0] * 2**i for i, f in enumerate(filters)
        ):
            raise NetworkConfigError("SegResNet filters must double at each level")
        if not (isinstance(self.num_res_units, int) and self.num_res_units >= 0):
            raise NetworkConfigError("num_res_units must be an integer >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise NetworkConfigError("dropout must be in [0, 1)")
        object.__setattr__(self, "filters", filters)

    @property
    def downsampling_factor(self) -> int:
        """Total downsampling along each axis; patch edges must be multiples of it."""
        return int(2 ** (len(self.filters) - 1))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (for model cards)."""
        return {
            "name": str(self.name),
            "filters": list(self.filters),
            "norm": str(self.norm),
            "num_res_units": self.num_res_units,
            "dropout": self.dropout,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkConfig:
        try:
            return cls(
                name=Architecture(data["name"]),
                filters=tuple(int(f) for f in data["filters"]),
                norm=Norm(data.get("norm", Norm.INSTANCE)),
                num_res_units=int(data.get("num_res_units", 2)),
                dropout=float(data.get("dropout", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, NetworkConfigError):
                raise
            raise NetworkConfigError(f"invalid network config: {exc}") from exc


DEFAULT_NETWORK = NetworkConfig()


_NETWORK_CLASSES: dict[str, type[nn.Module]] = {
    "UNet": UNet,
    "DynUNet": DynUNet,
    "SegResNet": SegResNet,
}


def _norm_arg(norm: Norm) -> list[Any]:
    if norm is Norm.INSTANCE:
        # affine=True: per-channel scale and shift that the federation keeps local
        return ["INSTANCE", {"affine": True}]
    return ["BATCH", {}]


def network_architecture(spec: TaskSpec, config: NetworkConfig = DEFAULT_NETWORK) -> dict[str, Any]:
    """``{"network": MONAI class name, "kwargs": {...}}`` with plain JSON values: what a
    model card records so the registry can rebuild the same network."""
    factor = config.downsampling_factor
    if any(p % factor for p in spec.patch_size):
        raise NetworkConfigError(
            f"patch size {spec.patch_size} of task {spec.name} is not a multiple of "
            f"{factor}, the downsampling factor of {config.name} with {len(config.filters)} levels"
        )
    levels = len(config.filters)
    norm = _norm_arg(config.norm)
    common = {
        "spatial_dims": 3,
        "in_channels": spec.in_channels,
        "out_channels": spec.num_classes,
    }
    if config.name is Architecture.UNET:
        return {
            "network": "UNet",
            "kwargs": {
                **common,
                "channels": list(config.filters),
                "strides": [2] * (levels - 1),
                "num_res_units": config.num_res_units,
                "norm": norm,
                "dropout": config.dropout,
            },
        }
    if config.name is Architecture.DYNUNET:
        strides = [1] + [2] * (levels - 1)
        return {
            "network": "DynUNet",
            "kwargs": {
                **common,
                "kernel_size": [3] * levels,
                "strides": strides,
                "upsample_kernel_size": strides[1:],
                "filters": list(config.filters),
                "norm_name": norm,
                "dropout": config.dropout or None,
                "res_block": False,
            },
        }
    return {
        "network": "SegResNet",
        "kwargs": {
            **common,
            "init_filters": config.filters[0],
            "dropout_prob": config.dropout or None,
            "norm": norm,
            "blocks_down": [1, 2, 2, 4, 4][:levels],
            "blocks_up": [1] * (levels - 1),
        },
    }


def build_network(spec: TaskSpec, config: NetworkConfig = DEFAULT_NETWORK) -> nn.Module:
    """A freshly initialised network: ``spec.in_channels`` in, ``spec.num_classes`` out
    (logits, background first), built from :func:`network_architecture`."""
    architecture = network_architecture(spec, config)
    cls = _NETWORK_CLASSES[architecture["network"]]
    try:
        return cls(**architecture["kwargs"])
    except (TypeError, ValueError, AssertionError) as exc:
        raise NetworkConfigError(f"MONAI rejected the {config.name} config: {exc}") from exc


def norm_parameter_names(model: nn.Module) -> set[str]:
    """State-dict keys that belong to normalisation layers: their affine parameters and
    buffers (running mean/variance, batch counters). The federation keeps these local."""
    state_keys = set(model.state_dict().keys())
    names: set[str] = set()
    for prefix, module in model.named_modules():
        if not isinstance(module, _NORM_TYPES):
            continue
        own = [n for n, _ in module.named_parameters(recurse=False)]
        own += [n for n, _ in module.named_buffers(recurse=False)]
        for name in own:
            key = f"{prefix}.{name}" if prefix else name
            if key in state_keys:
                names.add(key)
    return names


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes of the tensors in the state dict (the size of saved weights, roughly)."""
    return sum(
        int(t.numel()) * t.element_size()
        for t in model.state_dict().values()
        if isinstance(t, torch.Tensor)
    )
