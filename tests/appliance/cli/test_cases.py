"""``appliance cases import/list/exclude/include``."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from appliance.cli import app
from tests.appliance.cases.support import DCMQI_CT, DCMQI_SEG
from tests.peers import require_data
from tests.seg_variants import seg_variant


def test_cli_import_list_exclude_include(tmp_path: Path) -> None:
    require_data(DCMQI_SEG)
    root = tmp_path / "data"
    cfg = tmp_path / "a.toml"
    cfg.write_text(f'[storage]\nroot = "{root}"\nfsync = false\n')
    series_dir = tmp_path / "series"
    series_dir.mkdir()
    for f in DCMQI_CT:
        (series_dir / f.name).write_bytes(f.read_bytes())
    runner = CliRunner()
    result = runner.invoke(
        app, ["cases", "import", str(DCMQI_SEG), "--series", str(series_dir), "-c", str(cfg)]
    )
    assert result.exit_code == 0, result.output
    assert "imported as case 1: liver_ct" in result.output
    result = runner.invoke(app, ["cases", "list", "--json", "-c", str(cfg)])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    (case,) = listing["cases"]
    assert case["labels_present"] == ["Liver"] and case["origin"] == "cli"
    assert case["segments"][0]["property_type"] == '(T-62000, SRT, "Liver")'
    assert runner.invoke(app, ["cases", "exclude", "1", "-c", str(cfg)]).exit_code == 0
    listing = json.loads(runner.invoke(app, ["cases", "list", "--json", "-c", str(cfg)]).output)
    assert listing["cases"][0]["state"] == "excluded"
    assert runner.invoke(app, ["cases", "include", "1", "-c", str(cfg)]).exit_code == 0
    missing = runner.invoke(app, ["cases", "exclude", "7", "-c", str(cfg)])
    assert missing.exit_code == 1 and "no case 7" in missing.output
    # A SEG that matches no task: refused, exit 1, and the reason is listed.
    bad = seg_variant(
        DCMQI_SEG, tmp_path / "spleen.dcm", property_type=("78961009", "SCT", "Spleen")
    )
    result = runner.invoke(app, ["cases", "import", str(bad), "-c", str(cfg)])
    assert result.exit_code == 1 and "no_matching_segments" in result.output
    listing = json.loads(runner.invoke(app, ["cases", "list", "--json", "-c", str(cfg)]).output)
    assert listing["refused"][0]["reason"] == "no_matching_segments"
    usage = runner.invoke(app, ["cases", "import", "-c", str(cfg)])
    assert usage.exit_code == 2
