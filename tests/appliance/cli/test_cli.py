"""The ``appliance`` CLI through typer's CliRunner: config check, status, outbox, echo, send."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from appliance.cli import app
from appliance.config import load_config
from appliance.states import OutboxState
from appliance.store import NewInstance, Store
from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series

SERIES = "1.2.826.0.1.3680043.8.498.20"
STUDY = "1.2.826.0.1.3680043.8.498.10"

GOOD = """\
[dicom]
ae_title = "SEGAPPLIANCE"
port = 11112
bind = "127.0.0.1"
allowed_callers = ["PACS"]
series_quiet_seconds = 5

[storage]
root = "{root}"

[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = 1
"""

BAD = """\
[dicom]
port = 70000
ae_title = "WAY_TOO_LONG_FOR_AN_AE"

[storage]
rooot = "/x"

[logging]
level = "LOUD"
"""


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "appliance.toml"
    path.write_text(GOOD.format(root=tmp_path / "data"), encoding="utf-8")
    return path


def store_for(config_file: Path) -> Store:
    return Store(load_config(config_file, environ={}).storage.database)


def invoke(runner: CliRunner, args: list[str], **kwargs: Any) -> Any:
    return runner.invoke(app, args, catch_exceptions=False, **kwargs)


def inst(n: int, series: str = SERIES) -> NewInstance:
    return NewInstance(
        sop_uid=f"{series}.{n}",
        series_uid=series,
        study_uid=STUDY,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=Path(f"/spool/{n}.dcm"),
        size=100,
        calling_ae="PACS",
        modality="CT",
        instance_number=n,
    )


# -- config check --------------------------------------------------------------------------------


def test_config_check_ok(runner: CliRunner, config_file: Path) -> None:
    result = invoke(runner, ["config", "check", str(config_file)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.stdout
    assert "SEGAPPLIANCE" in result.stdout
    assert "1 destination(s)" in result.stdout


def test_config_check_bad_lists_every_key(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD, encoding="utf-8")
    result = invoke(runner, ["config", "check", str(path)])
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    for key in ("dicom.port", "dicom.ae_title", "storage.rooot", "logging.level"):
        assert sum(line.startswith(f"{key}: ") for line in lines) == 1, (key, lines)
    assert "4 error(s)" in result.stderr
    assert "ok" not in result.stdout


def test_config_check_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, ["config", "check", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert "file not found" in result.stderr


def test_bad_config_makes_other_commands_exit_2(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD, encoding="utf-8")
    result = invoke(runner, ["status", "--config", str(path)])
    assert result.exit_code == 2
    assert "dicom.port" in result.stderr


def test_no_config_at_all(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APPLIANCE_CONFIG", raising=False)
    result = invoke(runner, ["status"])
    assert result.exit_code == 2
    assert "APPLIANCE_CONFIG" in result.stderr


# -- status ----------------------------------------------------------------------------------------


def test_status_json_empty(runner: CliRunner, config_file: Path) -> None:
    result = invoke(runner, ["status", "--json", "--config", str(config_file)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["instances"] == 0
    assert report["series"] == []
    assert report["rejections"] == []
    assert report["queues"] == {
        "series_waiting": 0,
        "series_processing": 0,
        "outbox_pending": 0,
        "outbox_dead": 0,
    }
    assert all(v == 0 for v in report["series_states"].values())


def test_status_json_after_instances(runner: CliRunner, config_file: Path) -> None:
    store = store_for(config_file)
    for n in range(3):
        store.record_instance(inst(n))
    store.record_instance(inst(1, "1.2.3.4"))
    store.record_rejection("instance", "invalid UID", status=0xC000, calling_ae="PACS")
    store.close()

    result = invoke(runner, ["status", "--json"], env={"APPLIANCE_CONFIG": str(config_file)})
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["instances"] == 4
    by_uid = {s["series_uid"]: s for s in report["series"]}
    assert set(by_uid) == {SERIES, "1.2.3.4"}
    assert by_uid[SERIES]["state"] == "receiving"
    assert by_uid[SERIES]["instances"] == 3
    assert by_uid["1.2.3.4"]["instances"] == 1
    assert report["series_states"]["receiving"] == 2
    assert report["rejections"][0]["reason"] == "invalid UID"
    assert report["rejections"][0]["status"] == "0xC000"


def test_status_text(runner: CliRunner, config_file: Path) -> None:
    empty = invoke(runner, ["status", "-c", str(config_file)])
    assert empty.exit_code == 0, empty.output
    assert "instances: 0" in empty.stdout

    store = store_for(config_file)
    store.record_instance(inst(1))
    store.record_instance(inst(2))
    store.record_rejection("association", "calling AE not allowed", calling_ae="EVIL")
    store.close()
    result = invoke(runner, ["status", "-c", str(config_file)])
    assert result.exit_code == 0, result.output
    assert "instances: 2" in result.stdout
    line = next(ln for ln in result.stdout.splitlines() if ln.startswith(SERIES))
    assert "receiving" in line and " 2 " in f"{line} "
    assert "calling AE not allowed" in result.stdout
    assert "EVIL" in result.stdout


# -- outbox ----------------------------------------------------------------------------------------


def _dead_item(config_file: Path) -> int:
    store = store_for(config_file)
    item_id = store.enqueue("pacs", Path("/nowhere/x.dcm"), "1.2.3.9", SERIES)
    store.claim_due()
    store.mark_send_failed(item_id, "association rejected", None, retry_at=None)
    store.close()
    return item_id


def test_outbox_list_empty(runner: CliRunner, config_file: Path) -> None:
    result = invoke(runner, ["outbox", "list", "-c", str(config_file)])
    assert result.exit_code == 0, result.output
    assert "outbox is empty" in result.stdout
    as_json = invoke(runner, ["outbox", "list", "--json", "-c", str(config_file)])
    assert json.loads(as_json.stdout) == []


def test_outbox_list_and_retry(runner: CliRunner, config_file: Path) -> None:
    item_id = _dead_item(config_file)
    env = {"APPLIANCE_CONFIG": str(config_file)}

    text = invoke(runner, ["outbox", "list"], env=env)
    assert text.exit_code == 0, text.output
    row = next(ln for ln in text.stdout.splitlines() if ln.strip().startswith(str(item_id)))
    assert "pacs" in row and "dead" in row and "association rejected" in row

    listed = json.loads(invoke(runner, ["outbox", "list", "--json"], env=env).stdout)
    assert len(listed) == 1
    assert listed[0]["id"] == item_id
    assert listed[0]["state"] == "dead"
    assert listed[0]["attempts"] == 1
    assert listed[0]["destination"] == "pacs"
    assert listed[0]["last_error"] == "association rejected"

    only_sent = json.loads(
        invoke(runner, ["outbox", "list", "--json", "--state", "sent"], env=env).stdout
    )
    assert only_sent == []
    only_dead = json.loads(
        invoke(runner, ["outbox", "list", "--json", "--state", "DEAD"], env=env).stdout
    )
    assert [i["id"] for i in only_dead] == [item_id]

    retried = invoke(runner, ["outbox", "retry", str(item_id)], env=env)
    assert retried.exit_code == 0, retried.output
    assert "pending" in retried.stdout
    store = store_for(config_file)
    item = store.get_outbox(item_id)
    store.close()
    assert item.state is OutboxState.PENDING
    assert item.attempts == 0


def test_outbox_retry_unknown(runner: CliRunner, config_file: Path) -> None:
    result = invoke(runner, ["outbox", "retry", "999", "-c", str(config_file)])
    assert result.exit_code != 0
    assert "no outbox item 999" in result.stderr


def test_outbox_retry_sent_item(runner: CliRunner, config_file: Path) -> None:
    store = store_for(config_file)
    item_id = store.enqueue("pacs", Path("/x.dcm"), "1.2.3")
    store.claim_due()
    store.mark_sent(item_id, 0)
    store.close()
    result = invoke(runner, ["outbox", "retry", str(item_id), "-c", str(config_file)])
    assert result.exit_code != 0
    assert "sent" in result.stderr


def test_outbox_list_bad_state(runner: CliRunner, config_file: Path) -> None:
    result = invoke(runner, ["outbox", "list", "--state", "bogus", "-c", str(config_file)])
    assert result.exit_code == 2
    assert "pending" in result.stderr and "bogus" in result.stderr


# -- echo and send -------------------------------------------------------------------------------


def test_echo_unknown_destination(runner: CliRunner, config_file: Path) -> None:
    result = invoke(runner, ["echo", "nosuch", "-c", str(config_file)])
    assert result.exit_code != 0
    assert "no destination named 'nosuch'" in result.stderr
    assert "pacs" in result.stderr  # names the known ones


def test_send_unknown_destination(runner: CliRunner, config_file: Path, tmp_path: Path) -> None:
    (path,) = write_series(tmp_path / "ct", SeriesGeometry(1, 4, 4))
    result = invoke(runner, ["send", "nosuch", str(path), "-c", str(config_file)])
    assert result.exit_code != 0
    assert "no destination named 'nosuch'" in result.stderr
    store = store_for(config_file)
    assert store.list_outbox() == []
    store.close()


def test_send_queues_files(runner: CliRunner, config_file: Path, tmp_path: Path) -> None:
    identity = SeriesIdentity(series_uid=SERIES, study_uid=STUDY)
    paths = write_series(tmp_path / "ct", SeriesGeometry(2, 4, 4), identity=identity)
    result = invoke(
        runner, ["send", "pacs", *map(str, paths)], env={"APPLIANCE_CONFIG": str(config_file)}
    )
    assert result.exit_code == 0, result.output
    assert "queued 2 file(s) for pacs" in result.stdout
    store = store_for(config_file)
    items = store.list_outbox()
    store.close()
    assert len(items) == 2
    assert {i.state for i in items} == {OutboxState.PENDING}
    assert {i.series_uid for i in items} == {SERIES}
    assert {i.path for i in items} == {p.resolve() for p in paths}


def test_send_rejects_non_dicom(runner: CliRunner, config_file: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.txt"
    junk.write_text("not dicom")
    good = write_series(tmp_path / "ct", SeriesGeometry(slices=1, rows=8, columns=8))[0]
    # A bad file anywhere in the list: a clear error and nothing queued, not even good files.
    result = invoke(runner, ["send", "pacs", str(good), str(junk), "-c", str(config_file)])
    assert result.exit_code != 0
    assert "not a readable DICOM file" in result.stderr
    assert "nothing was queued" in result.stderr
    store = Store(load_config(config_file).storage.database)
    assert store.list_outbox() == []
    store.close()


def test_help_lists_commands(runner: CliRunner) -> None:
    result = invoke(runner, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "status", "echo", "send", "config", "outbox"):
        assert command in result.stdout
