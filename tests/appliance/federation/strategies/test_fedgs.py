from __future__ import annotations

import numpy as np

from appliance.federation.params import from_record
from appliance.federation.settings import RunSettings
from appliance.federation.strategies import FedGS
from tests.appliance.federation.strategies.replies import book, reply


def test_fedgs_applies_step_weighted_updates() -> None:
    strategy = FedGS(RunSettings(min_sites=2, server_momentum=0.0), book(), None)
    strategy._current = {"w": np.asarray([1.0])}
    replies = [
        reply(1, {"w": np.asarray([1.0])}, {"num-examples": 1, "steps": 3}),
        reply(2, {"w": np.asarray([-3.0])}, {"num-examples": 1, "steps": 1}),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and np.allclose(from_record(arrays)["w"], 1.0 + 0.0)
