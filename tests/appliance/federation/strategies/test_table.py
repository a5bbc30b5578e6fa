"""The strategy table: every name builds, train modes, and no global random state."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import cast

import pytest
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx, FedTrimmedAvg, Krum

from appliance.config import StrategyName
from appliance.federation.settings import RunSettings
from appliance.federation.strategies import (
    MODES,
    STRATEGIES,
    FedGS,
    build_strategy,
    train_mode,
)
from tests.appliance.federation.strategies.replies import NORM, FakeGrid, book


def test_build_strategy_by_name_and_modes() -> None:
    sites = book(3)
    for name in StrategyName:
        strategy = build_strategy(RunSettings(strategy=name, min_sites=3), sites, None, NORM)
        assert strategy is not None
    assert train_mode(StrategyName.FEDBN) == "fedbn"
    assert train_mode(StrategyName.CWT) == "full"
    wrapped = build_strategy(
        RunSettings(strategy=StrategyName.FEDAVG, dp_clipping_norm=1.0, dp_noise_multiplier=0.1),
        sites,
        None,
        NORM,
    )
    assert type(wrapped).__name__ == "DifferentialPrivacyClientSideFixedClipping"


def test_table_covers_every_name_and_modes_name_the_non_full_ones() -> None:
    assert set(STRATEGIES) == set(StrategyName)
    assert dict(MODES) == {
        StrategyName.FEDBN: "fedbn",
        StrategyName.FEDGS: "fedgs",
        StrategyName.GOSSIP: "gossip",
    }
    for name in StrategyName:
        assert train_mode(name) == MODES.get(name, "full")


def test_flower_options_come_from_the_run_settings() -> None:
    run = RunSettings(min_sites=3, prox_mu=0.5, trim_beta=0.3, krum_byzantine=1, evaluate=False)
    sites = book(3)

    def built(name: StrategyName) -> FedAvg:
        strategy = build_strategy(replace(run, strategy=name), sites, None, NORM)
        assert isinstance(strategy, FedAvg)
        assert (strategy.min_train_nodes, strategy.fraction_evaluate) == (3, 0.0)
        return strategy

    assert cast(FedProx, built(StrategyName.FEDPROX)).proximal_mu == 0.5
    assert cast(FedTrimmedAvg, built(StrategyName.FEDTRIMMEDAVG)).beta == 0.3
    assert cast(Krum, built(StrategyName.KRUM)).num_malicious_nodes == 1
    fedgs = built(StrategyName.FEDGS)
    assert isinstance(fedgs, FedGS) and fedgs.weighted_by_key == "steps"
    assert built(StrategyName.FEDAVG).weighted_by_key == "num-examples"


@pytest.mark.usefixtures("flower_task")
@pytest.mark.parametrize("name", list(StrategyName))
def test_building_and_sampling_leave_global_random_alone(name: StrategyName) -> None:
    saved = random.getstate()
    strategy = build_strategy(RunSettings(strategy=name, min_sites=3, seed=4), book(3), None, NORM)
    if isinstance(strategy, FedAvg):
        grid = cast(Grid, FakeGrid([1, 2, 3]))
        for server_round in (1, 2):
            strategy.configure_train(server_round, ArrayRecord(), ConfigRecord(), grid)
            strategy.configure_evaluate(server_round, ArrayRecord(), ConfigRecord(), grid)
    assert random.getstate() == saved
