"""Gossip on a stand-in grid: each site gets a seeded random peer's model."""

from __future__ import annotations

import random
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import ArrayRecord, Message
from flwr.serverapp import Grid

from appliance.federation.aggregation import gossip_peers
from appliance.federation.params import from_record
from appliance.federation.settings import RunSettings
from appliance.federation.strategies import Gossip
from tests.appliance.federation.strategies.replies import FakeGrid, book, reply


def _own_model(msg: Message) -> Message:
    """Every site replies with a model that says which node it is."""
    node = msg.metadata.dst_node_id
    return reply(node, {"w": np.asarray([float(node)])}, {"num-examples": 1}, "train")


def _run(seed: int) -> tuple[Gossip, FakeGrid]:
    strategy = Gossip(RunSettings(min_sites=4, seed=seed, evaluate=False), book(4), None)
    grid = FakeGrid([1, 2, 3, 4], _own_model)
    strategy.start(cast(Grid, grid), ArrayRecord(), num_rounds=3)
    return strategy, grid


@pytest.mark.usefixtures("flower_task")
def test_gossip_pairs_sites_from_its_seed_and_relays_the_peers_model() -> None:
    saved = random.getstate()
    strategy, grid = _run(seed=11)
    assert random.getstate() == saved
    rng = np.random.default_rng(11)
    expected = [gossip_peers(4, rng) for _ in range(3)]
    assert strategy.pairings == [
        {f"site_{i + 1}": f"site_{peer + 1}" for i, peer in enumerate(peers)} for peers in expected
    ]
    assert strategy.pairings == _run(seed=11)[0].pairings
    round_two = [m for m in grid.sent if cast(Any, m.content["config"])["server-round"] == 2]
    for i, msg in enumerate(round_two):
        config: Any = msg.content["config"]
        peer = expected[0][i] + 1
        assert config["has-peer"] is True and config["peer-cases"] == peer
        assert float(from_record(cast(ArrayRecord, msg.content["arrays"]))["w"][0]) == peer
    assert strategy.consensus is not None and strategy.consensus > 0
