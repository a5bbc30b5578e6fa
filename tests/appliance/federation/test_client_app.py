"""The ClientApp's handlers called directly (no SuperNode): FedBN keeps normalisation
entries at the site, FedGS sends a step-scaled update, gossip keeps its own model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict

from appliance.federation import client_app
from appliance.federation.params import from_record, model_state, to_record
from appliance.federation.settings import RunSettings, run_config_map
from appliance.federation.site_state import load_site_norm, run_dir
from models.networks import build_network, norm_parameter_names

RUN = RunSettings(
    task="glioma_mr",
    local_steps=2,
    batch_size=2,
    lr=1e-2,
    net_filters=(4, 8),
    net_res_units=0,
    patch_size=(16, 16, 16),
    target_spacing=(5.0, 5.0, 5.0),
    fedgs_threshold=0.3,
)


def _context(tmp_path: Path, site: str = "site_a") -> Context:
    node_config: dict[str, Any] = {
        "site-name": site,
        "state-dir": str(tmp_path / site),
        "phantom-preset": site,
        "phantom-cases": 2,
        "phantom-matrix": "28,36,36",
        "phantom-spacing": "6,6,6",
    }
    return Context(
        run_id=11,
        node_id=1,
        node_config=node_config,
        state=RecordDict(),
        run_config=run_config_map(RUN),
    )


def _message(arrays: ArrayRecord, config: dict[str, Any], kind: str = "train") -> Message:
    metadata = Metadata(
        run_id=11,
        message_id="instruction",
        src_node_id=0,
        dst_node_id=1,
        reply_to_message_id="",
        group_id="1",
        created_at=0.0,
        ttl=600.0,
        message_type=kind,
    )
    content = RecordDict({"arrays": arrays, "config": ConfigRecord(config)})
    return Message(content=content, metadata=metadata)


@pytest.fixture(scope="module")
def initial() -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    return model_state(build_network(RUN.task_spec(), RUN.network_config()))


@pytest.fixture(scope="module")
def norm_keys() -> set[str]:
    return norm_parameter_names(build_network(RUN.task_spec(), RUN.network_config()))


def test_fedbn_site_keeps_and_reuses_its_normalisation(
    tmp_path: Path, initial: dict[str, np.ndarray], norm_keys: set[str]
) -> None:
    context = _context(tmp_path)
    msg = _message(to_record(initial), {"mode": "fedbn", "server-round": 1})
    reply = client_app.train(msg, context)
    sent = from_record(reply.content.array_records["arrays"])
    assert not set(sent) & norm_keys and set(sent) == set(initial) - norm_keys
    kept = load_site_norm(tmp_path / "site_a", "glioma_mr")
    assert kept is not None and set(kept) == norm_keys
    assert any(not np.allclose(kept[k], initial[k]) for k in norm_keys)
    # the next round starts from the site's own normalisation entries, not the received
    again = client_app.train(
        _message(to_record(initial), {"mode": "fedbn", "server-round": 2}), context
    )
    assert again.content.metric_records["metrics"]["norm-entries-kept"] == len(norm_keys)
    kept2 = load_site_norm(tmp_path / "site_a", "glioma_mr")
    assert kept2 is not None
    assert any(not np.allclose(kept2[k], kept[k]) for k in norm_keys)


def test_fedgs_site_sends_a_scaled_update(tmp_path: Path, initial: dict[str, np.ndarray]) -> None:
    reply = client_app.train(
        _message(to_record(initial), {"mode": "fedgs", "server-round": 1}), _context(tmp_path)
    )
    metrics = reply.content.metric_records["metrics"]
    assert metrics["steps"] == 2 and metrics["step-scale-max"] >= 1.0
    update = from_record(reply.content.array_records["arrays"])
    assert set(update) == set(initial)
    # each entry travels in the weights' own dtype (float32), not float64
    assert all(update[k].dtype == initial[k].dtype for k in update)
    assert any(np.abs(v).max() > 0 for v in update.values())
    # an update is small next to the weights themselves
    assert all(np.abs(update[k]).max() < 1.0 for k in update)


def test_gossip_site_keeps_its_model_and_averages_with_the_peer(
    tmp_path: Path, initial: dict[str, np.ndarray]
) -> None:
    context = _context(tmp_path)
    first = client_app.train(
        _message(to_record(initial), {"mode": "gossip", "server-round": 1, "has-peer": False}),
        context,
    )
    own = from_record(first.content.array_records["arrays"])
    path = run_dir(tmp_path / "site_a", "11") / "model.pt"
    assert path.is_file()
    peer = {k: (v + 1.0 if v.dtype.kind == "f" else v) for k, v in own.items()}
    averaged = client_app.average(
        _message(to_record(peer), {"peer-cases": 1}, kind="train.average"), context
    )
    merged = from_record(averaged.content.array_records["arrays"])
    key = next(k for k in own if own[k].dtype.kind == "f")
    # one training case here, one at the peer: the plain mean
    assert np.allclose(merged[key], own[key] + 0.5, atol=1e-5)
