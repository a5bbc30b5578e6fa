"""After a federated run, at a site: the site's record of the run (written as the
ClientApp writes it, :func:`appliance.federation.outputs.write_result`) becomes a
candidate of the active model, stamped with strategy, run id and rounds, and the gate
decides on it. A run of another architecture is refused. The coordinator starts a run
from its active model (weights, architecture, pre-processing)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from appliance.config import AppConfig, load_config
from appliance.errors import HandoffError
from appliance.federation.handoff import candidate_version, hand_off
from appliance.federation.initial import initial_from_active
from appliance.federation.outputs import write_result
from appliance.federation.settings import RunSettings
from appliance.federation.site_state import load_state
from appliance.site_models.gate import GateCase, GateDecision
from appliance.store import ModelRecord, Store
from models.lifecycle import ModelState
from models.model_card import Version
from models.networks import NetworkConfig
from models.phantoms import MR_DEFAULT, generate_phantom
from models.registry import CARD_FILE, ModelRegistry
from tests.appliance.tiny_models import make_tiny_bundle

TASK = "glioma_mr"
RUN_ID = "8123456789"
TINY_NETWORK = NetworkConfig(filters=(4, 8), num_res_units=0)


@pytest.fixture
def site(tmp_path: Path) -> tuple[AppConfig, Store, ModelRecord]:
    path = tmp_path / "appliance.toml"
    path.write_text(
        f'[storage]\nroot = "{tmp_path / "data"}"\nfsync = false\n'
        '[models]\ndevice = "cpu"\ngate_margin = 0.0\ngate_min_cases = 2\n'
        '[federation]\ninsecure = true\nsite_name = "site_b"\n',
        encoding="utf-8",
    )
    config = load_config(path)
    store = Store(config.storage.database)
    bundle = make_tiny_bundle(config.models_root, task=TASK, version="0.1.0", seed=3)
    parent = store.register_model(
        task=TASK,
        version="0.1.0",
        name=bundle.card.name,
        weights_sha256=bundle.card.weights_sha256,
        federated_round=bundle.card.federated_round,
        path=bundle.path,
        origin="test",
        state=ModelState.ACTIVE,
    )
    return config, store, parent


def _parent_state(config: AppConfig) -> dict[str, np.ndarray]:
    registry = ModelRegistry(config.models_root)
    state = registry.load_state_dict(registry.get(TASK, "0.1.0"))
    return {k: v.numpy().copy() for k, v in state.items()}


SITES = ["site_a", "site_b", "site_c"]


def _site_record(
    site_dir: Path,
    state: dict[str, np.ndarray],
    network: NetworkConfig = TINY_NETWORK,
    contributors: list[str] = SITES,
) -> None:
    """The site's record of a finished fedbn run of three sites, as the ClientApp's
    ``query.final`` writes it; ``contributors``: the sites in its last round."""
    write_result(
        site_dir,
        run_id=RUN_ID,
        strategy="fedbn",
        rounds=3,
        task=TASK,
        network=network.to_dict(),
        task_overrides={"patch_size": [32, 32, 32], "target_spacing_mm": [3.0, 3.0, 3.0]},
        sites=SITES,
        state=state,
        global_model=True,
        norm_local=True,
        extra={"site": "site_b", "contributors": contributors},
    )


def _held_out() -> list[GateCase]:
    profile = replace(MR_DEFAULT, spacing_mm=(6.0, 6.0, 6.0), matrix=(24, 36, 36))
    cases = []
    for k in range(2):
        p = generate_phantom("mr_t1c", profile, k)
        cases.append(GateCase(f"case-{k}", p.image, p.labels, p.affine_lps))
    return cases


def test_a_run_that_lost_a_site_is_stamped_with_the_sites_of_its_last_round(
    site: tuple[AppConfig, Store, ModelRecord], tmp_path: Path
) -> None:
    config, store, _ = site
    site_dir = tmp_path / "site"
    _site_record(site_dir, _parent_state(config), contributors=["site_a", "site_b"])
    done = hand_off(store, config, site_dir, RUN_ID, cases=_held_out())
    card = json.loads((done.candidate.path / CARD_FILE).read_text())
    assert card["source"]["sites"] == SITES
    assert card["source"]["last_round_sites"] == ["site_a", "site_b"]
    assert "last round had updates from site_a, site_b only" in card["training_data"]
    # the gate judges it like any other candidate
    assert done.gate is not None and done.gate.decision is GateDecision.PROMOTED


def test_candidate_version_is_valid_and_sorts_between_parent_and_next_release() -> None:
    assert candidate_version("0.1.0", RUN_ID) == f"0.1.1-fed.{RUN_ID}"
    assert candidate_version("0.0.1-test", "007") == "0.0.2-fed.7"
    assert candidate_version("1.2.3-fed.5", "run/6") == "1.2.4-fed.run-6"
    parent, cand, release = (Version.parse(v) for v in ("0.1.0", "0.1.1-fed.42", "0.1.1"))
    assert parent < cand < release
    assert Version.parse("0.1.1-fed.42") < Version.parse("0.1.1-fed.100")
    with pytest.raises(HandoffError):
        candidate_version("0.1.0", "///")


def test_a_finished_run_becomes_a_candidate_and_the_gate_decides(
    site: tuple[AppConfig, Store, ModelRecord], tmp_path: Path
) -> None:
    config, store, parent = site
    site_dir = tmp_path / "site"
    _site_record(site_dir, _parent_state(config))
    done = hand_off(store, config, site_dir, RUN_ID, cases=_held_out())

    version = f"0.1.1-fed.{RUN_ID}"
    assert done.candidate.version == version and done.parent_version == "0.1.0"
    card = json.loads((done.candidate.path / CARD_FILE).read_text())
    assert card["source"] == {
        "kind": "federated",
        "strategy": "fedbn",
        "run_id": RUN_ID,
        "rounds": 3,
        "site": "site_b",
        "sites": SITES,
        "last_round_sites": SITES,
    }
    assert "only" not in card["training_data"]
    assert card["federated_round"] == 3 and card["parent_version"] == "0.1.0"
    assert card["architecture"] == json.loads((parent.path / CARD_FILE).read_text())["architecture"]
    # the same weights as the active model: no label is worse, so it is promoted
    assert done.gate is not None and done.gate.decision is GateDecision.PROMOTED
    assert done.gate.cases == 2 and done.gate.active_version == "0.1.0"
    active = store.active_model(TASK)
    assert active is not None and active.version == version
    assert store.get_model(TASK, "0.1.0").state is ModelState.RETIRED
    latest = ModelRegistry(config.models_root).latest(TASK)
    assert latest is not None and latest.version == version
    assert "PROMOTED" in done.summary()

    again = hand_off(store, config, site_dir, RUN_ID, cases=_held_out())
    assert again.existed and again.gate is None and again.candidate.version == version


def test_without_held_out_cases_the_gate_decides_nothing(
    site: tuple[AppConfig, Store, ModelRecord], tmp_path: Path
) -> None:
    config, store, _ = site
    site_dir = tmp_path / "site"
    _site_record(site_dir, _parent_state(config))
    done = hand_off(store, config, site_dir, RUN_ID)  # the store has no held-out cases
    assert done.gate is not None and done.gate.decision is GateDecision.UNDECIDED
    assert done.candidate.state is ModelState.CANDIDATE
    active = store.active_model(TASK)
    assert active is not None and active.version == "0.1.0"


def test_auto_validate_off_leaves_a_candidate(
    site: tuple[AppConfig, Store, ModelRecord], tmp_path: Path
) -> None:
    config, store, _ = site
    site_dir = tmp_path / "site"
    _site_record(site_dir, _parent_state(config))
    done = hand_off(store, config, site_dir, RUN_ID, validate=False)
    assert done.gate is None and done.candidate.state is ModelState.CANDIDATE
    assert "not validated" in done.summary()


def test_a_run_of_another_architecture_is_refused(
    site: tuple[AppConfig, Store, ModelRecord], tmp_path: Path
) -> None:
    config, store, _ = site
    site_dir = tmp_path / "site"
    wider = NetworkConfig(filters=(8, 16), num_res_units=0)
    from models.networks import build_network
    from models.tasks import get_task

    state = {k: v.numpy() for k, v in build_network(get_task(TASK), wider).state_dict().items()}
    _site_record(site_dir, state, wider)
    with pytest.raises(HandoffError, match="not the architecture of the active model"):
        hand_off(store, config, site_dir, RUN_ID)
    assert [m.version for m in store.list_models(TASK)] == ["0.1.0"]


def test_the_coordinator_starts_from_its_active_model(
    site: tuple[AppConfig, Store, ModelRecord], tmp_path: Path
) -> None:
    config, store, _ = site
    initial = initial_from_active(store, config, TASK, tmp_path / "coordinator")
    assert initial is not None and initial.record.version == "0.1.0"
    assert dict(initial.run_config) == {
        "net-filters": "4,8",
        "net-res-units": 0,
        "net-norm": "instance",
        "patch-size": "32,32,32",
        "target-spacing": "3,3,3",
        "initial-weights": str(initial.weights),
    }
    run = RunSettings.from_config({"task": TASK, **initial.run_config})
    assert run.network_config() == TINY_NETWORK
    weights = load_state(Path(run.initial_weights))
    parent = _parent_state(config)
    assert set(weights) == set(parent)
    assert all(np.array_equal(weights[k], parent[k]) for k in parent)
    assert "0.1.0" in initial.describe()
    assert initial_from_active(store, config, "liver_ct", tmp_path / "c2") is None
