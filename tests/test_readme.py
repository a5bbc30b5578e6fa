"""The README stays true: its configuration block is a valid config, key for key."""

from __future__ import annotations

import tomllib
from pathlib import Path

from appliance.config import parse_config
from tests.peers import REPO


def test_readme_configuration_block_is_a_valid_config(tmp_path: Path) -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## Configuration", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    data = tomllib.loads(block)
    assert {"dicom", "storage", "models", "cases", "federation"} <= set(data)
    # Files the sample names must exist where it runs; stand them in here.
    ca = tmp_path / "ca.crt"
    ca.write_text("test")
    data["federation"]["tls_ca_file"] = str(ca)
    config = parse_config(data, base_dir=tmp_path)
    assert config.federation.task == data["federation"]["task"]
