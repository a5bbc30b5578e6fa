"""``appliance federate`` through typer's CliRunner and the ``[federation]`` config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.cli import app
from appliance.config import parse_config
from appliance.errors import ConfigError
from appliance.federation.progress import ProgressLog

runner = CliRunner()


def _config(tmp_path: Path, federation: str) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(f'[storage]\nroot = "{tmp_path / "root"}"\n\n[federation]\n{federation}\n')
    return path


def test_federation_config_errors_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "federation": {
                    "coordinator": "nohost",
                    "strategy": "fedsomething",
                    "rounds": 0,
                    "schedule": "every day",
                    "colour": "blue",
                }
            }
        )
    text = str(info.value)
    for key in ("coordinator", "strategy", "rounds", "schedule", "colour", "tls_ca_file"):
        assert f"federation.{key}" in text
    ok = parse_config({"federation": {"insecure": True, "coordinator": "10.1.2.3:9092"}})
    assert ok.federation.coordinator_port == 9092 and ok.federation.strategy == "fedavg"
    assert parse_config({}).federation.insecure is False  # no section: nothing required


def test_status_shows_rounds_sites_and_metrics(tmp_path: Path) -> None:
    config = _config(tmp_path, "insecure = true")
    out = tmp_path / "root" / "federation" / "coordinator"
    progress = ProgressLog(out, "123", "fedavg", 2)
    progress.set_sites([{"node_id": 1, "site": "site_a", "cases": 4}])
    progress.add(1, "train", {"site_a": {"loss": 0.5, "steps": 3}}, {"loss": 0.5})
    progress.add(1, "dropped", {"site_b": {"dropped": "failed: node unavailable"}}, None)
    result = runner.invoke(app, ["federate", "status", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "run 123: fedavg running, round 1/2" in result.output
    assert "site_a (4 cases)" in result.output and '"loss": 0.5' in result.output
    assert 'round 1 dropped: site_b {"dropped": "failed: node unavailable"}' in result.output
    as_json = runner.invoke(app, ["federate", "status", "--json", "--config", str(config)])
    assert json.loads(as_json.output)["history"][0]["round"] == 1
    missing = runner.invoke(app, ["federate", "status", "--run-id", "9", "--config", str(config)])
    assert missing.exit_code == 1 and "no run 9" in missing.output


def test_start_refuses_a_bad_strategy_and_missing_tls(tmp_path: Path) -> None:
    config = _config(tmp_path, "insecure = true")
    bad = runner.invoke(app, ["federate", "start", "--strategy", "nope", "--config", str(config)])
    assert bad.exit_code == 2 and "strategy" in bad.output
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    no_cert = _config(tmp_path, f'tls_ca_file = "{ca}"')
    result = runner.invoke(app, ["federate", "start", "--config", str(no_cert)])
    assert result.exit_code == 2 and "tls_cert_file" in result.output
