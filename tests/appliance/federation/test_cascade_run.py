"""Federating a two-stage (cascade) model: only its refiner is trained. The coordinator
derives the run from the active cascade's refiner (network, grid, margin, ``refiner.*``
weights); sites train and score it on their cases cut to truth boxes; FedBN keeps the
refiner's normalisation entries at the sites; the hand-off joins the parent's locator,
bit for bit, with the federated refiner under the parent's card, and the gate judges the
whole cascade. A run of another refiner, or a whole-model run, is refused."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from appliance.config import AppConfig, StrategyName, load_config
from appliance.errors import HandoffError
from appliance.federation.handoff import hand_off
from appliance.federation.initial import initial_from_active
from appliance.federation.outputs import read_result, site_result, write_result
from appliance.federation.params import from_record
from appliance.federation.settings import RunSettings
from appliance.federation.site_state import load_site_norm, load_state
from appliance.site_models.gate import GateCase, GateDecision
from appliance.store import ModelRecord, Store
from models.cascade_spec import REFINER
from models.cascade_training import split_state_dict
from models.lifecycle import ModelState
from models.networks import Architecture, NetworkConfig, build_network, norm_parameter_names
from models.phantoms import SITE_PRESETS, PhantomKind, generate_phantom
from models.registry import CARD_FILE, ModelRegistry
from tests.appliance.federation.in_process import RUN_ID, phantom_site, run_in_process
from tests.appliance.tiny_models import TINY_DYNUNET_ARCHITECTURE, make_tiny_cascade_bundle

TASK = "liver_ct"
PARENT = "0.1.0"
#: the tiny cascade's DynUNet refiner as run settings
REFINER_NETWORK = NetworkConfig(name=Architecture.DYNUNET, filters=(4, 8, 16))
PHANTOM = {"phantom-matrix": "16,32,32", "phantom-spacing": "6,6,6"}


@pytest.fixture
def site(tmp_path: Path) -> tuple[AppConfig, Store, ModelRecord]:
    """An appliance whose active liver_ct model is a tiny cascade with a DynUNet refiner
    on a 4 mm grid (coordinator and site alike)."""
    path = tmp_path / "appliance.toml"
    path.write_text(
        f'[storage]\nroot = "{tmp_path / "data"}"\nfsync = false\n'
        '[models]\ndevice = "cpu"\ngate_margin = 0.0\ngate_min_cases = 2\n'
        '[federation]\ninsecure = true\nsite_name = "site_a"\n',
        encoding="utf-8",
    )
    config = load_config(path)
    store = Store(config.storage.database)
    bundle = make_tiny_cascade_bundle(
        config.models_root,
        version=PARENT,
        seed=3,
        refiner=TINY_DYNUNET_ARCHITECTURE,
        refiner_spacing_mm=4.0,
    )
    parent = store.register_model(
        task=TASK,
        version=PARENT,
        name=bundle.card.name,
        weights_sha256=bundle.card.weights_sha256,
        federated_round=bundle.card.federated_round,
        path=bundle.path,
        origin="test",
        state=ModelState.ACTIVE,
    )
    return config, store, parent


def _parent_stages(config: AppConfig) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    registry = ModelRegistry(config.models_root)
    return split_state_dict(registry.load_state_dict(registry.get(TASK, PARENT)))


def _run_from_active(
    config: AppConfig, store: Store, directory: Path, **settings: Any
) -> RunSettings:
    initial = initial_from_active(store, config, TASK, directory / "initial")
    assert initial is not None
    return replace(
        RunSettings.from_config({"task": TASK, **initial.run_config}),
        min_sites=2,
        rounds=1,
        local_steps=2,
        batch_size=1,
        lr=1e-2,
        output_dir=str(directory / "coordinator"),
        **settings,
    )


def _held_out() -> list[GateCase]:
    cases = []
    for k in range(2):
        profile = replace(SITE_PRESETS["site_c"].ct, matrix=(16, 32, 32), spacing_mm=(6.0,) * 3)
        p = generate_phantom(PhantomKind.CT_ABDOMEN, profile, k)
        cases.append(GateCase(f"case-{k}", p.image, p.labels, p.affine_lps))
    return cases


def test_a_cascade_run_starts_from_the_active_models_refiner(
    site: tuple[AppConfig, Store, ModelRecord], tmp_path: Path
) -> None:
    config, store, _ = site
    initial = initial_from_active(store, config, TASK, tmp_path / "coordinator")
    assert initial is not None
    assert dict(initial.run_config) == {
        "net-class": "dynunet",
        "net-filters": "4,8,16",
        "net-norm": "instance",
        "patch-size": "32,32,32",
        "target-spacing": "4,4,4",
        "refiner-margin": 6.0,
        "initial-weights": str(initial.weights),
    }
    run = RunSettings.from_config({"task": TASK, **initial.run_config})
    assert run.stage == REFINER and run.network_config() == REFINER_NETWORK
    spec = run.task_spec()
    assert spec.patch_size == (32, 32, 32) and spec.target_spacing_mm == (4.0, 4.0, 4.0)
    refiner_settings = run.refiner_settings()
    assert refiner_settings is not None and refiner_settings.margin_mm == 6.0
    # the initial weights are the bundle's refiner.* entries, as they are
    _, refiner = _parent_stages(config)
    weights = load_state(Path(run.initial_weights))
    assert set(weights) == set(refiner)
    assert all(np.array_equal(weights[k], refiner[k].numpy()) for k in refiner)
    # and they are exactly the network every site builds from the run settings
    assert set(build_network(spec, run.network_config()).state_dict()) == set(weights)
    described = initial.describe()
    assert "refiner" in described and "DynUNet filters 4,8,16" in described
    assert "margin 6 mm" in described


def test_a_fedbn_run_trains_the_refiner_keeps_its_norms_local_and_hands_off_a_cascade(
    site: tuple[AppConfig, Store, ModelRecord], tmp_path: Path, flower_task: None
) -> None:
    config, store, parent = site
    run = _run_from_active(config, store, tmp_path, strategy=StrategyName.FEDBN)
    initial = load_state(Path(run.initial_weights))
    norm_keys = norm_parameter_names(build_network(run.task_spec(), run.network_config()))
    assert norm_keys and all("refiner" not in k for k in norm_keys)
    sites = {
        name: phantom_site(tmp_path / "sites", name, **PHANTOM) for name in ("site_a", "site_b")
    }
    grid = run_in_process(run, sites)

    # every training reply left the refiner's normalisation entries out
    trained = [r for r in grid.replies if r.metadata.message_type == "train"]
    assert len(trained) == 2
    for reply in trained:
        sent = from_record(reply.content.array_records["arrays"])
        assert set(sent) == set(initial) - norm_keys
    # the held-out score is the refiner's on the truth box
    scored = [r for r in grid.replies if r.metadata.message_type == "evaluate"]
    dice = [r.content.metric_records["metrics"]["dice"] for r in scored]
    assert len(dice) == 2 and all(isinstance(d, float) and 0.0 <= d <= 1.0 for d in dice)

    # the aggregate never touched them: the global norms are the initial ones
    result = read_result(tmp_path / "coordinator" / "runs" / str(RUN_ID))
    assert (
        result.stage == REFINER
        and result.norm_local
        and result.task_overrides
        == {
            "patch_size": [32, 32, 32],
            "target_spacing_mm": [4.0, 4.0, 4.0],
            "margin_mm": 6.0,
        }
    )
    final = result.load_weights()
    assert all(np.array_equal(final[k], initial[k]) for k in norm_keys)
    assert any(not np.array_equal(final[k], initial[k]) for k in set(initial) - norm_keys)
    # each site kept its own, apart from a UNet's of the task
    kept = {name: load_site_norm(tmp_path / "sites" / name, f"{TASK}.{REFINER}") for name in sites}
    assert load_site_norm(tmp_path / "sites" / "site_a", TASK) is None
    for name, norms in kept.items():
        assert norms is not None and set(norms) == norm_keys
        assert any(not np.array_equal(norms[k], initial[k]) for k in norm_keys)
        own = site_result(tmp_path / "sites" / name, str(RUN_ID)).load_weights()
        assert all(np.array_equal(own[k], norms[k]) for k in norm_keys)
    a, b = kept["site_a"], kept["site_b"]
    assert a is not None and b is not None
    assert any(not np.array_equal(a[k], b[k]) for k in norm_keys)

    # site_a's record becomes a candidate: the parent's locator + the federated refiner
    done = hand_off(store, config, tmp_path / "sites" / "site_a", str(RUN_ID), cases=_held_out())
    registry = ModelRegistry(config.models_root)
    candidate = registry.get(TASK, done.candidate.version)
    locator, refiner = split_state_dict(registry.load_state_dict(candidate))
    parent_locator, parent_refiner = _parent_stages(config)
    assert set(locator) == set(parent_locator)
    assert all(torch.equal(locator[k], parent_locator[k]) for k in parent_locator)
    assert all(locator[k].dtype == parent_locator[k].dtype for k in parent_locator)
    own = site_result(tmp_path / "sites" / "site_a", str(RUN_ID)).load_weights()
    assert set(refiner) == set(parent_refiner)
    assert all(np.array_equal(refiner[k].numpy(), own[k]) for k in own)
    assert any(not torch.equal(refiner[k], parent_refiner[k]) for k in parent_refiner)
    card = json.loads((candidate.path / CARD_FILE).read_text())
    parent_card = json.loads((parent.path / CARD_FILE).read_text())
    assert card["architecture"] == parent_card["architecture"]
    assert card["preprocessing"] == parent_card["preprocessing"]
    assert card["federated_round"] == 1 and card["parent_version"] == PARENT
    assert card["source"]["strategy"] == "fedbn" and card["source"]["run_id"] == str(RUN_ID)
    # the gate judged the whole cascade (locator, box, refiner) on both held-out cases
    assert done.gate is not None and done.gate.cases == 2
    assert done.gate.decision is not GateDecision.UNDECIDED
    assert all(np.isfinite(c.candidate_dice) for c in done.gate.labels)


def test_a_fedavg_run_changes_the_refiner_only(
    site: tuple[AppConfig, Store, ModelRecord], tmp_path: Path, flower_task: None
) -> None:
    config, store, _ = site
    run = _run_from_active(config, store, tmp_path, evaluate=False)
    sites = {
        name: phantom_site(tmp_path / "sites", name, **PHANTOM) for name in ("site_a", "site_b")
    }
    run_in_process(run, sites)
    final = read_result(tmp_path / "coordinator" / "runs" / str(RUN_ID)).load_weights()
    initial = load_state(Path(run.initial_weights))
    assert any(not np.array_equal(final[k], initial[k]) for k in initial)
    done = hand_off(store, config, tmp_path / "sites" / "site_b", str(RUN_ID), validate=False)
    registry = ModelRegistry(config.models_root)
    locator, refiner = split_state_dict(
        registry.load_state_dict(registry.get(TASK, done.candidate.version))
    )
    parent_locator, _ = _parent_stages(config)
    assert all(torch.equal(locator[k], parent_locator[k]) for k in parent_locator)
    assert all(np.array_equal(refiner[k].numpy(), final[k]) for k in final)


def _refiner_record(site_dir: Path, network: NetworkConfig, *, stage: str = REFINER) -> None:
    """A site's record of a finished refiner run (as ``query.final`` writes it) whose
    network is ``network``, with that network's freshly initialised weights."""
    run = RunSettings(
        task=TASK,
        net_class=network.name.value,
        net_filters=network.filters,
        net_res_units=network.num_res_units,
        patch_size=(32, 32, 32),
        target_spacing=(4.0, 4.0, 4.0),
        refiner_margin=6.0 if stage else None,
    )
    model = build_network(run.task_spec(), run.network_config())
    write_result(
        site_dir,
        run_id=str(RUN_ID),
        strategy="fedavg",
        rounds=1,
        task=TASK,
        network=network.to_dict(),
        task_overrides=run.task_overrides(),
        sites=[],
        state={k: v.numpy() for k, v in model.state_dict().items()},
        global_model=True,
        norm_local=False,
        extra={"site": "site_a"},
        stage=stage,
    )


