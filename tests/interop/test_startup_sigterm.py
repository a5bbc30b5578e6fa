"""A SIGTERM at any moment of ``appliance serve``'s start-up is a clean stop within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.peers import ApplianceProcess, wait_port

# timed against a real serve process: alone, in make test's second pass
pytestmark = [pytest.mark.slow, pytest.mark.alone]

STOP_WITHIN_S = 15.0


def _wait_log(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise AssertionError(f"serve exited ({proc.returncode}) before {text!r}")
        time.sleep(0.01)
    raise TimeoutError(f"{text!r} not logged within {timeout} s")


@pytest.mark.parametrize("moment", ["process_started", "models_loading", "port_listening"])
def test_sigterm_during_startup_stops_cleanly(
    moment: str, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    app = appliance_factory(start=False, name=moment)
    app.start_process()
    assert app.process is not None
    proc = app.process.proc
    if moment == "process_started":
        _wait_log(app.log, "appliance starting", proc)
    elif moment == "models_loading":
        _wait_log(app.log, "loading model", proc)
    else:
        wait_port(app.port, proc=proc, log=app.log)
    os.kill(proc.pid, signal.SIGTERM)
    sent = time.monotonic()
    try:
        code = proc.wait(STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve ignored SIGTERM at {moment}: {app.log.read_text()[-3000:]}")
    assert code == 0, app.log.read_text()[-3000:]
    assert time.monotonic() - sent < STOP_WITHIN_S
