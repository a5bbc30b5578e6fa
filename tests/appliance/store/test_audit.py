"""The audit trail: hash chain, concurrent writers, keyed references, what the store
records, and ``appliance audit export|verify``."""

from __future__ import annotations

import json
import multiprocessing
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from appliance.cli import app
from appliance.errors import AuditError
from appliance.states import SeriesState
from appliance.store import Claim, NewInstance, Store
from appliance.store.audit import (
    AuditEvent,
    AuditLog,
    entries_since,
    keyed_ref,
    parse_since,
    read_entries,
    verify,
)
from models.lifecycle import ModelState
from tests.appliance.cli.test_models import CONFIG
from tests.appliance.conftest import Clock

STUDY = "1.2.826.0.1.3680043.8.498.111"
SERIES = "1.2.826.0.1.3680043.8.498.222"


def _log(tmp_path: Path, clock: Any = None) -> AuditLog:
    return AuditLog(tmp_path / "audit" / "audit.jsonl", b"k" * 32, clock=clock or Clock())


def test_entries_chain_and_verify(tmp_path: Path) -> None:
    log = _log(tmp_path)
    for i in range(5):
        log.record(AuditEvent.ADMIN_COMMAND, command=f"appliance c{i}", params={})
    entries = list(read_entries(log.path))
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[1]["prev"] == entries[0]["hash"]
    assert verify(log.path).ok and verify(log.path).entries == 5


@pytest.mark.parametrize("damage", ["edit", "remove", "swap", "truncate"])
def test_verify_finds_any_tampering(tmp_path: Path, damage: str) -> None:
    log = _log(tmp_path)
    for i in range(4):
        log.record(AuditEvent.OBJECT_SENT, destination=f"pacs{i}")
    lines = log.path.read_text().splitlines()
    if damage == "edit":
        lines[1] = lines[1].replace("pacs1", "pacsX")
    elif damage == "remove":
        del lines[2]
    elif damage == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        lines[3] = lines[3][:20]
    log.path.write_text("\n".join(lines) + "\n")
    result = verify(log.path)
    assert not result.ok and result.problem


def test_a_torn_last_line_is_not_chained_onto(tmp_path: Path, caplog: Any) -> None:
    log = _log(tmp_path)
    log.record(AuditEvent.ADMIN_COMMAND, command="a")
    with open(log.path, "a") as handle:
        handle.write('{"seq": 2, "ha')  # power loss mid-write
    log.record(AuditEvent.ADMIN_COMMAND, command="b")  # must not raise
    assert log.failures == 1
    assert "damaged" in caplog.text


def _write_many(path: str, worker: int, count: int) -> None:
    log = AuditLog(Path(path), b"k" * 32)
    for i in range(count):
        log.record(AuditEvent.ADMIN_COMMAND, command=f"w{worker}-{i}")


def test_concurrent_threads_and_processes_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(path), w, 60)) for w in range(2)]
    threads = [threading.Thread(target=_write_many, args=(str(path), 10 + w, 60)) for w in range(2)]
    for p in procs:
        p.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    result = verify(path)
    assert result.ok, result.problem
    assert result.entries == 240
    commands = {e["command"] for e in read_entries(path)}
    assert len(commands) == 240


def test_keyed_refs_are_stable_and_secret() -> None:
    assert keyed_ref(b"a" * 32, STUDY) == keyed_ref(b"a" * 32, STUDY)
    assert keyed_ref(b"a" * 32, STUDY) != keyed_ref(b"b" * 32, STUDY)
    assert STUDY not in keyed_ref(b"a" * 32, STUDY)


