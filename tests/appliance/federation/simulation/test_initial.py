"""Fine-tuning in the federated benchmark: a task's ``initial`` names a bundle (the newest
shipped one, a shipped version, or a bundle directory); network and grid come from its
card and the config may not contradict them; ``pretrained`` scores the initial weights
untrained; the baselines start from them; a two-stage bundle is fine-tuned in its refiner
and scored through its whole two-stage inference; and a rerun with the same seed gives
the same records (apart from wall times)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from appliance.config import shipped_bundles_dir
from appliance.errors import FederationError
from appliance.federation.initial import card_run_config
from appliance.federation.params import model_state
from appliance.federation.simulation.baselines import run_centralised, run_local
from appliance.federation.simulation.config import load_config, parse_config
from appliance.federation.simulation.run import (
    base_settings,
    simulate,
    simulated_sites,
    write_initial,
)
from appliance.federation.site_state import load_state
from appliance.flow.segmenting import task_spec_for
from models.card_inference import segment_with_card
from models.evaluation import evaluate_case
from models.registry import ModelRegistry
from models.tasks import get_task
from tests.appliance.tiny_models import (
    TINY_DYNUNET_ARCHITECTURE,
    make_background_bundle,
    make_tiny_bundle,
    make_tiny_cascade_bundle,
)

TASK = "liver_ct"


def _background_bundle(root: Path, seed: int) -> Any:
    return make_background_bundle(root, task=TASK, version="0.0.1-test", seed=seed)


def _config(initial: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "ft",
        "seeds": [0],
        "tasks": [TASK],
        "methods": ["pretrained", "local", "centralised"],
        "rounds": 2,
        "local_steps": 2,
        "batch_size": 1,
        "lr": 1e-3,
        "evaluate_rounds": False,
        "task": {TASK: {"initial": initial, "most_shifted_site": "site_d"}},
        "site": [
            {"preset": "site_a", "train": 1, "held_out": 1},
            {"preset": "site_d", "train": 1, "held_out": 1},
        ],
    }
    data.update(changes)
    return data


def test_shipped_is_the_bundle_a_fresh_appliance_activates() -> None:
    shipped = ModelRegistry(shipped_bundles_dir())
    newest = shipped.latest(TASK)
    assert newest is not None
    config = parse_config(_config("shipped"))
    setup = config.task_setup[TASK]
    assert setup.initial is not None and setup.initial.ref == newest.ref
    # network and grid are the card's (for a two-stage model: its refiner's)
    entries = card_run_config(newest.card, newest.ref)
    assert dict(setup.initial.run_config) == entries
    assert ",".join(map(str, setup.patch_size)) == entries["patch-size"]
    assert config.to_dict()["task"][TASK]["initial"]["ref"] == newest.ref
    # a shipped version by name
    oldest = shipped.list(TASK)[0]
    named = parse_config(_config(oldest.version)).task_setup[TASK].initial
    assert named is not None and named.ref == oldest.ref


def test_the_config_may_not_contradict_the_card(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "registry", task=TASK, version="0.0.1-test")
    data = _config(str(bundle.path))
    data["task"][TASK]["patch_size"] = [32, 32, 32]  # the card's: fine
    assert parse_config(data).task_setup[TASK].patch_size == (32, 32, 32)
    data["task"][TASK]["target_spacing_mm"] = [1.5, 1.5, 2.0]
    with pytest.raises(
        FederationError,
        match=r"task\.liver_ct\.target_spacing_mm: \[1\.5, 1\.5, 2\.0\] contradicts the "
        r"initial model liver_ct/0\.0\.1-test",
    ):
        parse_config(data)


@pytest.mark.parametrize(
    ("initial", "message"),
    [
        ("9.9.9", r"task\.liver_ct\.initial: .*9\.9\.9.*allowed: 'shipped'"),
        ("./nowhere/liver_ct/1.0.0", r"task\.liver_ct\.initial: no bundle directory"),
    ],
)
def test_an_unknown_initial_model_names_the_key(initial: str, message: str) -> None:
    with pytest.raises(FederationError, match=message):
        parse_config(_config(initial))


def test_a_relative_bundle_path_is_relative_to_the_config(tmp_path: Path) -> None:
    make_tiny_bundle(tmp_path / "registry", task=TASK, version="0.0.1-test")
    path = tmp_path / "ft.toml"
    path.write_text(
        'name = "ft"\nseeds = [0]\ntasks = ["liver_ct"]\nmethods = ["pretrained"]\n'
        "rounds = 1\nlocal_steps = 1\n"
        '[task.liver_ct]\ninitial = "registry/liver_ct/0.0.1-test"\n'
        'most_shifted_site = "site_a"\n'
        '[[site]]\npreset = "site_a"\ntrain = 1\nheld_out = 1\n'
        '[[site]]\npreset = "site_d"\ntrain = 1\nheld_out = 1\n'
    )
    initial = load_config(str(path)).task_setup[TASK].initial
    assert initial is not None and initial.ref == "liver_ct/0.0.1-test"


def test_pretrained_needs_initial_weights() -> None:
    data = _config("shipped")
    data["task"][TASK] = {
        "patch_size": [32, 32, 32],
        "target_spacing_mm": [3.0, 3.0, 3.0],
        "most_shifted_site": "site_d",
    }
    with pytest.raises(FederationError, match=r"methods: pretrained .* liver_ct has no initial"):
        parse_config(data)
    data["methods"] = ["local"]
    assert parse_config(data).task_setup[TASK].initial is None


def test_baselines_start_from_the_initial_weights(tmp_path: Path) -> None:
    bundle = _background_bundle(tmp_path / "registry", seed=4)
    config = parse_config(_config(str(bundle.path)))
    setup = config.task_setup[TASK]
    assert setup.initial is not None
    weights = write_initial(TASK, setup.initial, tmp_path / "work")
    settings = base_settings(config, TASK, 0, 60.0, None, weights)
    assert settings.net_filters == (4, 8) and settings.net_res_units == 0
    assert settings.patch_size == (32, 32, 32) and not settings.evaluate
    initial = load_state(weights)
    # the shipped weights, and a step of the smallest learning rate barely moves them
    from dataclasses import replace

    run = replace(settings, rounds=1, local_steps=1, lr=1e-7)
    data = [s.data for s in simulated_sites(run)]
    result = run_local(run, data, log=lambda _: None)
    assert result.history == []  # evaluate_rounds = false: no per-session scoring
    for state in result.weights.values():
        for key, value in initial.items():
            if np.issubdtype(np.asarray(value).dtype, np.floating):
                assert np.allclose(state[key], value, atol=1e-4), key
    # from scratch, the same network would start elsewhere
    scratch = run_local(replace(run, initial_weights=""), data, log=lambda _: None)
    key = next(k for k in initial if k.endswith("weight"))
    assert not np.allclose(scratch.weights["site_a"][key], initial[key], atol=1e-4)
    assert set(initial) == set(result.weights["site_a"])


def test_training_under_the_simulation_is_deterministic(tmp_path: Path) -> None:
    bundle = _background_bundle(tmp_path / "registry", seed=5)
    config = parse_config(_config(str(bundle.path)))
    setup = config.task_setup[TASK]
    assert setup.initial is not None
    weights = write_initial(TASK, setup.initial, tmp_path / "work")
    run = base_settings(config, TASK, 0, 60.0, None, weights)
    data = [s.data for s in simulated_sites(run)]
    for train in (run_local, run_centralised):
        first = train(run, data, log=lambda _: None).weights
        again = train(run, data, log=lambda _: None).weights
        for site, state in first.items():
            assert any(not np.array_equal(state[k], v) for k, v in load_state(weights).items())
            for key, value in state.items():
                assert np.array_equal(value, again[site][key]), (train.__name__, key)


def _without_times(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("wall_s", "score_s")} for r in records]


def test_fine_tuning_end_to_end_is_reproducible(tmp_path: Path) -> None:
    bundle = _background_bundle(tmp_path / "registry", seed=1)
    config = parse_config(_config(str(bundle.path), methods=["pretrained", "local"]))
    first = simulate(config, tmp_path / "work1", log=lambda _: None)
    again = simulate(config, tmp_path / "work2", log=lambda _: None)
    assert [r["method"] for r in first] == ["pretrained", "local"]
    assert _without_times(first) == _without_times(again)  # bit for bit
    pretrained = first[0]
    assert pretrained["history"] == [] and set(pretrained["bytes_sent"].values()) == {0}
    for record in first:
        assert record["history"] == []  # per-round evaluation off
        for site in record["sites"].values():
            assert set(site["lesions"]) == {"small", "medium", "large"}
            assert site["false_positive_components"] >= 0


def test_a_two_stage_model_is_fine_tuned_in_its_refiner_and_scored_whole(
    tmp_path: Path,
) -> None:
    # the locator finds nothing (so the refiner's noise never reaches HD95), which a
    # refiner scored alone on the whole image would not show
    bundle = make_tiny_cascade_bundle(
        tmp_path / "registry",
        version="0.0.1-cascade",
        locator_finds=False,
        seed=2,
        refiner=TINY_DYNUNET_ARCHITECTURE,
        refiner_spacing_mm=4.0,
    )
    config = parse_config(_config(str(bundle.path), methods=["pretrained", "local"]))
    setup = config.task_setup[TASK]
    assert setup.initial is not None and setup.initial.two_stage
    assert setup.target_spacing_mm == (4.0, 4.0, 4.0)  # the refiner's grid
    records = simulate(config, tmp_path / "work", log=lambda _: None)
    settings = base_settings(config, TASK, 0, 60.0, None, tmp_path / "w.pt")
    assert settings.refiner_margin == 6.0 and settings.net_class == "dynunet"
    # pretrained = the bundle as shipped, through its whole two-stage inference
    registry = ModelRegistry(bundle.path.parent.parent)
    network = registry.load_network(registry.get(TASK, bundle.card.version))
    spec = task_spec_for(TASK, bundle.card.preprocessing)
    for site in simulated_sites(settings):
        case, lesion_map = site.scored[0]
        mask = segment_with_card(network, bundle.card, spec, case.image, case.affine).mask
        expected = evaluate_case(
            mask, case.labels, case.affine, get_task(TASK), lesion_map=lesion_map
        )
        scored = records[0]["sites"][site.data.name]["dice"]
        assert scored == pytest.approx(dict(expected.dice))
    # the local baseline trained the refiner only (its weights are a DynUNet's)
    assert set(model_state(network.refiner)) == set(
        load_state(tmp_path / "work" / "initial" / f"{TASK}-0.0.1-cascade.pt")
    )


def test_quick_ft_fine_tunes_the_shipped_model_under_every_method() -> None:
    from appliance.federation.simulation.config import Method

    config = load_config("quick_ft")
    assert set(config.methods) == set(Method)
    assert len(config.seeds) == 3 and config.device == "cpu"
    assert not config.evaluate_rounds
    assert [s.preset for s in config.sites] == ["site_a", "site_b", "site_c", "site_d"]
    assert config.smallest_site == "site_d"
    initial = config.task_setup[TASK].initial
    assert initial is not None and initial.source == "shipped"
    newest = ModelRegistry(shipped_bundles_dir()).latest(TASK)
    assert newest is not None and initial.ref == newest.ref
    # the from-scratch configs stay from scratch
    for name in ("quick", "full"):
        assert all(s.initial is None for s in load_config(name).task_setup.values())
