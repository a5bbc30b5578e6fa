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


_QUERIES = """
import json, sys
from pathlib import Path
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict
from appliance.federation import client_app
from appliance.federation.settings import RunSettings, run_config_map

tmp, weights = Path(sys.argv[1]), Path(sys.argv[2])
run = RunSettings(task="glioma_mr", net_filters=(4, 8), net_res_units=0,
                  patch_size=(16, 16, 16), target_spacing=(5.0, 5.0, 5.0))
node = {"site-name": "site_a", "state-dir": str(tmp / "site_a"), "phantom-preset": "site_a",
        "phantom-cases": 2, "phantom-matrix": "28,36,36", "phantom-spacing": "6,6,6"}
context = Context(run_id=11, node_id=1, node_config=node, state=RecordDict(),
                  run_config=run_config_map(run))

def message(kind, content):
    metadata = Metadata(run_id=11, message_id="m", src_node_id=0, dst_node_id=1,
                        reply_to_message_id="", group_id="1", created_at=0.0, ttl=600.0,
                        message_type=kind)
    return Message(content=content, metadata=metadata)

info = client_app.info(message("query.info", RecordDict()), context)
out = {"info": dict(info.content.metric_records["metrics"]),
       "after_info": sorted(m for m in ("torch", "monai") if m in sys.modules)}
if weights.is_file():
    import numpy as np
    from appliance.federation.params import to_record
    with np.load(weights) as data:
        arrays = to_record({k: data[k] for k in data.files})
    final = message("query.final", RecordDict(
        {"arrays": arrays, "config": ConfigRecord({"mode": "full", "sites": ["site_a"]})}))
    try:
        out["final"] = dict(client_app.final(final, context).content.metric_records["metrics"])
    except Exception as exc:
        out["final"] = {"refused": str(exc)}
    out["after_final"] = sorted(m for m in ("torch", "monai") if m in sys.modules)
print(json.dumps(out))
"""


def _queries(tmp_path: Path, weights: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """``query.info`` and then (with ``weights``) ``query.final`` in a fresh process, as a
    SuperNode runs each message: the replies and which of torch/MONAI were imported."""
    import json
    import subprocess
    import sys

    path = tmp_path / "final.npz"
    path.unlink(missing_ok=True)
    if weights is not None:
        np.savez(path, **weights)
    done = subprocess.run(
        [sys.executable, "-c", _QUERIES, str(tmp_path), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _run_config_context(tmp_path: Path) -> Context:
    """The context ``_QUERIES`` builds (same run settings, so the same run)."""
    run = RunSettings(
        task="glioma_mr",
        net_filters=(4, 8),
        net_res_units=0,
        patch_size=(16, 16, 16),
        target_spacing=(5.0, 5.0, 5.0),
    )
    context = _context(tmp_path)
    return Context(
        run_id=11,
        node_id=1,
        node_config=dict(context.node_config),
        state=RecordDict(),
        run_config=run_config_map(run),
    )


def test_a_query_loads_no_model_stack_and_final_checks_the_recorded_shapes(
    tmp_path: Path,
) -> None:
    """``query.info`` counts cases without torch or MONAI; once the site has built the
    run's network (a train message), ``query.final`` checks the weights against the shapes
    it recorded then, without MONAI, and still refuses weights of another shape."""
    first = _queries(tmp_path, None)
    assert first["info"]["cases"] == 1 and first["info"]["held-out"] == 1
    assert first["after_info"] == []

    context = _run_config_context(tmp_path)
    run = RunSettings.from_config(dict(context.run_config))
    torch.manual_seed(0)
    weights = model_state(build_network(run.task_spec(), run.network_config()))
    client_app.train(_message(to_record(weights), {"mode": "full", "server-round": 1}), context)
    assert (run_dir(tmp_path / "site_a", "11") / client_app.NETWORK_FILE).is_file()

    done = _queries(tmp_path, weights)
    assert done["final"]["written"] == 1
    assert "monai" not in done["after_final"]
    wrong = dict(weights)
    key = next(k for k, v in wrong.items() if v.ndim == 5)
    wrong[key] = np.zeros((1, *wrong[key].shape[1:]), dtype=wrong[key].dtype)
    refused = _queries(tmp_path, wrong)
    reason = refused["final"]["refused"]
    assert "refuses the weights" in reason and key in reason


def test_final_without_a_recorded_network_checks_against_the_network(tmp_path: Path) -> None:
    """A site that never built this run's network (or holds a record of other settings)
    builds it to check the final weights: nothing is taken on trust."""
    context = _run_config_context(tmp_path)
    run = RunSettings.from_config(dict(context.run_config))
    weights = model_state(build_network(run.task_spec(), run.network_config()))
    record = run_dir(tmp_path / "site_a", "11") / client_app.NETWORK_FILE
    record.parent.mkdir(parents=True)
    # a record of another run's settings, which claims any shape would do
    record.write_text('{"run": "other", "network": {}, "shapes": {}}', encoding="utf-8")
    key = next(k for k, v in weights.items() if v.ndim == 5)
    wrong = dict(weights)
    wrong[key] = np.zeros((2, *wrong[key].shape[1:]), dtype=wrong[key].dtype)
    refused = _queries(tmp_path, wrong)
    assert "refuses the weights" in refused["final"]["refused"]
    assert "monai" in refused["after_final"]  # it built the network to check
    done = _queries(tmp_path, weights)
    assert done["final"]["written"] == 1