def test_parse_since_forms() -> None:
    assert parse_since("2026-11-01") == 1793491200.0
    assert parse_since("2026-11-01T01:00+01:00") == 1793491200.0
    assert parse_since("7d", now=1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert parse_since("30m", now=1_000_000.0) == 1_000_000.0 - 1800
    with pytest.raises(AuditError, match="--since"):
        parse_since("last tuesday")


def _instance(sop: str) -> NewInstance:
    return NewInstance(
        sop_uid=sop,
        series_uid=SERIES,
        study_uid=STUDY,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=Path("/nonexistent") / f"{sop}.dcm",
        size=10,
        calling_ae="MODALITY",
        modality="CT",
    )


def test_store_records_series_jobs_sends_and_models(store: Store, clock: Clock) -> None:
    store.record_instance(_instance(STUDY + ".1"))
    clock.advance(60)
    assert store.complete_quiet_series(30) == [SERIES]
    claim = store.claim_complete_series()
    assert claim == Claim(SERIES, 1)
    job = store.start_job(claim, STUDY, "liver_ct")
    store.set_job_model(job.id, "liver", "1.0.0", "ab" * 32, 3)
    store.finish_series(
        claim,
        SeriesState.DONE,
        result={"task": "liver_ct"},
        job_id=job.id,
        job_outputs={"seg_sop_uid": "1.2.3.4", "sr_sop_uid": "1.2.3.5"},
    )
    item = store.enqueue("pacs", Path("/x/seg.dcm"), "1.2.3.4", SERIES)
    store.mark_sent(item, 0, peer="PACS@127.0.0.1:104")
    store.record_rejection("association", "calling AE title not allowed", calling_ae="EVIL")
    model = Path("/m")
    store.register_model(
        task="liver_ct",
        version="2.0.0",
        name="liver",
        weights_sha256="cd" * 32,
        federated_round=4,
        path=model,
        origin="federated",
    )
    store.set_model_state("liver_ct", "2.0.0", ModelState.VALIDATED)
    store.activate("liver_ct", "2.0.0")

    entries = list(read_entries(store.audit.path))
    by_event = {e["event"]: e for e in entries}
    received = by_event["series_received"]
    assert received["study"] == store.audit.ref(STUDY) and received["instances"] == 1
    assert received["calling_ae"] == ["MODALITY"] and received["modality"] == "CT"
    finished = by_event["job_finished"]
    assert finished["model_sha256"] == "ab" * 32 and finished["federated_round"] == 3
    assert finished["state"] == "done" and finished["queued"] == 0
    sent = by_event["object_sent"]
    assert sent["peer"] == "PACS@127.0.0.1:104" and sent["destination"] == "pacs"
    assert by_event["association"]["outcome"] == "refused"
    assert by_event["model_state"]["state"] == "validated"
    activated = by_event["model_activated"]
    assert activated["version"] == "2.0.0" and activated["model_sha256"] == "cd" * 32
    assert verify(store.audit.path).ok
    # studies and series by keyed hash only: no UID anywhere in the file
    text = store.audit.path.read_text()
    assert STUDY not in text and SERIES not in text and "1.2.3.4" not in text


def test_cli_export_since_and_verify(tmp_path: Path) -> None:
    config = tmp_path / "appliance.toml"
    config.write_text(CONFIG.format(root=tmp_path / "data"))
    store = Store(tmp_path / "data" / "appliance.sqlite3")
    store.close()
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(app, [*args, "--config", str(config)])

    assert run("models", "list").exit_code == 0
    assert run("jobs", "list", "--state", "failed").exit_code == 0
    result = run("audit", "export", "--since", "1h")
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    commands = [e["command"] for e in lines if e["event"] == "admin_command"]
    assert commands == ["appliance models list", "appliance jobs list", "appliance audit export"]
    assert lines[1]["params"]["state"] == "failed"
    # a path value is recorded as given, not by its value
    out = tmp_path / "export.jsonl"
    assert run("audit", "export", "--since", "2000-01-01", "--out", str(out)).exit_code == 0
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert exported[-1]["params"]["out"] == "<given>" and str(out) not in out.read_text()
    assert list(entries_since(tmp_path / "data" / "audit" / "audit.jsonl", 4e9)) == []
    assert run("audit", "export", "--since", "yesterday-ish").exit_code == 2

    ok = run("audit", "verify")
    assert ok.exit_code == 0 and "intact" in ok.stdout
    path = tmp_path / "data" / "audit" / "audit.jsonl"
    lines_raw = path.read_text().splitlines()
    path.write_text("\n".join(lines_raw[1:]) + "\n")
    broken = run("audit", "verify")
    assert broken.exit_code == 1 and "broken" in broken.stderr
