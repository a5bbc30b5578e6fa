from __future__ import annotations

import numpy as np
import pytest

from appliance.errors import FederationError
from appliance.federation.params import from_record
from appliance.federation.settings import RunSettings
from appliance.federation.strategies import FedBN
from tests.appliance.federation.strategies.replies import NORM, book, reply


def test_fedbn_keeps_global_norm_entries_and_refuses_sent_ones() -> None:
    strategy = FedBN(RunSettings(min_sites=2), book(), None, NORM)
    strategy._current = {"w": np.asarray([0.0]), "norm.weight": np.asarray([9.0])}
    replies = [
        reply(1, {"w": np.asarray([2.0])}, {"num-examples": 1}),
        reply(2, {"w": np.asarray([4.0])}, {"num-examples": 1}),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    state = from_record(arrays)
    assert np.allclose(state["w"], 3.0) and np.allclose(state["norm.weight"], 9.0)
    leaking = [
        reply(1, {"w": np.asarray([2.0]), "norm.weight": np.asarray([1.0])}, {"num-examples": 1})
    ]
    with pytest.raises(FederationError, match="normalisation"):
        strategy.aggregate_train(1, leaking)
