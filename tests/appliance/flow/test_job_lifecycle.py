"""A job that has started always ends, DONE or FAILED with a reason: never stranded
RUNNING, where ``appliance jobs retry`` refuses it, the scheduled federation join waits
for an inference queue that never empties and retention never purges its series."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.cli import app
from appliance.config import AppConfig, load_config
from appliance.federation.schedule import inference_busy
from appliance.ops.retention import Category, plan
from appliance.states import JobState, SeriesState
from appliance.store import Store
from dicom_bridge.seg import AlgorithmInfo
from dicom_bridge.synthetic import SeriesIdentity, write_series
from tests.appliance.flow.helpers import (
    SMALL,
    FailsAfterTheJobStarted,
    activate,
    activate_tiny,
    ingest,
    make_named_bundle,
    run_worker,
)

DAY = 86400.0
# A model card may name its model so (1-64 characters), but a DICOM LO value may not
# hold a backslash (it separates values): the SEG's algorithm identification refuses it.
NAME_THE_SEG_REFUSES = "Liver\\tumour UNet"

CONFIG = """\
[storage]
root = "{root}"
fsync = false

[models]
shipped = ""
device = "cpu"

[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = 104

[retention]
source_days = 30
"""


def cli(config_file: Path, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [*args, "--config", str(config_file)])
    return result.exit_code, result.stdout, result.stderr


def test_card_name_the_seg_refuses_fails_the_job_which_retry_accepts(tmp_path: Path) -> None:
    config_file = tmp_path / "appliance.toml"
    config_file.write_text(CONFIG.format(root=tmp_path / "data"), encoding="utf-8")
    config = load_config(config_file)
    store = Store(config.storage.database)
    try:
        bundle = make_named_bundle(tmp_path / "src", NAME_THE_SEG_REFUSES)
        assert bundle.card.name == NAME_THE_SEG_REFUSES  # the card takes it
        activate(store, config, bundle)
        identity = SeriesIdentity()
        ingest(store, write_series(tmp_path / "ct", SMALL, identity=identity))
        assert inference_busy(store)

        run_worker(store, config)

        (job,) = store.list_jobs()
        assert job.state is JobState.FAILED and job.reason == "seg_failed"
        assert "algorithm name" in (job.detail or "") and "backslash" in (job.detail or "")
        assert job.finished_at is not None and job.model_version == bundle.card.version
        assert {"volume_s", "model_s", "inference_s"} <= set(job.timings)
        series = store.get_series(identity.series_uid)
        assert series.state is SeriesState.DONE and series.result is not None
        assert series.result["job_state"] == "failed" and series.result["job_id"] == job.id
        assert store.list_outbox() == []
        assert not inference_busy(store)  # a scheduled federation join may go ahead
        (source,) = [
            item
            for item in plan(store, config, now=store.now() + 31 * DAY).items
            if item.category is Category.SOURCE
        ]
        assert source.due and "job failed" in source.reason  # retention may purge it
    finally:
        store.close()

    code, out, err = cli(config_file, "jobs", "retry", str(job.id))
    assert code == 0 and f"job {job.id} (liver_ct): queued" in out, err

    store = Store(config.storage.database)
    try:
        assert store.get_job(job.id).state is JobState.QUEUED and inference_busy(store)
        activate_tiny(store, config, tmp_path)  # a model the SEG accepts
        run_worker(store, config)
        again = store.get_job(job.id)
        assert again.state is JobState.DONE and again.attempts == 2 and again.reason is None
        assert len(store.list_outbox()) == 2
        assert not inference_busy(store)
    finally:
        store.close()


@pytest.mark.parametrize("name", [NAME_THE_SEG_REFUSES, "Liver\tUNet", "x" * 65])
def test_the_seg_refuses_the_name_itself(name: str) -> None:
    """What the test above relies on: the SEG's algorithm identification (an LO value)
    refuses a backslash, as it refuses control characters and over-long names."""
    with pytest.raises(ValueError, match="algorithm name"):
        AlgorithmInfo(name=name, version="1.0.0", weights_sha256="0" * 64)


def test_an_unexpected_error_after_the_job_started_fails_job_and_series(
    tmp_path: Path, config: AppConfig
) -> None:
    store = FailsAfterTheJobStarted(config.storage.database)
    store.failures = 1
    try:
        activate_tiny(store, config, tmp_path)
        identity = SeriesIdentity()
        ingest(store, write_series(tmp_path / "ct", SMALL, identity=identity))

        run_worker(store, config)

        (job,) = store.list_jobs()
        assert job.state is JobState.FAILED and job.reason == "internal_error"
        assert job.detail == "StoreError: database error: disk I/O error"
        assert job.finished_at is not None
        series = store.get_series(identity.series_uid)
        assert series.state is SeriesState.FAILED and series.reason == "internal_error"
        assert series.detail == job.detail
        assert not inference_busy(store)

        assert store.retry_job(job.id).state is JobState.QUEUED
        run_worker(store, config)
        assert store.get_job(job.id).state is JobState.DONE
        assert store.get_series(identity.series_uid).state is SeriesState.DONE
    finally:
        store.close()
