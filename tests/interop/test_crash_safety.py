"""SIGKILL the appliance while dcmtk storescu pushes: nothing acknowledged is ever lost."""

from __future__ import annotations

import random
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from appliance.store import Store
from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from tests.peers import ApplianceProcess, nodelay_env, require_program, storescu_profile

pytestmark = pytest.mark.interop

ROUNDS = 10
SLICES = 80


def storescu_args(exe: str, port: int, files: list[Path]) -> list[str]:
    profile = str(storescu_profile())
    return [
        exe,
        "-v",
        "-aet",
        "STORESCU",
        "-aec",
        "SEGAPPLIANCE",
        "-xf",
        profile,
        "AllTS",
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]


def acknowledged_files(storescu_output: str) -> list[Path]:
    """Files for which storescu printed 'Received Store Response (Success)'."""
    acked: list[Path] = []
    current: Path | None = None
    for line in storescu_output.splitlines():
        sending = re.match(r"I: Sending file: (.+)$", line)
        if sending:
            current = Path(sending.group(1).strip())
        elif "Received Store Response (Success)" in line and current is not None:
            acked.append(current)
            current = None
    return acked


def test_sigkill_during_push_loses_nothing_acknowledged(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    exe = require_program("storescu")
    rng = random.Random(20261124)
    app = appliance_factory(quiet=30.0)
    study = SeriesIdentity()
    sent_uids: dict[Path, str] = {}
    acked: list[Path] = []
    kills = 0
    interrupted = 0
    for round_no in range(ROUNDS):
        identity = SeriesIdentity(
            study_uid=study.study_uid,
            series_number=round_no + 1,
            frame_of_reference_uid=study.frame_of_reference_uid,
        )
        files = write_series(
            tmp_path / f"series{round_no}",
            SeriesGeometry(slices=SLICES, rows=128, columns=128),
            identity=identity,
        )
        for f in files:
            sent_uids[f] = str(dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        push = subprocess.Popen(
            storescu_args(exe, app.port, files),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=nodelay_env(),
        )
        # Kill after a random number of acknowledged stores (plus up to 20 ms, so that
        # some kills land inside an instance): mid-transfer however fast the machine is.
        target = rng.randint(1, SLICES - 5)
        seen: list[str] = []
        assert push.stdout is not None
        for line in push.stdout:
            seen.append(line)
            if "Received Store Response (Success)" in line:
                target -= 1
                if target == 0:
                    break
        time.sleep(rng.uniform(0.0, 0.02))
        app.kill()
        kills += 1
        output, _ = push.communicate(timeout=60)
        round_acked = acknowledged_files("".join(seen) + output)
        acked.extend(round_acked)
        interrupted += len(round_acked) < SLICES
        app.start()  # restart on the same storage and port
        # A store still accepted after the restart: finish the round so series are whole.
        rest = [f for f in files if f not in round_acked]
        done = subprocess.run(
            storescu_args(exe, app.port, rest),
            capture_output=True,
            text=True,
            env=nodelay_env(),
            timeout=120,
        )
        acked.extend(acknowledged_files(done.stdout + done.stderr))

    assert kills == ROUNDS
    # Most kills must land mid-transfer, or the test proves nothing.
    assert interrupted >= ROUNDS // 2, f"only {interrupted} kills interrupted a push"
    assert len(acked) == ROUNDS * SLICES, "every file is acknowledged once in the end"
    app.kill()
    app.start()
    status = app.status()
    store = Store(app.root / "appliance.sqlite3")
    try:
        stored = store.instance_uids()
        for path in acked:
            uid = sent_uids[path]
            assert uid in stored, f"acknowledged instance {path.name} lost after SIGKILL"
        for record in store.series_instances(status["series"][0]["series_uid"]):
            assert record.path.is_file()
            assert dcmread(record.path).SOPInstanceUID == record.sop_uid  # complete file
    finally:
        store.close()
    assert status["instances"] == ROUNDS * SLICES
    assert len(status["series"]) == ROUNDS
    assert all(s["instances"] == SLICES for s in status["series"])
    assert not list((app.root / "spool" / ".tmp").iterdir()), "partial files were cleaned"
