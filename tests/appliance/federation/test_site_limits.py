"""A site refuses run settings over its own limits (``node_config`` ``max-local-steps``,
..., from its ``[federation]`` config) and weights that are not finite or not its
network's, before it trains."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict

from appliance.errors import FederationError
from appliance.federation import client_app
from appliance.federation.params import model_state, to_record
from appliance.federation.settings import RunSettings, run_config_map
from appliance.federation.site_settings import RunLimits, SiteSettings
from models.networks import build_network

RUN = RunSettings(
    task="glioma_mr",
    local_steps=2,
    batch_size=2,
    lr=1e-2,
    net_filters=(4, 8),
    net_res_units=0,
    patch_size=(16, 16, 16),
    target_spacing=(5.0, 5.0, 5.0),
)


def _context(tmp_path: Path, run: RunSettings, **node: Any) -> Context:
    node_config: dict[str, Any] = {
        "site-name": "site_a",
        "state-dir": str(tmp_path / "site_a"),
        "phantom-cases": 2,
        "phantom-matrix": "28,36,36",
        "phantom-spacing": "6,6,6",
        **node,
    }
    return Context(
        run_id=11,
        node_id=1,
        node_config=node_config,
        state=RecordDict(),
        run_config=run_config_map(run),
    )


def _message(arrays: ArrayRecord) -> Message:
    metadata = Metadata(
        run_id=11,
        message_id="instruction",
        src_node_id=0,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="1",
        created_at=0.0,
        ttl=600.0,
        message_type="train",
    )
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"server-round": 1})})
    return Message(content=content, metadata=metadata)


@pytest.fixture(scope="module")
def initial() -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    return model_state(build_network(RUN.task_spec(), RUN.network_config()))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            {"local_steps": 10**9},
            "local-steps=1000000000 is outside its limits (at most max-local-steps=10000)",
        ),
        ({"batch_size": 4096}, "batch-size=4096 is outside its limits (at most max-batch-size=64)"),
        (
            {"patch_size": (1024, 1024, 1024)},
            "patch-size=1024x1024x1024 is outside its limits (1073741824 voxels, at most "
            "max-patch-voxels=16777216)",
        ),
        ({"lr": 1e6}, "lr=1000000.0 is outside its limits (from min-lr=1e-07 to max-lr=1)"),
        ({"lr": 1e-9}, "lr=1e-09 is outside its limits (from min-lr=1e-07 to max-lr=1)"),
        ({"rounds": 5000}, "num-rounds=5000 is outside its limits (at most max-rounds=1000)"),
    ],
)
def test_run_settings_over_the_sites_limits_are_refused_before_training(
    tmp_path: Path, initial: dict[str, np.ndarray], change: dict[str, Any], says: str
) -> None:
    context = _context(tmp_path, replace(RUN, **change))
    with pytest.raises(FederationError) as info:
        client_app.train(_message(to_record(initial)), context)
    assert str(info.value) == f"this site refuses the run: {says}"
    assert not (tmp_path / "site_a").exists()  # nothing loaded, trained or kept


def test_the_limits_come_from_the_sites_node_config(
    tmp_path: Path, initial: dict[str, np.ndarray]
) -> None:
    context = _context(tmp_path, RUN, **{"max-local-steps": 1})
    with pytest.raises(FederationError, match=r"local-steps=2 .* max-local-steps=1\)"):
        client_app.train(_message(to_record(initial)), context)
    limits = RunLimits(max_batch_size=8, min_lr=1e-3, max_lr=0.1)
    site = SiteSettings.from_config({"site-name": "a", **limits.to_config()})
    assert site.limits == limits
    with pytest.raises(FederationError, match="min-lr, max-lr"):
        RunLimits.from_config({"min-lr": 0.5, "max-lr": 0.1})


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (lambda v: np.full_like(v, np.nan), "has non-finite values"),
        (lambda v: np.full_like(v, np.inf), "has non-finite values"),
        (lambda v: np.zeros((*v.shape, 2), v.dtype), "has shape"),
    ],
)
def test_weights_that_are_not_finite_or_not_the_networks_are_refused(
    tmp_path: Path, initial: dict[str, np.ndarray], spoil: Any, says: str
) -> None:
    key = next(k for k, v in initial.items() if v.dtype.kind == "f" and v.ndim > 1)
    sent = {**initial, key: spoil(initial[key])}
    with pytest.raises(FederationError) as info:
        client_app.train(_message(to_record(sent)), _context(tmp_path, RUN))
    assert str(info.value).startswith(f"this site refuses the weights it was sent: {key} {says}")
    missing = {k: v for k, v in initial.items() if k != key}
    with pytest.raises(FederationError, match=f"missing \\['{re.escape(key)}'\\]"):
        client_app.train(_message(to_record(missing)), _context(tmp_path, RUN))
