"""``appliance train``/``evaluate`` forward to models.demo_weights (one implementation)."""

from __future__ import annotations

from typer.testing import CliRunner

from appliance.cli import app


def test_train_help_lists_the_reproducible_options() -> None:
    result = CliRunner().invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    for option in ("--task", "--out", "--seed", "--steps", "--cases", "--checkpoint", "--log"):
        assert option in result.output
    for option in ("--precision", "--thin-slab-probability", "--validate-every"):
        assert option in result.output


def test_bad_task_is_refused_with_the_allowed_values() -> None:
    result = CliRunner().invoke(app, ["evaluate", "--task", "spleen_ct", "--out", "x"])
    assert result.exit_code == 2
    assert "liver_ct" in result.output and "glioma_mr" in result.output


def test_evaluate_help_lists_the_set_options() -> None:
    result = CliRunner().invoke(app, ["evaluate", "--help"])
    assert result.exit_code == 0
    for option in ("--eval-cases", "--seed", "--seeds", "--json"):
        assert option in result.output
