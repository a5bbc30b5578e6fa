"""A lost, empty or corrupt database on a real ``appliance serve``: it refuses to start with
one line naming the file and the recovery command; ``storage reindex`` rebuilds the index
without sending anything to the PACS again; ``storage backup`` of a running appliance is
a database it starts from; no CLI error shows local variables (keys)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_bridge.spool import Spool, SpoolKey
from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from tests.interop.test_roundtrip_seg import wait_for
from tests.liver_series import write_liver_series
from tests.peers import ApplianceProcess, storescp, storescu

pytestmark = pytest.mark.interop

SPLIT_KEY = "SPLIT-KEY-7f3a9c21e8d04b6f"

#: a log record on stderr (text format): "2026-12-06 06:39:31,601 INFO logger: message"
LOG_RECORD = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} [A-Z]+ [\w.]+: ")


def _database(app: ApplianceProcess) -> Path:
    return app.root / "appliance.sqlite3"


def _drop_database(app: ApplianceProcess) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(_database(app)) + suffix).unlink(missing_ok=True)


def _spool_series(app: ApplianceProcess, directory: Path, identity: SeriesIdentity) -> None:
    """Files in the spool as the listener leaves them (the database knows nothing)."""
    spool = Spool(app.root / "spool", fsync=False)
    for path in write_series(
        directory, SeriesGeometry(slices=4, rows=32, columns=32), identity=identity
    ):
        sop = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        spool.write(SpoolKey(identity.study_uid, identity.series_uid, sop), (path.read_bytes(),))


def _serve(app: ApplianceProcess) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "serve", "--config", str(app.config)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("database", ["missing", "zero_bytes", "garbage"])
def test_serve_refuses_a_lost_database_next_to_a_full_spool(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess], database: str
) -> None:
    app = appliance_factory(start=False)
    _spool_series(app, tmp_path / "series", SeriesIdentity(patient_name="DOE^JANE"))
    if database == "zero_bytes":
        _database(app).write_bytes(b"")
    elif database == "garbage":
        _database(app).write_bytes(b"\x00garbage, not SQLite\xff" * 1000)
    started = time.monotonic()
    done = _serve(app)
    assert time.monotonic() - started < 60
    assert done.returncode == 1, done.stdout + done.stderr
    # the one-line error, beside the service's own log records (e.g. "appliance starting")
    lines = [
        line for line in done.stderr.splitlines() if line.strip() and not LOG_RECORD.match(line)
    ]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert str(_database(app)) in lines[0]
    assert "appliance storage reindex" in lines[0] and "backup" in lines[0]
    assert "Traceback" not in done.stderr and "DOE" not in done.stderr
    if database == "missing":
        assert not _database(app).exists(), "a refused start creates no database"
    if database == "zero_bytes":
        assert _database(app).stat().st_size == 0, "a refused start changes nothing"


def test_reindex_restores_the_series_without_sending_again(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    ct = SeriesIdentity()
    files = write_liver_series(tmp_path / "ct", ct)
    with storescp(tmp_path / "pacs") as (pacs_port, pacs_dir):
        app = appliance_factory(
            quiet=1.0,
            destinations=(
                dict(name="pacs", ae_title="TESTPACS", host="127.0.0.1", port=pacs_port),
            ),
        )
        assert storescu(app.port, files).returncode == 0

        def sent() -> bool:
            return int(app.status()["outbox"].get("sent", 0)) == 2  # SEG and SR

        wait_for(sent, 180, "the SEG and SR were not sent")
        app.stop()
        delivered = sorted(p for p in pacs_dir.rglob("*") if p.is_file())
        assert len(delivered) == 2

        _drop_database(app)
        unprocessed = SeriesIdentity(series_number=2)
        _spool_series(app, tmp_path / "unprocessed", unprocessed)
        assert _serve(app).returncode == 1, "refused before the reindex"
        reindex = app.cli("storage", "reindex")
        assert "1 series with a result marked done" in reindex.stdout, reindex.stdout

        app.start()
        time.sleep(4.0)  # series_quiet_seconds, the worker's and the outbox's polls
        status = app.status()
        series = {s["series_uid"]: s for s in status["series"]}
        assert (series[ct.series_uid]["state"], series[ct.series_uid]["reason"]) == (
            "done",
            "reindexed",
        )
        assert series[ct.series_uid]["instances"] == len(files)
        assert series[unprocessed.series_uid]["state"] == "skipped"
        assert series[unprocessed.series_uid]["reason"] == "reindexed"
        assert sum(status["outbox"].values()) == 0, "nothing queued to be sent again"
        assert status["jobs"] == []
        app.stop()
        assert sorted(p for p in pacs_dir.rglob("*") if p.is_file()) == delivered


def test_backup_of_a_running_appliance_is_a_database_it_starts_from(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    app = appliance_factory(quiet=60.0)
    files = write_series(tmp_path / "ct", SeriesGeometry(slices=12, rows=32, columns=32))
    assert storescu(app.port, files).returncode == 0
    backup = tmp_path / "backup.sqlite3"
    assert app.cli("storage", "backup", str(backup)).returncode == 0  # while serving
    again = app.cli("storage", "backup", str(backup), check=False)
    assert again.returncode == 1 and "exists" in again.stderr
    app.stop()
    _drop_database(app)
    _database(app).write_bytes(backup.read_bytes())  # restore: stop, copy over, start
    app.start()
    status = app.status()
    assert status["instances"] == len(files)
    assert [s["instances"] for s in status["series"]] == [len(files)]


_EXPLODE = """
from pathlib import Path
from appliance.cli import app, main
from appliance.cli.common import load, open_store

@app.command("explode")
def explode(config: Path) -> None:
    from appliance.cases.split import split_key
    cfg = load(config)
    store = open_store(cfg)
    key = split_key(store, cfg)
    raise RuntimeError(f"unexpected failure after reading a {len(key)}-byte key")

main()
"""


def test_cli_errors_show_no_local_variables(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    app = appliance_factory(start=False, extra=f'[cases]\nsplit_key = "{SPLIT_KEY}"\n')
    env_cmd = [sys.executable, "-c", _EXPLODE, "explode", str(app.config)]
    done = subprocess.run(env_cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "unexpected failure" in output, output
    assert SPLIT_KEY not in output and "locals" not in output.lower()

    _database(app).write_bytes(b"\x00garbage, not SQLite\xff" * 1000)
    status = app.cli("status", check=False)
    lines = [line for line in status.stderr.splitlines() if line.strip()]
    assert status.returncode == 1 and len(lines) == 1, status.stderr
    assert str(_database(app)) in lines[0] and "appliance storage reindex" in lines[0]