@pytest.mark.parametrize(
    ("network", "stage", "says"),
    [
        (
            NetworkConfig(name=Architecture.DYNUNET, filters=(8, 16, 32)),
            REFINER,
            "which is not the architecture of the refiner of the active model liver_ct/0.1.0",
        ),
        (
            NetworkConfig(filters=(4, 8), num_res_units=0),
            REFINER,
            "the refiner of the active model liver_ct/0.1.0 is a DynUNet",
        ),
        (
            REFINER_NETWORK,
            "",
            "is a two-stage model, of which only the refiner is federated",
        ),
    ],
)
def test_a_run_of_another_refiner_or_a_whole_model_is_refused(
    site: tuple[AppConfig, Store, ModelRecord],
    tmp_path: Path,
    network: NetworkConfig,
    stage: str,
    says: str,
) -> None:
    config, store, _ = site
    _refiner_record(tmp_path / "site", network, stage=stage)
    with pytest.raises(HandoffError, match=says):
        hand_off(store, config, tmp_path / "site", str(RUN_ID), validate=False)
    assert [m.version for m in store.list_models(TASK)] == [PARENT]


def test_the_coordinator_cli_keeps_the_refiners_network(
    site: tuple[AppConfig, Store, ModelRecord], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``federate start --set net-class=...`` may not train another network than the
    active cascade's refiner; the grid keys may change."""
    import typer

    from appliance.cli.federate import _from_active

    config, store, _ = site
    store.close()
    entries, origin = _from_active(config, TASK, tmp_path / "c", {"net-class": "dynunet"})
    assert entries["net-class"] == "dynunet" and "refiner" in origin
    with pytest.raises(typer.Exit):
        _from_active(config, TASK, tmp_path / "c", {"net-class": "unet"})
    assert "whose net-class is dynunet" in capsys.readouterr().err


def test_a_stages_architecture_becomes_run_settings_or_is_refused_naming_why() -> None:
    from appliance.errors import FederationError
    from appliance.federation.initial import network_settings
    from tests.appliance.tiny_models import TINY_ARCHITECTURE

    assert network_settings(TINY_DYNUNET_ARCHITECTURE, "m") == {
        "net-class": "dynunet",
        "net-filters": "4,8,16",
        "net-norm": "instance",
    }
    assert network_settings(TINY_ARCHITECTURE, "m") == {
        "net-filters": "4,8",
        "net-res-units": 0,
        "net-norm": "instance",
    }
    kwargs = TINY_DYNUNET_ARCHITECTURE["kwargs"]
    for change, says in (
        ({"res_block": True}, "res_block=True"),
        ({"strides": [2, 2, 2]}, "strides=[2, 2, 2]"),
        ({"deep_supervision": True}, "deep_supervision=True"),
        ({"dropout": 0.2}, "uses dropout"),
    ):
        other = {"network": "DynUNet", "kwargs": {**kwargs, **change}}
        with pytest.raises(FederationError, match=re.escape(says)):
            network_settings(other, "m")
    with pytest.raises(FederationError, match="is a SegResNet; federated runs train UNets"):
        network_settings({"network": "SegResNet", "kwargs": {}}, "m")
