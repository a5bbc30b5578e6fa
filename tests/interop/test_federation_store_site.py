"""The production path of a federated run at a hospital, with real processes: a site
appliance whose training cases are radiologists' SEGs imported into its store joins with
``appliance federate join``; the coordinator runs ``appliance federate start`` from its
active (shipped) model; a second, phantom site joins. The site trains on its TRAIN-split
case only (the held-out case is never sent to training), and when the run ends the site's
weights become a candidate stamped with strategy, run id and rounds, which the validation
gate decides on with the held-out case."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.cases.split import split_for
from appliance.cli import app
from appliance.config import load_config
from appliance.site_models.registry import register_shipped
from appliance.states import CaseSplit
from appliance.store import Store
from dicom_bridge.phantom_series import write_phantom_series
from dicom_bridge.synthetic import SeriesIdentity
from models.lifecycle import ModelState
from models.phantoms import MR_DEFAULT, generate_phantom
from tests.appliance.cli.test_gate_cli import _viewer_seg
from tests.peers import free_port, require_program

pytestmark = [pytest.mark.interop, pytest.mark.slow]

SPLIT_KEY = "store-site-federation-split-key-42"
SMALL_MR = replace(MR_DEFAULT, spacing_mm=(4.0, 3.0, 3.0), matrix=(48, 80, 80), seed=9510)


def _identity(split: CaseSplit, start: int) -> SeriesIdentity:
    for n in range(start, start + 400):
        study = f"1.2.826.0.1.3680043.8.498.95{n}"
        if split_for(study, SPLIT_KEY.encode(), 0.5) is split:
            return SeriesIdentity(
                patient_name="PHANTOM^MR", study_uid=study, series_description="Ax T1 POST GAD"
            )
    raise AssertionError(f"no {split} study UID found")


def _config(path: Path, root: Path, port: int, site: str) -> Path:
    path.write_text(
        f'[storage]\nroot = "{root}"\nfsync = false\n\n'
        '[models]\ndevice = "cpu"\ngate_min_cases = 1\n\n'
        f'[cases]\nheld_out_fraction = 0.5\nsplit_key = "{SPLIT_KEY}"\n\n'
        f'[federation]\ncoordinator = "127.0.0.1:{port}"\nbind = "127.0.0.1"\n'
        f'insecure = true\ntask = "glioma_mr"\nlocal_steps = 2\nsite_name = "{site}"\n',
        encoding="utf-8",
    )
    return path


def _cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", *args], capture_output=True, text=True, timeout=timeout
    )


def test_site_trains_on_its_annotated_cases_and_validates_the_result(tmp_path: Path) -> None:
    require_program("flower-superlink")
    require_program("flower-supernode")
    from appliance.federation import runner

    port = free_port()
    site_cfg = _config(tmp_path / "site.toml", tmp_path / "site", port, "site_store")
    coord_cfg = _config(tmp_path / "coord.toml", tmp_path / "coord", port, "coordinator")

    # Two annotated studies at the site: one in the training split, one held out.
    runner_cli = CliRunner()
    for k, split in enumerate((CaseSplit.TRAIN, CaseSplit.HELD_OUT)):
        phantom = generate_phantom("mr_t1c", SMALL_MR, k)
        series = tmp_path / f"series{k}"
        files = write_phantom_series(
            series,
            phantom.image,
            phantom.affine_lps,
            modality="MR",
            identity=_identity(split, 100 * k),
        )
        seg = _viewer_seg(files, phantom.labels, tmp_path / f"seg{k}.dcm")
        done = runner_cli.invoke(
            app, ["cases", "import", str(seg), "--series", str(series), "-c", str(site_cfg)]
        )
        assert done.exit_code == 0, done.output
    listing = json.loads(
        runner_cli.invoke(app, ["cases", "list", "--json", "-c", str(site_cfg)]).output
    )
    assert sorted(c["split"] for c in listing["cases"]) == ["held_out", "train"]
    # Both appliances have the shipped models active (as `serve` registers on first start).
    active: set[str] = set()
    for cfg in (site_cfg, coord_cfg):
        config = load_config(cfg)
        store = Store(config.storage.database)
        try:
            added = register_shipped(store, config)
            assert {r.task for r in added} >= {"glioma_mr"}
            active |= {
                r.version for r in added if r.task == "glioma_mr" and r.state is ModelState.ACTIVE
            }
        finally:
            store.close()
    (active_version,) = active  # the newest shipped version, at both appliances

    phantom_node = runner.start_supernode(
        tmp_path / "site_b",
        superlink=f"127.0.0.1:{port}",
        runtime_port=free_port(),
        node_config={
            "site-name": "site_b",
            "state-dir": str(tmp_path / "site_b"),
            "phantom-preset": "site_b",
            "phantom-cases": 2,
            "phantom-matrix": "28,36,36",
            "phantom-spacing": "6,6,6",
        },
        tls=None,
    )
    join_cmd = [sys.executable, "-m", "appliance", "federate", "join", "--config", str(site_cfg)]
    join = subprocess.Popen(
        [*join_cmd, "--timeout", "600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        start = _cli(
            "federate",
            "start",
            "--config",
            str(coord_cfg),
            "--strategy",
            "fedavg",
            "--rounds",
            "1",
            "--min-sites",
            "2",
            "--set",
            "evaluate=false",
            timeout=600,
        )
        assert start.returncode == 0, start.stdout + start.stderr
        assert f"the active model glioma_mr/{active_version}" in start.stdout
        joined_out, joined_err = join.communicate(timeout=300)
    finally:
        if join.poll() is None:
            join.kill()
            join.communicate()
        phantom_node.stop()
    assert join.returncode == 0, joined_out + joined_err

    progress = json.loads(
        _cli("federate", "status", "--json", "--config", str(coord_cfg), timeout=60).stdout
    )
    assert progress["status"] == "finished"
    run_id = str(progress["run_id"])
    sites = {s["site"]: s for s in progress["sites"]}
    assert set(sites) == {"site_store", "site_b"}
    assert sites["site_store"]["cases"] == 1  # the held-out case never reached training

    models = json.loads(
        _cli("models", "list", "--json", "--config", str(site_cfg), timeout=60).stdout
    )
    (candidate,) = [m for m in models if m["version"].endswith(f"-fed.{run_id}")]
    assert candidate["task"] == "glioma_mr" and candidate["federated_round"] == 1
    assert candidate["state"] in {"active", "rejected"}  # the gate decided on 1 held-out case
    shown = _cli(
        "models", "show", "glioma_mr", candidate["version"], "--config", str(site_cfg), timeout=60
    ).stdout
    assert "gate: " in shown and "on 1 held-out case(s)" in shown
    assert '"strategy": "fedavg"' in shown and f'"run_id": "{run_id}"' in shown

    # the site's audit trail: the run it joined, the candidate, the gate's decision
    audit = [
        json.loads(line)
        for line in (tmp_path / "site" / "audit" / "audit.jsonl").read_text().splitlines()
    ]
    (joined,) = [e for e in audit if e["event"] == "federation_joined"]
    assert joined["run"] == run_id and joined["strategy"] == "fedavg" and joined["rounds"] == 1
    registered = [e for e in audit if e["event"] == "model_registered"]
    assert any(e["version"] == candidate["version"] for e in registered)
    (gate,) = [e for e in audit if e["event"] == "gate_decision"]
    assert gate["version"] == candidate["version"] and gate["decision"] in {"promoted", "rejected"}
    metrics_store = Store(tmp_path / "site" / "appliance.sqlite3")
    try:
        counters = metrics_store.counters()
    finally:
        metrics_store.close()
    assert counters[("federation_runs", "fedavg")] == 1
    assert counters[("gate_decisions", gate["decision"])] == 1
