"""Retention with a fake clock: the right files go, protected ones stay, reasons are
given, and a re-sent instance is never lost to a purge."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.cli import app
from appliance.config import load_config
from appliance.flow.pipeline import result_dir_for
from appliance.ops.retention import Category, _remove_file, plan, purge
from appliance.states import CaseOrigin, CaseSplit, CaseState, SeriesState
from appliance.store import CaseRecord, NewCase, NewInstance, Store
from appliance.store.audit import read_entries
from dicom_bridge.spool import Spool, SpoolKey
from tests.appliance.conftest import Clock

DAY = 86400.0
ROOT = "1.2.826.0.1.3680043.8.498"

CONFIG = """\
[storage]
root = "{root}"
fsync = false
min_free_mb = 0

[models]
shipped = ""
device = "cpu"

[retention]
source_days = 30
results_days = 90
excluded_cases_days = 30
"""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Path, Store, Clock]]:
    config_path = tmp_path / "appliance.toml"
    config_path.write_text(CONFIG.format(root=tmp_path / "data"))
    clock = Clock(start=time.time() - 100 * DAY)  # "now" is 100 days ago; files are older
    store = Store(tmp_path / "data" / "appliance.sqlite3", clock=clock)
    yield config_path, store, clock
    store.close()


def _series(
    store: Store, spool: Spool, name: str, n: int = 3, *, old: bool = True
) -> tuple[str, list[Path]]:
    study, series = f"{ROOT}.{name}.1", f"{ROOT}.{name}.2"
    paths = []
    for i in range(n):
        key = SpoolKey(study, series, f"{ROOT}.{name}.3.{i}")
        path = spool.write(key, (b"DICM" + bytes(100),))
        if old:
            os.utime(path, (time.time() - 200 * DAY,) * 2)  # written long before any purge
        paths.append(path)
        store.record_instance(
            NewInstance(
                sop_uid=key.sop_uid,
                series_uid=series,
                study_uid=study,
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=path,
                size=104,
                calling_ae="CT1",
                modality="CT",
            )
        )
    return series, paths


def _finish(store: Store, clock: Clock, series: str, *, sent: bool | None) -> None:
    """Complete the series and run a job; ``sent``: its SEG acknowledged (True), still
    pending (False), or no destination (None)."""
    clock.advance(60)
    store.complete_quiet_series(30)
    claim = store.claim_complete_series()
    assert claim is not None and claim.series_uid == series
    job = store.start_job(claim, series.replace(".2", ".1"), "liver_ct")
    store.finish_series(
        claim, SeriesState.DONE, result={"task": "liver_ct"}, job_id=job.id, job_outputs={}
    )
    if sent is not None:
        item = store.enqueue("pacs", Path("/r/seg.dcm"), f"{series}.9", series)
        if sent:
            store.mark_sent(item, 0)


def _case(store: Store, tmp_path: Path, name: str, series: str) -> tuple[Path, CaseRecord]:
    """An active training case drawn on ``series``, with its label file."""
    labels = tmp_path / "data" / "cases" / name / "labels.npz"
    labels.parent.mkdir(parents=True)
    labels.write_bytes(bytes(10))
    case, _ = store.add_case(
        NewCase(
            task="liver_ct",
            source_series_uid=series,
            study_uid=series.replace(".2", ".1"),
            study_ref=name,
            annotation_ref=f"{series}.77",
            seg_sop_uid=None,
            origin=CaseOrigin.CLI,
            split=CaseSplit.TRAIN,
            labels_path=labels,
            labels={"Liver": 5, "Liver tumour": 0},
            segments=[],
        )
    )
    return labels, case


def test_purges_the_right_files_and_keeps_the_protected(
    env: tuple[Path, Store, Clock], tmp_path: Path
) -> None:
    config_path, store, clock = env
    config = load_config(config_path)
    spool = Spool(config.storage.spool_dir, fsync=False)
    delivered, delivered_files = _series(store, spool, "11")
    _finish(store, clock, delivered, sent=True)
    result_dir = result_dir_for(config, delivered, 1)
    result_dir.mkdir(parents=True)
    (result_dir / "seg.dcm").write_bytes(bytes(50))
    pending, pending_files = _series(store, spool, "12")
    _finish(store, clock, pending, sent=False)
    local_only, local_files = _series(store, spool, "13")
    _finish(store, clock, local_only, sent=None)
    training, training_files = _series(store, spool, "14")
    _finish(store, clock, training, sent=True)
    labels, case = _case(store, tmp_path, "c1", training)
    old_labels, old_case = _case(store, tmp_path, "c2", f"{ROOT}.15.2")
    store.set_case_state(old_case.id, CaseState.EXCLUDED)

    clock.advance(29 * DAY)
    early = plan(store, config)
    assert [i.ref for i in early.due] == []
    assert any("due" in i.reason for i in early.kept)

    clock.advance(2 * DAY)  # 31 days after delivery, 31 after the case was excluded
    todo = plan(store, config)
    due = {(i.category, i.series_uid or i.case_id) for i in todo.due}
    assert due == {
        (Category.SOURCE, delivered),
        (Category.SOURCE, local_only),
        (Category.CASES, old_case.id),
    }
    reasons = {i.series_uid: i.reason for i in todo.items if i.category is Category.SOURCE}
    assert "results delivered" in reasons[delivered] and "source_days = 30" in reasons[delivered]
    assert "no destination" in reasons[local_only]
    assert "not yet delivered" in reasons[pending]
    assert "training set" in reasons[training]
    results = [i for i in todo.items if i.category is Category.RESULTS]
    assert [(r.series_uid, r.due) for r in results] == [(delivered, False)]

    # the dry run through the CLI says the same and removes nothing
    runner = CliRunner()
    dry = runner.invoke(
        app, ["storage", "purge", "--dry-run", "--json", "--config", str(config_path)]
    )
    assert dry.exit_code == 0, dry.stderr
    assert all(p.is_file() for p in delivered_files)

    done = purge(store, config, todo)
    assert done.items == 3 and done.files == 3 + 3 + 1 and done.skipped == 0
    assert not any(p.exists() for p in delivered_files + local_files)
    assert all(p.is_file() for p in pending_files + training_files)
    assert labels.is_file() and not old_labels.exists()
    assert (result_dir / "seg.dcm").is_file()  # results_days = 90
    assert store.series_instances(delivered) == []
    assert store.get_case(case.id).state is CaseState.ACTIVE
    purged = [e for e in read_entries(store.audit.path) if e["event"] == "purged"]
    assert len(purged) == 3 and all("reason" in e for e in purged)

    # nothing left to purge now; the results go after 90 days
    assert plan(store, config).due == ()
    clock.advance(60 * DAY)
    late = plan(store, config)
    assert [(i.category, i.series_uid) for i in late.due] == [(Category.RESULTS, delivered)]
    purge(store, config, late)
    assert not result_dir.exists()


def test_a_series_sent_again_after_planning_is_left_alone(env: tuple[Path, Store, Clock]) -> None:
    config_path, store, clock = env
    config = load_config(config_path)
    spool = Spool(config.storage.spool_dir, fsync=False)
    series, files = _series(store, spool, "21")
    _finish(store, clock, series, sent=True)
    clock.advance(31 * DAY)
    todo = plan(store, config)
    assert [i.series_uid for i in todo.due] == [series]
    # the PACS sends the series again before the purge runs, with one more image
    clock.advance(1)
    _, again = _series(store, spool, "21", n=4, old=False)
    result = purge(store, config, todo)
    assert result.items == 0 and result.skipped == 1
    assert all(p.is_file() for p in files + again)
    assert len(store.series_instances(series)) == 4


def test_an_identical_repeat_does_not_hold_the_purge(env: tuple[Path, Store, Clock]) -> None:
    """Acknowledged means immutable: a repeat with identical bytes writes nothing, so it
    changes nothing retention looks at (the series' result was delivered long ago)."""
    config_path, store, clock = env
    config = load_config(config_path)
    spool = Spool(config.storage.spool_dir, fsync=False)
    series, files = _series(store, spool, "22")
    _finish(store, clock, series, sent=True)
    clock.advance(31 * DAY)
    todo = plan(store, config)
    clock.advance(1)
    for record in store.series_instances(series):  # the same instances, the same bytes
        repeat = NewInstance(
            sop_uid=record.sop_uid,
            series_uid=record.series_uid,
            study_uid=record.study_uid,
            sop_class_uid=record.sop_class_uid,
            transfer_syntax_uid=record.transfer_syntax_uid,
            path=record.path,
            size=record.size,
            calling_ae="CT1",
            modality="CT",
        )
        assert store.record_instance(repeat) is False
    result = purge(store, config, todo)
    assert result.items == 1
    assert not any(p.is_file() for p in files)


def test_a_file_replaced_during_the_purge_is_put_back(tmp_path: Path) -> None:
    path = tmp_path / "spool" / "x.dcm"
    path.parent.mkdir()
    path.write_bytes(b"old")
    os.utime(path, (time.time() - 10 * DAY,) * 2)
    started = time.time_ns()
    assert _remove_file(path, tmp_path / "trash", started) == 3
    assert not path.exists()
    path.write_bytes(b"re-sent")  # arrives after the purge began
    assert _remove_file(path, tmp_path / "trash", started) == 0
    assert path.read_bytes() == b"re-sent"
    assert list((tmp_path / "trash").iterdir()) == []


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[retention]\nsource_days = "soon"\nresults_days = -1\n')
    result = CliRunner().invoke(app, ["storage", "usage", "--config", str(bad)])
    assert result.exit_code == 2
    assert "retention.source_days" in result.stderr and "forever" in result.stderr
    assert "retention.results_days" in result.stderr


def test_usage_reports_categories_and_the_watermark(env: tuple[Path, Store, Clock]) -> None:
    config_path, store, _ = env
    config = load_config(config_path)
    spool = Spool(config.storage.spool_dir, fsync=False)
    _series(store, spool, "31", n=2)
    result = CliRunner().invoke(app, ["storage", "usage", "--json", "--config", str(config_path)])
    assert result.exit_code == 0, result.stderr
    usage = json.loads(result.stdout)
    assert usage["categories"]["source images"] == {"files": 2, "bytes": 208, "due_bytes": 0}
    assert usage["other"]["database"] > 0 and usage["free_bytes"] > 0
    assert usage["below_watermark"] is False
