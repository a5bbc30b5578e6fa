"""Network factory and normalisation-layer bookkeeping (models.networks)."""

from __future__ import annotations

import dataclasses
import json

import monai.networks.nets
import pytest
import torch
from torch import nn

from models.errors import ModelsError, NetworkConfigError
from models.networks import (
    DEFAULT_NETWORK,
    Architecture,
    NetworkConfig,
    Norm,
    build_network,
    network_architecture,
    norm_parameter_names,
    state_dict_bytes,
)
from models.tasks import TASKS, TaskName, TaskSpec, get_task
from tests.models.test_tasks import glioma_subregions_spec

TINY_FILTERS = {
    Architecture.UNET: (4, 8, 16),
    Architecture.DYNUNET: (4, 8, 16),
    Architecture.SEGRESNET: (4, 8, 16),
}


def tiny_spec(task: TaskName = TaskName.LIVER_CT) -> TaskSpec:
    return dataclasses.replace(get_task(task), patch_size=(16, 16, 16))


@pytest.mark.parametrize("norm", list(Norm))
@pytest.mark.parametrize("architecture", list(Architecture))
def test_every_architecture_builds_and_runs(architecture: Architecture, norm: Norm) -> None:
    spec = tiny_spec()
    config = NetworkConfig(name=architecture, filters=TINY_FILTERS[architecture], norm=norm)
    model = build_network(spec, config).eval()
    with torch.no_grad():
        out = model(torch.randn(1, spec.in_channels, *spec.patch_size))
    assert out.shape == (1, spec.num_classes, *spec.patch_size)
    names = norm_parameter_names(model)
    assert names, "the federation needs normalisation layers to keep local"
    assert names <= set(model.state_dict())
    if norm is Norm.BATCH:
        suffixes = {name.rsplit(".", 1)[1] for name in names}
        assert {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"} <= suffixes


def expected_norm_keys(model: nn.Module) -> set[str]:
    keys = set()
    for prefix, module in model.named_modules():
        if isinstance(module, nn.BatchNorm3d | nn.InstanceNorm3d):
            keys.update(f"{prefix}.{k}" for k in module.state_dict())
    return keys


@pytest.mark.parametrize("norm", list(Norm))
def test_norm_parameter_names_are_exactly_the_norm_layers(norm: Norm) -> None:
    model = build_network(tiny_spec(), NetworkConfig(filters=(4, 8, 16), norm=norm))
    names = norm_parameter_names(model)
    assert names == expected_norm_keys(model)
    assert not any(name.endswith("conv.weight") for name in names)
    others = set(model.state_dict()) - names
    assert any("conv" in name for name in others)


def test_norm_parameter_names_of_a_hand_made_model() -> None:
    model = nn.Sequential(nn.Conv3d(1, 2, 3), nn.BatchNorm3d(2), nn.GroupNorm(1, 2))
    assert norm_parameter_names(model) == {
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
        "2.weight",
        "2.bias",
    }


def test_default_networks_are_small() -> None:
    for spec in TASKS.values():
        model = build_network(spec, DEFAULT_NETWORK)
        assert state_dict_bytes(model) < 10 * 1024 * 1024


def test_multi_channel_task() -> None:
    spec = dataclasses.replace(glioma_subregions_spec(), patch_size=(16, 16, 16))
    model = build_network(spec, NetworkConfig(filters=(4, 8)))
    assert model(torch.zeros(1, 4, 16, 16, 16)).shape == (1, 4, 16, 16, 16)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "vnet"},
        {"norm": "group"},
        {"filters": (8,)},
        {"filters": (8, 16, 32, 64, 128, 256)},
        {"filters": (8, 0)},
        {"name": "segresnet", "filters": (8, 12, 16)},
        {"num_res_units": -1},
        {"dropout": 1.0},
    ],
)
def test_invalid_configs_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(NetworkConfigError) as info:
        NetworkConfig(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ModelsError)


def test_config_round_trips_through_a_dict() -> None:
    config = NetworkConfig(name="dynunet", filters=(8, 16, 32), norm="batch")  # type: ignore[arg-type]
    assert config.name is Architecture.DYNUNET
    assert NetworkConfig.from_dict(config.to_dict()) == config
    assert config.downsampling_factor == 4
    with pytest.raises(NetworkConfigError):
        NetworkConfig.from_dict({"filters": [1, 2]})


@pytest.mark.parametrize("architecture", list(Architecture))
def test_architecture_is_plain_json_that_rebuilds_the_same_network(
    architecture: Architecture,
) -> None:
    spec = tiny_spec()
    config = NetworkConfig(name=architecture, filters=TINY_FILTERS[architecture])
    described = network_architecture(spec, config)
    reloaded = json.loads(json.dumps(described))
    cls = getattr(monai.networks.nets, reloaded["network"])
    rebuilt = cls(**reloaded["kwargs"])
    ours = build_network(spec, config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }
    rebuilt.load_state_dict(ours.state_dict())
