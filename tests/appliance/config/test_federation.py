"""appliance.config.federation: the [federation] section checks itself, and StrategyName
is the one vocabulary of strategies: config, run settings and the benchmark share it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from appliance.config import FederationConfig, StrategyName, parse_config
from appliance.errors import ConfigError, FederationError
from appliance.federation.settings import RunSettings, run_config_map
from appliance.federation.simulation.config import Method

ALL = ", ".join(s.value for s in StrategyName)


def issues(**kwargs: object) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        FederationConfig(**kwargs)  # type: ignore[arg-type]
    return {issue.key: issue.message for issue in info.value.issues}


def test_federation_config_built_in_code_names_its_bad_keys(tmp_path: Path) -> None:
    found = issues(
        coordinator="nohost",
        strategy="fedsomething",
        rounds=0,
        schedule="every day",
        site_name="bad name",
        tls_cert_file=tmp_path / "missing.pem",
        tls_key_file=tmp_path / "missing.key",
    )
    assert found["federation.coordinator"] == "must be host:port; got 'nohost'"
    assert found["federation.strategy"] == f"must be one of {ALL}; got 'fedsomething'"
    assert "1 to 10000" in found["federation.rounds"]
    assert "cron" in found["federation.schedule"]
    assert "federation.site_name" in found
    assert "does not exist" in found["federation.tls_cert_file"]
    assert "does not exist" in found["federation.tls_key_file"]
    assert (
        "go together"
        in issues(tls_key_file=None, tls_cert_file=__file__)["federation.tls_cert_file"]
    )


def test_authentication_needs_tls_and_existing_keys(tmp_path: Path) -> None:
    key = tmp_path / "site.pub"
    key.write_text("ssh")
    found = issues(insecure=True, authorized_keys=(key, tmp_path / "gone.pub"))
    assert "needs TLS" in found["federation.insecure"]
    assert "does not exist" in found["federation.authorized_keys[1]"]
    assert FederationConfig(authorized_keys=[str(key)]).authorized_keys == (key,)  # type: ignore[arg-type]
    assert "list of public key" in issues(authorized_keys=5)["federation.authorized_keys"]


def test_authorized_key_problems_are_keyed_by_index_in_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"federation": {"tls_ca_file": "ca.pem", "authorized_keys": ["a.pub"]}},
            base_dir=tmp_path,
        )
    keys = {issue.key for issue in info.value.issues}
    assert keys == {"federation.tls_ca_file", "federation.authorized_keys[0]"}


def test_strategy_is_a_strategy_name_given_as_a_string_too() -> None:
    config = FederationConfig(strategy="krum")  # type: ignore[arg-type]
    assert config.strategy is StrategyName.KRUM
    assert parse_config(
        {"federation": {"insecure": True, "strategy": "cwt"}}
    ).federation.strategy is (StrategyName.CWT)
    assert dataclasses.replace(config, rounds=3).strategy is StrategyName.KRUM


def test_one_vocabulary_of_strategies() -> None:
    # the run settings' field is the config's enum, and they refuse the same names alike
    assert {f.name: f.type for f in dataclasses.fields(RunSettings)}["strategy"] == "StrategyName"
    assert isinstance(RunSettings().strategy, StrategyName)
    for name in StrategyName:
        run = RunSettings.from_config({"strategy": name.value, "min-sites": 2})
        assert run.strategy is name
        assert run_config_map(run)["strategy"] == name.value
        config = parse_config({"federation": {"insecure": True, "strategy": name.value}})
        assert config.federation.strategy is name
    with pytest.raises(FederationError) as run_error:
        RunSettings.from_config({"strategy": "fedfoo"})
    with pytest.raises(ConfigError) as config_error:
        parse_config({"federation": {"insecure": True, "strategy": "fedfoo"}})
    assert str(run_error.value) == f"strategy: must be one of {ALL}; got 'fedfoo'"
    assert config_error.value.issues[0].message == f"must be one of {ALL}; got 'fedfoo'"
    # the benchmark's federated methods are strategies by the same names
    federated = [m for m in Method if m.federated]
    assert federated and all(m.strategy is StrategyName(m.value) for m in federated)
    assert {m.value for m in Method if not m.federated} == {"pretrained", "local", "centralised"}


def test_the_vocabulary_lives_in_the_config_package_only() -> None:
    import appliance.federation.settings as settings
    import appliance.federation.simulation.config as sim

    assert StrategyName.__module__ == "appliance.config.federation"
    assert settings.StrategyName is StrategyName and sim.StrategyName is StrategyName
    import appliance.config as config

    assert not hasattr(config, "FEDERATION_STRATEGIES")


def test_federation_site_limits_default_generous_and_are_checked() -> None:
    config = FederationConfig(insecure=True)
    assert (config.max_local_steps, config.max_batch_size, config.max_rounds) == (10_000, 64, 1000)
    assert config.max_patch_voxels == 256**3 and (config.min_lr, config.max_lr) == (1e-7, 1.0)
    found = issues(
        insecure=True,
        max_local_steps=0,
        max_batch_size=5000,
        max_patch_voxels=-1,
        min_lr=0.5,
        max_lr=0.1,
        max_rounds=True,
    )
    assert "1 to 1000000" in found["federation.max_local_steps"]
    assert "1 to 1024" in found["federation.max_batch_size"]
    assert "federation.max_patch_voxels" in found and "federation.max_rounds" in found
    assert found["federation.max_lr"] == "must be at least min_lr (0.5); got 0.1"


def test_the_site_limits_reach_the_supernode_and_take_the_benchmark_runs(tmp_path: Path) -> None:
    from appliance.federation.site_join import node_config
    from appliance.federation.site_settings import RunLimits

    config = parse_config(
        {
            "storage": {"root": str(tmp_path)},
            "federation": {"insecure": True, "max_batch_size": 8, "max_lr": 0.5},
        },
        base_dir=tmp_path,
    )
    node = node_config(config)
    assert node["max-batch-size"] == 8 and node["max-lr"] == 0.5
    limits = RunLimits()
    for settings in (RunSettings(local_steps=150, batch_size=2, lr=0.002, rounds=20),):
        limits.refuse(settings, (96, 96, 64))
