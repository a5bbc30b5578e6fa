"""The validation gate: the decision rule, and a real run with the shipped glioma model
on phantom held-out cases - a deliberately degraded candidate is rejected, an equal one
is promoted (and then used), and rollback restores the previous model."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from appliance.config import AppConfig, load_config
from appliance.errors import GateError, ModelImportError
from appliance.site_models.gate import GateCase, GateDecision, decide, latest_reports, run_gate
from appliance.site_models.registry import (
    NetworkCache,
    register_candidate,
    register_shipped,
    registry_for,
)
from appliance.store import Store
from models.lifecycle import ModelState
from models.phantoms import MR_DEFAULT, generate_phantom

# -- the rule ---------------------------------------------------------------------------


def test_promotes_within_the_margin_and_rejects_beyond_it() -> None:
    active = {"liver": 0.95, "tumour": 0.70}
    decision, labels, _ = decide(
        {"liver": 0.945, "tumour": 0.72}, active, cases=5, margin=0.01, min_cases=3
    )
    assert decision is GateDecision.PROMOTED
    assert [c.passed for c in labels] == [True, True]
    decision, labels, reason = decide(
        {"liver": 0.96, "tumour": 0.65}, active, cases=5, margin=0.01, min_cases=3
    )
    assert decision is GateDecision.REJECTED
    assert [c.passed for c in labels] == [True, False]
    assert "tumour" in reason and "-0.050" in reason


def test_too_few_cases_decides_nothing_and_no_active_model_promotes() -> None:
    decision, _, reason = decide({"glioma": 0.9}, {"glioma": 0.5}, cases=2, margin=0, min_cases=3)
    assert decision is GateDecision.UNDECIDED and "at least 3" in reason
    decision, labels, reason = decide({"glioma": 0.4}, None, cases=3, margin=0, min_cases=3)
    assert decision is GateDecision.PROMOTED and labels[0].active_dice is None
    assert "no active model" in reason


def test_a_nan_candidate_score_fails() -> None:
    decision, _, _ = decide({"glioma": math.nan}, {"glioma": 0.5}, cases=3, margin=0.5, min_cases=1)
    assert decision is GateDecision.REJECTED


# -- a real run -------------------------------------------------------------------------

#: a coarse, small brain MR protocol: the shipped glioma model still finds the tumour
SMALL_MR = replace(MR_DEFAULT, spacing_mm=(4.0, 3.0, 3.0), matrix=(48, 80, 80), seed=9310)


@pytest.fixture(scope="module")
def held_out() -> list[GateCase]:
    cases = []
    for k in range(3):
        p = generate_phantom("mr_t1c", SMALL_MR, k)
        cases.append(GateCase(f"case-{k}", p.image, p.labels, p.affine_lps))
    return cases


@pytest.fixture
def site(tmp_path: Path) -> tuple[AppConfig, Store]:
    path = tmp_path / "appliance.toml"
    path.write_text(
        f'[storage]\nroot = "{tmp_path / "data"}"\nfsync = false\n'
        '[models]\ndevice = "cpu"\ngate_margin = 0.02\ngate_min_cases = 3\n',
        encoding="utf-8",
    )
    config = load_config(path)
    store = Store(config.storage.database)
    register_shipped(store, config)  # the shipped demo models become active
    return config, store


def _weights(config: AppConfig, store: Store, *, noise: float) -> dict[str, torch.Tensor]:
    active = store.active_model("glioma_mr")
    assert active is not None
    registry = registry_for(config)
    state = registry.load_state_dict(registry.get("glioma_mr", active.version))
    gen = torch.Generator().manual_seed(0)
    out = {}
    for key, value in state.items():
        if noise and value.is_floating_point() and value.ndim > 1:
            value = value + noise * value.std() * torch.randn(value.shape, generator=gen)
        out[key] = value
    return out


def test_degraded_candidate_is_rejected_equal_one_promoted_then_rolled_back(
    site: tuple[AppConfig, Store], held_out: list[GateCase]
) -> None:
    config, store = site
    shipped = store.active_model("glioma_mr")
    assert shipped is not None and shipped.state is ModelState.ACTIVE
    cache = NetworkCache(config)
    source = {"kind": "federated", "strategy": "fedavg", "run_id": "test-run", "rounds": 2}

    degraded = register_candidate(
        store,
        config,
        parent=shipped,
        version="0.9.0-degraded",
        state_dict=_weights(config, store, noise=2.0),
        training_data="test: shipped weights plus heavy noise",
        source=source,
        federated_round=2,
    )
    assert degraded.state is ModelState.CANDIDATE and degraded.federated_round == 2
    report = run_gate(store, config, "glioma_mr", "0.9.0-degraded", held_out, cache=cache)
    assert report.decision is GateDecision.REJECTED, report.format_text()
    (glioma,) = report.labels
    assert glioma.active_dice is not None and glioma.active_dice > 0.5
    assert glioma.candidate_dice < glioma.active_dice - 0.02
    assert store.get_model("glioma_mr", "0.9.0-degraded").state is ModelState.REJECTED
    assert store.active_model("glioma_mr") == store.get_model("glioma_mr", shipped.version)
    with pytest.raises(GateError):  # a rejected model never goes through again
        run_gate(store, config, "glioma_mr", "0.9.0-degraded", held_out, cache=cache)

    register_candidate(
        store,
        config,
        parent=shipped,
        version="0.9.0",
        state_dict=_weights(config, store, noise=0.0),
        training_data="test: the shipped weights unchanged",
        source=source,
        federated_round=2,
    )
    report = run_gate(store, config, "glioma_mr", "0.9.0", held_out, cache=cache)
    assert report.decision is GateDecision.PROMOTED, report.format_text()
    assert report.labels[0].delta == pytest.approx(0.0, abs=1e-9)
    active = store.active_model("glioma_mr")
    assert active is not None and active.version == "0.9.0"
    card = registry_for(config).get("glioma_mr", "0.9.0").card
    assert card.parent_version == shipped.version and card.source["strategy"] == "fedavg"

    reports = latest_reports(config, "glioma_mr")
    assert [r["decision"] for r in reports] == ["promoted", "rejected"]
    assert json.dumps(reports)  # plain JSON, no NaN

    back = store.rollback("glioma_mr")
    assert back.version == shipped.version
    assert store.get_model("glioma_mr", "0.9.0").state is ModelState.RETIRED


def test_candidate_weights_must_fit_the_parent_architecture(site: tuple[AppConfig, Store]) -> None:
    config, store = site
    shipped = store.active_model("glioma_mr")
    assert shipped is not None
    with pytest.raises(ModelImportError, match="do not fit"):
        register_candidate(
            store,
            config,
            parent=shipped,
            version="0.9.2",
            state_dict={"nope": torch.zeros(2)},
            training_data="x",
            source={"kind": "federated"},
        )
    assert not registry_for(config).bundle_path("glioma_mr", "0.9.2").exists()


def test_too_few_held_out_cases_leaves_the_candidate_waiting(
    site: tuple[AppConfig, Store], held_out: list[GateCase]
) -> None:
    config, store = site
    shipped = store.active_model("glioma_mr")
    assert shipped is not None
    register_candidate(
        store,
        config,
        parent=shipped,
        version="0.9.1",
        state_dict=_weights(config, store, noise=0.0),
        training_data="x",
        source={"kind": "federated"},
    )
    report = run_gate(store, config, "glioma_mr", "0.9.1", held_out[:1], cache=NetworkCache(config))
    assert report.decision is GateDecision.UNDECIDED
    assert store.get_model("glioma_mr", "0.9.1").state is ModelState.CANDIDATE
