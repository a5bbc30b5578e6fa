"""Real MONAI model-zoo bundles for tests: their configs from ``../shared/data`` and
weights built here from each config's ``network_def`` (the real weights are not
downloadable). Tests skip with the path when the shared data is not on the machine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.peers import interop_required

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
ZOO = DATA / "monai_model_zoo"
#: Non-commercial bundles: tests may read them; nothing from there is copied into the repo.
NONCOMMERCIAL_ZOO = DATA / "noncommercial" / "monai_model_zoo"


def zoo_configs(name: str, root: Path = ZOO) -> Path:
    """``<root>/<name>/configs``, or skip the test naming the missing path."""
    path = root / name / "configs"
    if not path.is_dir():
        if interop_required():
            pytest.fail(f"shared test data {path} is missing")
        pytest.skip(f"shared test data {path} is not on this machine")
    return path


def zoo_metadata(name: str) -> dict[str, Any]:
    data = json.loads((zoo_configs(name) / "metadata.json").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def zoo_bundle(tmp_path: Path, name: str, *, seed: int = 0) -> Path:
    """``tmp_path/<name>``: a copy of the real bundle's configs and ``models/model.pt``
    holding random weights of its ``network_def`` (which must be plain JSON)."""
    import torch

    from models.registry import build_network

    folder = tmp_path / name
    shutil.copytree(zoo_configs(name), folder / "configs")
    inference = json.loads((folder / "configs" / "inference.json").read_text(encoding="utf-8"))
    network_def = dict(inference["network_def"])
    target = network_def.pop("_target_")
    torch.manual_seed(seed)
    network = build_network({"network": target, "kwargs": network_def})
    (folder / "models").mkdir()
    torch.save(network.state_dict(), folder / "models" / "model.pt")
    return folder
