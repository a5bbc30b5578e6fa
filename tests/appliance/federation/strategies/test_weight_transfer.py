from __future__ import annotations

import numpy as np
import pytest

from appliance.errors import FederationError
from appliance.federation.params import from_record
from appliance.federation.settings import RunSettings
from appliance.federation.strategies import WeightTransfer
from tests.appliance.federation.strategies.replies import book, reply


def test_weight_transfer_order_and_no_averaging() -> None:
    sites = book(3)
    strategy = WeightTransfer(
        RunSettings(min_sites=3, site_order=("site_3", "site_1", "site_2")),
        sites,
        None,
        single=False,
    )
    assert strategy.order == ["site_3", "site_1", "site_2"]
    arrays, _ = strategy.aggregate_train(
        1, [reply(3, {"w": np.asarray([7.0])}, {"num-examples": 1})]
    )
    assert arrays is not None and np.allclose(from_record(arrays)["w"], 7.0)
    with pytest.raises(FederationError, match="site-order"):
        WeightTransfer(RunSettings(site_order=("nowhere",)), sites, None, single=True)
