"""Run and site settings: the Flower ``run_config`` round trip and errors naming the key."""

from __future__ import annotations

import pytest

from appliance.config import StrategyName
from appliance.errors import FederationError
from appliance.federation.settings import (
    RunSettings,
    SiteSettings,
    run_config_map,
)


def test_run_settings_round_trip_and_errors_name_the_key() -> None:
    settings = RunSettings(
        strategy=StrategyName.SWT,
        rounds=3,
        net_filters=(4, 8),
        net_res_units=0,
        patch_size=(16, 16, 16),
        target_spacing=(5.0, 5.0, 5.0),
        site_order=("a", "b"),
    )
    assert RunSettings.from_config(run_config_map(settings)) == settings
    assert RunSettings.from_config(run_config_map(RunSettings())) == RunSettings()
    with pytest.raises(FederationError, match="strategy"):
        RunSettings.from_config({"strategy": "fedfoo"})
    with pytest.raises(FederationError, match="num-rounds"):
        RunSettings.from_config({"num-rounds": 0})
    with pytest.raises(FederationError, match="patch-size"):
        RunSettings.from_config({"patch-size": "16,16"})
    with pytest.raises(FederationError, match="dp-clipping-norm"):
        RunSettings.from_config({"strategy": "fedbn", "dp-clipping-norm": 1.0})
    with pytest.raises(FederationError, match="site-name"):
        SiteSettings.from_config({"site-name": "../etc"})
    assert SiteSettings.from_config({"partition-id": 2}).site == "site_2"
