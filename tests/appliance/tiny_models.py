"""A tiny, untrained model bundle for pipeline tests (weights need not be good: tests
assert on structure, alignment and provenance, not on quality)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from models.model_card import labels_for_task, preprocessing_for_task
from models.registry import ModelBundle, ModelRegistry, build_network
from models.tasks import get_task

TINY_ARCHITECTURE: dict[str, Any] = {
    "network": "UNet",
    "kwargs": {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "channels": [4, 8],
        "strides": [2],
        "num_res_units": 0,
        "norm": ["INSTANCE", {"affine": True}],
    },
}


#: a tiny DynUNet refiner: three levels (MONAI's least), stride 1 first, the layout the
#: federation's run settings build (:func:`models.networks.network_architecture`)
TINY_DYNUNET_ARCHITECTURE: dict[str, Any] = {
    "network": "DynUNet",
    "kwargs": {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": 3,
        "kernel_size": [3, 3, 3],
        "strides": [1, 2, 2],
        "upsample_kernel_size": [2, 2],
        "filters": [4, 8, 16],
        "norm_name": ["INSTANCE", {"affine": True}],
        "dropout": None,
        "res_block": False,
    },
}


def _register_tiny(
    root: Path,
    task: str,
    version: str,
    seed: int,
    *,
    name: str,
    federated_round: int,
    background_bias: float | None = None,
) -> ModelBundle:
    spec = get_task(task)
    architecture = dict(TINY_ARCHITECTURE)
    architecture["kwargs"] = {
        **TINY_ARCHITECTURE["kwargs"],
        "in_channels": len(spec.channels),
        "out_channels": spec.num_classes,
    }
    torch.manual_seed(seed)
    network = build_network(architecture)
    if background_bias is not None:
        with torch.no_grad():
            [p for n, p in network.named_parameters() if n.endswith("bias")][-1][0] = (
                background_bias
            )
    preprocessing = preprocessing_for_task(spec)
    preprocessing["patch_size"] = [32, 32, 32]
    preprocessing["target_spacing_mm"] = [3.0, 3.0, 3.0]
    return ModelRegistry(root).add(
        task,
        version,
        network.state_dict(),
        name=name,
        labels=labels_for_task(spec),
        architecture=architecture,
        preprocessing=preprocessing,
        intended_use="Tests only: untrained. Not for clinical use.",
        training_data="none",
        federated_round=federated_round,
    )


def make_tiny_bundle(
    root: Path, *, task: str = "liver_ct", version: str = "0.0.1-test", seed: int = 0
) -> ModelBundle:
    """Register a seeded, untrained 2-level UNet for ``task`` under ``root`` (a registry
    root). Coarse spacing and a 32^3 patch keep CPU inference well under a second."""
    return _register_tiny(root, task, version, seed, name="Tiny test UNet", federated_round=2)


def make_background_bundle(
    root: Path, *, task: str = "liver_ct", version: str = "0.0.1-test", seed: int = 0
) -> ModelBundle:
    """Like :func:`make_tiny_bundle`, but the last bias says "background" loudly: a few
    training steps cannot change its masks, so scoring full-size phantoms stays fast (an
    untrained network's noise everywhere makes HD95's surfaces huge)."""
    return _register_tiny(
        root,
        task,
        version,
        seed,
        name="Tiny background UNet",
        federated_round=1,
        background_bias=8.0,
    )


def make_tiny_cascade_bundle(
    root: Path,
    *,
    version: str = "0.0.1-cascade",
    locator_finds: bool = True,
    seed: int = 0,
    refiner: dict[str, Any] | None = None,
    refiner_spacing_mm: float = 2.0,
) -> ModelBundle:
    """A two-stage liver_ct bundle (:mod:`models.cascade`) of two tiny UNets (``refiner``:
    another refiner architecture, e.g. :data:`TINY_DYNUNET_ARCHITECTURE`). The locator
    has all weights zero and its last bias says "liver everywhere" (``locator_finds``) or
    "background everywhere"; the refiner is seeded and untrained, on a 2 mm grid (or
    ``refiner_spacing_mm``)."""
    from models.cascade_spec import RefinerSettings, cascade_architecture

    spec = get_task("liver_ct")
    stage = {**TINY_ARCHITECTURE, "kwargs": {**TINY_ARCHITECTURE["kwargs"]}}
    architecture = cascade_architecture(stage, refiner or stage)
    torch.manual_seed(seed)
    network = build_network(architecture)
    locator = network.get_submodule("locator")
    with torch.no_grad():
        for parameter in locator.parameters():
            parameter.zero_()
        last_bias = [p for n, p in locator.named_parameters() if n.endswith("bias")][-1]
        last_bias[1 if locator_finds else 0] = 5.0
    preprocessing = preprocessing_for_task(spec)
    preprocessing["patch_size"] = [32, 32, 32]
    preprocessing["target_spacing_mm"] = [3.0, 3.0, 3.0]
    grid = (refiner_spacing_mm, refiner_spacing_mm, refiner_spacing_mm)
    preprocessing["refiner"] = RefinerSettings(grid, (32, 32, 32), 6.0).to_dict()
    return ModelRegistry(root).add(
        "liver_ct",
        version,
        network.state_dict(),
        name="Tiny test cascade",
        labels=labels_for_task(spec),
        architecture=architecture,
        preprocessing=preprocessing,
        intended_use="Tests only: untrained. Not for clinical use.",
        training_data="none",
        federated_round=3,
    )
