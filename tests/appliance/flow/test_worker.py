"""The worker: a loop that claims the oldest complete series and hands it to the
pipeline; it keeps going whatever one series does, and preloads the active models."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance.config import AppConfig
from appliance.flow.worker import Worker
from appliance.states import JobState, SeriesState
from appliance.store import Store
from dicom_bridge.synthetic import SeriesIdentity, write_series
from models.registry import ModelRegistry
from tests.appliance.flow.helpers import SMALL, FailsAfterTheJobStarted, activate_tiny, ingest


def wait_until(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_run_once_processes_the_claimed_series_and_reports_the_job_timings(
    tmp_path: Path, config: AppConfig, app_store: Store
) -> None:
    activate_tiny(app_store, config, tmp_path)
    identity = SeriesIdentity()
    ingest(app_store, write_series(tmp_path / "ct", SMALL, identity=identity))
    observed: list[Mapping[str, Any]] = []
    worker = Worker(app_store, threading.Event(), config, on_job_timings=observed.append)

    assert worker.run_once() is True
    assert worker.run_once() is False  # nothing left to claim

    assert app_store.get_series(identity.series_uid).state is SeriesState.DONE
    (job,) = app_store.list_jobs()
    assert job.state is JobState.DONE and len(app_store.list_outbox()) == 2
    (timings,) = observed
    assert {"volume_s", "model_s", "inference_s", "seg_s", "sr_s", "save_s"} <= set(timings)
    assert timings["inference_s"] == job.timings["inference_s"]


def test_a_failed_job_reports_no_timings(
    tmp_path: Path, config: AppConfig, app_store: Store
) -> None:
    ingest(app_store, write_series(tmp_path / "ct", SMALL))  # no active model
    observed: list[Mapping[str, Any]] = []
    assert Worker(app_store, threading.Event(), config, on_job_timings=observed.append).run_once()
    (job,) = app_store.list_jobs()
    assert job.state is JobState.FAILED and job.reason == "no_active_model"
    assert observed == []


def test_the_loop_survives_failing_series_records_why_and_goes_on(
    tmp_path: Path, config: AppConfig
) -> None:
    store = FailsAfterTheJobStarted(config.storage.database)
    try:
        activate_tiny(store, config, tmp_path)
        unreadable, broken, good = SeriesIdentity(), SeriesIdentity(), SeriesIdentity()
        files = write_series(tmp_path / "a", SMALL, identity=unreadable)
        ingest(store, files)
        files[3].write_bytes(b"not DICOM")  # damaged on disk after it was received
        ingest(store, write_series(tmp_path / "b", SMALL, identity=broken))
        ingest(store, write_series(tmp_path / "c", SMALL, identity=good))
        store.failures = 1  # the second series' job meets a database error
        stop = threading.Event()
        worker = Worker(store, stop, config, idle_seconds=0.05)
        worker.start()
        try:
            wait_until(lambda: store.series_counts().get("done", 0) == 1)
        finally:
            stop.set()
            worker.join(30)
        assert not worker.is_alive()

        rejected = store.get_series(unreadable.series_uid)
        assert rejected.state is SeriesState.REJECTED and rejected.reason
        assert store.list_jobs(series_uid=unreadable.series_uid) == []
        failed = store.get_series(broken.series_uid)
        assert failed.state is SeriesState.FAILED and failed.reason == "internal_error"
        (failed_job,) = store.list_jobs(series_uid=broken.series_uid)
        assert failed_job.state is JobState.FAILED and failed_job.reason == "internal_error"
        assert "disk I/O error" in (failed_job.detail or "")
        assert store.get_series(good.series_uid).state is SeriesState.DONE
        (done_job,) = store.list_jobs(series_uid=good.series_uid)
        assert done_job.state is JobState.DONE
        assert store.job_counts()["running"] == 0
    finally:
        store.close()


def test_preload_loads_the_active_model_or_says_why_not(
    tmp_path: Path, config: AppConfig, app_store: Store
) -> None:
    version = activate_tiny(app_store, config, tmp_path)
    worker = Worker(app_store, threading.Event(), config)
    worker.preload()
    record = app_store.active_model("liver_ct")
    assert record is not None and worker.networks.is_loaded(record)
    assert worker.preload_errors == {}

    weights = ModelRegistry(config.models_root).get("liver_ct", version).weights_path
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    fresh = Worker(app_store, threading.Event(), config)
    fresh.preload()
    assert "sha256" in fresh.preload_errors["liver_ct"]
    assert not fresh.networks.is_loaded(record)
