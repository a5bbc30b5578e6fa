"""Run and site settings: the Flower ``run_config`` round trip and errors naming the key."""

from __future__ import annotations

import pytest

from appliance.config import StrategyName
from appliance.errors import FederationError
from appliance.federation.settings import RunSettings, run_config_map
from appliance.federation.site_settings import SiteSettings


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


def test_network_class_and_refiner_settings_are_validated_and_default_to_a_unet() -> None:
    from models.cascade_spec import REFINER
    from models.networks import Architecture

    # a run config without the new keys (an older coordinator's) is a UNet of the task
    old_wire = dict(run_config_map(RunSettings()))
    del old_wire["net-class"], old_wire["refiner-margin"]
    plain = RunSettings.from_config(old_wire)
    assert plain == RunSettings() and plain.stage == "" and plain.refiner_settings() is None
    assert plain.network_config().name is Architecture.UNET
    assert plain.norm_scope() == "liver_ct" and plain.task_overrides() == {}
    assert run_config_map(RunSettings())["net-class"] == ""
    assert run_config_map(RunSettings())["refiner-margin"] == -1.0

    refiner = RunSettings(
        net_class="dynunet",
        net_filters=(4, 8, 16),
        patch_size=(32, 32, 32),
        target_spacing=(2.0, 2.0, 2.0),
        refiner_margin=6.0,
    )
    assert RunSettings.from_config(run_config_map(refiner)) == refiner
    assert refiner.stage == REFINER and refiner.norm_scope() == "liver_ct.refiner"
    assert refiner.network_config().name is Architecture.DYNUNET
    spec = refiner.task_spec()
    assert spec.patch_size == (32, 32, 32) and spec.target_spacing_mm == (2.0, 2.0, 2.0)
    assert refiner.task_overrides()["margin_mm"] == 6.0

    with pytest.raises(FederationError, match=r"net-class: must be one of unet, dynunet .*'vnet'"):
        RunSettings.from_config({"net-class": "vnet"})
    with pytest.raises(FederationError, match="refiner-margin: a refiner run needs patch-size"):
        RunSettings.from_config({"refiner-margin": 5.0, "patch-size": "32,32,32"})
    with pytest.raises(FederationError, match=r"refiner-margin: .*margin_mm must be in"):
        RunSettings.from_config(
            {"refiner-margin": 500.0, "patch-size": "32,32,32", "target-spacing": "2,2,2"}
        )
    with pytest.raises(FederationError, match=r"refiner-margin: .*overlapping segments"):
        RunSettings.from_config(
            {
                "task": "glioma_brats",
                "refiner-margin": 5.0,
                "patch-size": "32,32,32",
                "target-spacing": "2,2,2",
            }
        )
