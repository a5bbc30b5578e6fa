"""The demo is the main job end to end, in process: it must pass on its own defaults."""

from __future__ import annotations

from pathlib import Path

from appliance.demo import run_demo


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    lines: list[str] = []
    result = run_demo(tmp_path, slices=8, echo=lines.append)
    assert result.series_state == "done"
    assert result.shape == (8, 256, 256)
    assert result.affine_error_mm < 1e-3
    assert result.returned_instances == result.instances_sent == 8
    assert any("built-in receiver" in line for line in lines)
