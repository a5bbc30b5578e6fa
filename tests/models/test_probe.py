"""The test-load of a bundle: weights into the card's network and one forward pass."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.probe import BundleProbeError, probe_bundle, probe_shape
from models.registry import ModelRegistry

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "bundles"


@pytest.mark.parametrize(
    ("architecture", "expected"),
    [
        ({"network": "UNet", "kwargs": {"strides": [2, 2]}}, (1, 2, 32, 32, 32)),
        ({"network": "DynUNet", "kwargs": {"strides": [1, [2, 2, 1], 2]}}, (1, 2, 32, 32, 32)),
        ({"network": "UNet", "kwargs": {"strides": [2, 2, 2, 2, 2, 2]}}, (1, 2, 64, 64, 64)),
        ({"network": "UNet", "kwargs": {"strides": [3], "spatial_dims": 2}}, (1, 2, 33, 33)),
        ({"network": "SegResNet", "kwargs": {"blocks_down": [1, 2, 2, 4]}}, (1, 2, 32, 32, 32)),
        ({"network": "UNETR", "kwargs": {"img_size": [16, 24, 32]}}, (1, 2, 16, 24, 32)),
        ({"network": "BasicUNet", "kwargs": {}}, (1, 2, 32, 32, 32)),
    ],
)
def test_probe_shape_fits_the_architecture(architecture: dict, expected: tuple) -> None:
    assert probe_shape(architecture, 2) == expected


def test_every_shipped_bundle_passes_the_probe() -> None:
    registry = ModelRegistry(SHIPPED)
    bundles = registry.list()
    assert bundles
    for bundle in bundles:
        probe_bundle(registry, bundle)


def test_a_network_that_gives_nan_is_refused(tmp_path: Path) -> None:
    from tests.appliance.tiny_models import TINY_ARCHITECTURE, make_tiny_bundle

    good = make_tiny_bundle(tmp_path / "a")
    state = ModelRegistry(tmp_path / "a").load_state_dict(good)
    bad = ModelRegistry(tmp_path / "b").add(
        "liver_ct",
        "1.0.0",
        {k: torch.full_like(v, float("inf")) for k, v in state.items()},
        name=good.card.name,
        labels=good.card.labels,
        architecture=TINY_ARCHITECTURE,
        preprocessing=dict(good.card.preprocessing),
        intended_use="tests",
        training_data="none",
    )
    with pytest.raises(BundleProbeError, match=r"liver_ct/1\.0\.0"):
        probe_bundle(ModelRegistry(tmp_path / "b"), bad)
