"""``appliance federate start``/``status``/``join`` as real processes: the coordinator
CLI runs the SuperLink and a run; two phantom SuperNodes join; ``status`` shows the
rounds. ``join`` against a coordinator that never runs anything times out cleanly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.flower_sites import phantom_node_config
from tests.peers import free_port, require_program

pytestmark = [pytest.mark.interop, pytest.mark.slow]


def _config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(
        f'[storage]\nroot = "{tmp_path / "root"}"\n\n[federation]\n'
        f'coordinator = "127.0.0.1:{port}"\nbind = "127.0.0.1"\ninsecure = true\n'
        'task = "glioma_mr"\nlocal_steps = 2\nsite_name = "site_x"\n'
    )
    return path


def _cli(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "federate", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_coordinator_cli_runs_a_federation_and_reports_it(tmp_path: Path) -> None:
    require_program("flower-superlink")
    require_program("flower-supernode")
    from appliance.federation import runner

    port = free_port()
    config = _config(tmp_path, port)
    nodes = [
        runner.start_supernode(
            tmp_path / site,
            superlink=f"127.0.0.1:{port}",
            runtime_port=free_port(),
            node_config=phantom_node_config(site, tmp_path / site),
            tls=None,
        )
        for site in ("site_a", "site_b")
    ]
    try:
        done = _cli(
            "start",
            "--config",
            str(config),
            "--strategy",
            "fedavg",
            "--rounds",
            "1",
            "--min-sites",
            "2",
            "--set",
            "net-filters=4,8",
            "--set",
            "net-res-units=0",
            "--set",
            "patch-size=16,16,16",
            "--set",
            "target-spacing=5,5,5",
            "--set",
            "evaluate=false",
            timeout=600,
        )
    finally:
        for node in nodes:
            node.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "round 1 train" in done.stdout and "finished" in done.stdout
    status = _cli("status", "--json", "--config", str(config), timeout=60)
    assert status.returncode == 0, status.stderr
    progress = json.loads(status.stdout)
    assert progress["status"] == "finished" and progress["strategy"] == "fedavg"
    assert sorted(s["site"] for s in progress["sites"]) == ["site_a", "site_b"]
    result = Path(progress["result"]["directory"])
    assert (result / "weights.pt").is_file() and (result / "federation.json").is_file()
    text = _cli("status", "--config", str(config), timeout=60).stdout
    assert "round 1/1" in text and "site_a (1 cases)" in text


def test_join_waits_for_a_run_and_gives_up_cleanly(tmp_path: Path) -> None:
    require_program("flower-supernode")
    config = _config(tmp_path, free_port())  # nothing listens there
    done = _cli("join", "--config", str(config), "--timeout", "8", timeout=120)
    assert done.returncode == 1
    assert "site site_x: SuperNode" in done.stdout
    assert "no run ended within 8 s" in done.stderr
    assert (tmp_path / "root" / "federation" / "site" / "supernode.log").is_file()
