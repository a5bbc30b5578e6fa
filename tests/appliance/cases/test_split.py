"""The held-out split: keyed, deterministic, near the configured fraction; its config."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.cases.split import split_for, split_key, split_position
from appliance.config import parse_config
from appliance.errors import ConfigError
from appliance.states import CaseSplit
from appliance.store import Store
from tests.appliance.cases.support import cases_config


def test_split_is_deterministic_keyed_and_near_the_fraction() -> None:
    key = b"k" * 32
    uids = [f"1.2.826.0.1.3680043.8.498.{i}" for i in range(4000)]
    splits = [split_for(u, key, 0.2) for u in uids]
    share = splits.count(CaseSplit.HELD_OUT) / len(uids)
    assert 0.17 < share < 0.23
    assert splits == [split_for(u, key, 0.2) for u in uids]  # deterministic
    other = [split_for(u, b"another site key", 0.2) for u in uids]
    assert other != splits  # another site holds out other studies
    assert all(split_for(u, key, 0.0) is CaseSplit.TRAIN for u in uids[:200])
    # Raising the fraction only moves studies into the hold-out, never out of it.
    assert all(
        split_for(u, key, 0.3) is CaseSplit.HELD_OUT
        for u, s in zip(uids, splits, strict=True)
        if s is CaseSplit.HELD_OUT
    )
    assert 0.0 <= split_position(uids[0], key) < 1.0


def test_generated_split_key_is_kept_in_the_store(tmp_path: Path, store: Store) -> None:
    config = cases_config(tmp_path)
    first = split_key(store, config)
    assert len(first) >= 32 and split_key(store, config) == first
    assert split_key(store, cases_config(tmp_path, split_key="s" * 16)) == b"s" * 16


def test_cases_config_is_validated() -> None:
    cfg = parse_config({"cases": {"held_out_fraction": 0.25, "split_key": "x" * 20}})
    assert cfg.cases.held_out_fraction == 0.25 and cfg.cases.split_key == "x" * 20
    assert parse_config({}).cases.held_out_fraction == 0.2
    with pytest.raises(ConfigError) as info:
        parse_config({"cases": {"held_out_fraction": 1.5, "split_key": "short", "x": 1}})
    text = str(info.value)
    assert "cases.held_out_fraction: must be a number from 0 to 0.9" in text
    assert "cases.split_key: must be a secret string of at least 16 characters" in text
    assert "cases.x: unknown key" in text
