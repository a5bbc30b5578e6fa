"""The FedAvg family: weighting, progress records, and node sampling on the strategy's
own generator."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy.strategy_utils import sample_nodes

from appliance.config import StrategyName
from appliance.federation.params import from_record
from appliance.federation.progress import ProgressLog, read_progress
from appliance.federation.settings import RunSettings
from appliance.federation.strategies import SiteFedAvg, SiteFedProx, build_strategy
from tests.appliance.federation.strategies.replies import FakeGrid, book, reply

NODES = [41, 17, 23, 8, 35]


def test_fedavg_weights_by_cases_and_records_progress(tmp_path: Path) -> None:
    progress = ProgressLog(tmp_path, "7", "fedavg", 1)
    strategy = SiteFedAvg(RunSettings(min_sites=2), book(cases=[3, 1]), progress)
    replies = [
        reply(1, {"w": np.asarray([1.0])}, {"num-examples": 3, "steps": 2}),
        reply(2, {"w": np.asarray([5.0])}, {"num-examples": 1, "steps": 2}),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and np.allclose(from_record(arrays)["w"], 2.0)
    saved = read_progress(tmp_path)
    assert saved is not None and saved["history"][0]["sites"]["site_1"]["num-examples"] == 3


@pytest.mark.usefixtures("flower_task")
def test_node_sample_is_the_one_a_reseeded_global_random_gave() -> None:
    """The factory used to ``random.seed(run.seed)`` for Flower's ``sample_nodes``; the
    strategy's own ``random.Random(run.seed)`` draws the same nodes in the same order,
    round after round, and leaves the global generator as it was."""
    grid = FakeGrid(NODES)
    saved = random.getstate()
    try:
        random.seed(5)
        flower = [sample_nodes(cast(Grid, grid), 5, 5)[0] for _ in range(4)]
    finally:
        random.setstate(saved)
    strategy = SiteFedAvg(RunSettings(min_sites=5, seed=5), book(), None)
    ours = []
    for server_round in (1, 2):
        for configure in (strategy.configure_train, strategy.configure_evaluate):
            messages = configure(server_round, ArrayRecord(), ConfigRecord(), cast(Grid, grid))
            ours.append([m.metadata.dst_node_id for m in messages])
    assert ours == flower
    assert random.getstate() == saved
    assert len({tuple(nodes) for nodes in ours}) > 1  # the draw does decide the order


@pytest.mark.usefixtures("flower_task")
def test_sampling_keeps_flower_behaviour_around_it() -> None:
    grid = cast(Grid, FakeGrid(NODES))
    prox = SiteFedProx(RunSettings(min_sites=5), book(), None, proximal_mu=0.25)
    (first, *_) = list(prox.configure_train(3, ArrayRecord(), ConfigRecord({"a": 1}), grid))
    config: Any = first.content["config"]
    assert config["proximal-mu"] == 0.25 and config["server-round"] == 3 and config["a"] == 1
    assert first.metadata.message_type == "train"
    silent = SiteFedAvg(RunSettings(min_sites=5, evaluate=False), book(), None)
    assert list(silent.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid)) == []


@pytest.mark.usefixtures("flower_task")
def test_dp_wrapped_strategy_samples_on_its_own_generator() -> None:
    run = RunSettings(
        strategy=StrategyName.FEDAVG,
        min_sites=5,
        seed=9,
        dp_clipping_norm=1.0,
        dp_noise_multiplier=0.1,
    )
    grid = cast(Grid, FakeGrid(NODES))
    saved = random.getstate()
    orders = [
        [
            m.metadata.dst_node_id
            for m in build_strategy(run, book(5), None, frozenset()).configure_train(
                1, ArrayRecord(), ConfigRecord(), grid
            )
        ]
        for _ in range(2)
    ]
    assert random.getstate() == saved
    assert orders[0] == orders[1] and sorted(orders[0]) == sorted(NODES)
