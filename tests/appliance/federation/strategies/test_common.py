"""Replies are aggregated in site order, whatever order they arrive in."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.federation.params import from_record
from appliance.federation.settings import RunSettings
from appliance.federation.strategies import FedBN, FedGS, SiteFedAvg
from tests.appliance.federation.strategies.replies import NORM, book, reply


@pytest.mark.parametrize("name", ["fedavg", "fedbn", "fedgs"])
def test_aggregation_does_not_depend_on_the_order_replies_arrive(name: str) -> None:
    """Sites finish in any order; the aggregate must be bit-identical (float sums are not
    associative), or two runs of one seed drift apart over the rounds."""
    rng = np.random.default_rng(3)
    sizes = [3, 1, 2, 5]
    states = [
        {"w": (rng.normal(size=20000) * 10.0 ** rng.integers(-3, 3)).astype(np.float32)}
        for _ in sizes
    ]

    def aggregate(order: list[int]) -> np.ndarray:
        sites = book(len(sizes), cases=sizes)
        run = RunSettings(min_sites=len(sizes), local_steps=7 * max(sizes))
        strategy: SiteFedAvg | FedBN | FedGS
        if name == "fedavg":
            strategy = SiteFedAvg(run, sites, None)
        elif name == "fedbn":
            strategy = FedBN(run, sites, None, NORM)
            strategy._current = {"w": np.zeros(20000, np.float32)}
        else:
            strategy = FedGS(run, sites, None)
            strategy._current = {"w": np.zeros(20000, np.float32)}
        replies = [
            reply(i + 1, states[i], {"num-examples": sizes[i], "steps": 7 * sizes[i]})
            for i in order
        ]
        arrays, _ = strategy.aggregate_train(1, replies)
        assert arrays is not None
        return from_record(arrays)["w"]

    first = aggregate([0, 1, 2, 3])
    for order in ([3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]):
        assert np.array_equal(aggregate(order), first)
