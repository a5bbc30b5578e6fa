"""``appliance federate simulate`` end to end on Flower's simulation runtime: a real
``flower-superlink --simulation`` (started and stopped by the command, by PID) runs the
production ServerApp and ClientApp on virtual SuperNodes (Ray), beside the in-process
baselines, and the report files come out. A tiny config keeps it to a couple of minutes;
the figures themselves are the benchmark's business (docs/results/federation_quick.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# serial: Ray's workers beside the unit tests took 460 s, not 130 s
pytestmark = [pytest.mark.interop, pytest.mark.slow]

TINY = """
name = "tiny"
description = "test"
seeds = [0]
tasks = ["glioma_mr"]
methods = ["local", "centralised", "fedavg", "fedbn"]  # fedgs: test_federation_flower
rounds = 2
local_steps = 3
workers = 2
timeout_s = 600
phantom_grid_mm = 6.0  # coarse phantoms: cheap to make, nothing to resample

[network]
filters = [4, 8]
res_units = 0
norm = "batch"

[task.glioma_mr]
patch_size = [16, 16, 16]
target_spacing_mm = [6.0, 6.0, 6.0]
most_shifted_site = "site_b"

[[site]]
preset = "site_a"
train = 2
held_out = 1

[[site]]
preset = "site_b"
train = 1
held_out = 1
"""


def _simulate(config: Path, out: Path, work: Path, *extra: str) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance",
            "federate",
            "simulate",
            "--config",
            str(config),
            "--out",
            str(out),
            "--workdir",
            str(work),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def _dice(record: dict[str, object]) -> dict[str, float]:
    sites = record["sites"]
    assert isinstance(sites, dict)
    return {name: float(site["dice_mean"]) for name, site in sites.items()}


def test_simulate_runs_baselines_and_strategies_on_the_simulation_runtime(
    tmp_path: Path,
) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text(TINY)
    out, work = tmp_path / "results", tmp_path / "work"
    log = _simulate(config, out, work)
    assert "starting flower-superlink --simulation" in log

    data = json.loads((out / "federation_tiny.json").read_text())
    records = {r["method"]: r for r in data["records"]}
    assert set(records) == {"local", "centralised", "fedavg", "fedbn"}
    for method, record in records.items():
        assert set(record["sites"]) == {"site_a", "site_b"}
        for site in record["sites"].values():
            assert 0.0 <= site["dice_mean"] <= 1.0 and site["cases"] == 1
        # one evaluation per round, every site scored
        assert len(record["history"]) == 2, method
        assert all(set(h["sites"]) == {"site_a", "site_b"} for h in record["history"])
    # federated runs happened on Flower: a run id, model bytes both ways
    for method in ("fedavg", "fedbn"):
        record = records[method]
        assert record["extra"]["run_id"]
        assert all(v > 0 for v in record["bytes_sent"].values())
        assert all(v > 0 for v in record["bytes_received"].values())
    # fedbn keeps normalisation at the sites: it sends less than fedavg
    assert records["fedbn"]["bytes_sent"]["site_a"] < records["fedavg"]["bytes_sent"]["site_a"]
    # local training shares nothing; centralised hands over the images (more than models)
    assert set(records["local"]["bytes_sent"].values()) == {0}
    sent = records["centralised"]["bytes_sent"]["site_a"]
    assert sent > 100_000 and sent > 5 * records["fedavg"]["bytes_sent"]["site_a"]
    # fedbn's sites end with their own normalisation: two different models
    assert records["fedbn"]["sites"]["site_a"] != records["fedbn"]["sites"]["site_b"]

    md = (out / "federation_tiny.md").read_text()
    assert "### Targets" in md and "| fedbn |" in md
    assert f"`appliance federate simulate --config {config}`" in md
    for png in ("federation_tiny_dice.png", "federation_tiny_rounds.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"

    # resumable: a second call keeps every finished run
    again = _simulate(config, out, work, "--resume")
    assert again.count("kept from an earlier run") == 4

    # reproducible: the same seed in a fresh work dir gives the same scores
    _simulate(config, tmp_path / "results2", tmp_path / "work2", "--methods", "local,fedavg")
    redo = json.loads((tmp_path / "results2" / "federation_tiny.json").read_text())
    redone = {r["method"]: r for r in redo["records"]}
    for method in ("local", "fedavg"):
        for site, value in _dice(redone[method]).items():
            assert value == pytest.approx(_dice(records[method])[site], abs=1e-3), method


def test_simulate_fine_tunes_from_initial_weights_without_round_scoring(tmp_path: Path) -> None:
    """A task's ``initial`` bundle starts the baselines and a real Flower run alike;
    ``pretrained`` scores it untrained; with ``evaluate_rounds = false`` nobody scores a
    round (the ServerApp's ``evaluate`` off), only the final models."""
    from tests.appliance.tiny_models import make_background_bundle

    bundle = make_background_bundle(tmp_path / "registry", task="liver_ct", version="0.0.1-ft")
    config = tmp_path / "ft.toml"
    config.write_text(
        'name = "ft"\nseeds = [0]\ntasks = ["liver_ct"]\n'
        'methods = ["pretrained", "local", "fedavg"]\n'
        "rounds = 2\nlocal_steps = 2\nbatch_size = 1\nlr = 0.001\nworkers = 2\n"
        "timeout_s = 600\nevaluate_rounds = false\nphantom_grid_mm = 6.0\n"
        f'[task.liver_ct]\ninitial = "{bundle.path}"\nmost_shifted_site = "site_b"\n'
        '[[site]]\npreset = "site_a"\ntrain = 1\nheld_out = 1\n'
        '[[site]]\npreset = "site_b"\ntrain = 1\nheld_out = 1\n'
    )
    out, work = tmp_path / "results", tmp_path / "work"
    log = _simulate(config, out, work)
    assert "every method starts from liver_ct/0.0.1-ft" in log
    data = json.loads((out / "federation_ft.json").read_text())
    records = {r["method"]: r for r in data["records"]}
    assert set(records) == {"pretrained", "local", "fedavg"}
    assert all(r["history"] == [] for r in records.values())  # no per-round scoring
    assert set(records["pretrained"]["bytes_sent"].values()) == {0}
    fedavg = records["fedavg"]
    assert fedavg["extra"]["run_id"] and all(v > 0 for v in fedavg["bytes_sent"].values())
    # the sites trained the bundle's network: 4-8 filters, not the [network] default
    assert all(v < 200_000 for v in fedavg["bytes_sent"].values())
    md = (out / "federation_ft.md").read_text()
    assert "fine-tuning the model liver_ct/0.0.1-ft" in md and "| pretrained |" in md
    assert not (out / "federation_ft_rounds.png").exists()
