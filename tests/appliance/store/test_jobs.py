"""Unit tests for appliance.store.jobs (and finishing a claim with a job's result)."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import StoreError
from appliance.states import JobState, OutboxState, SeriesState
from appliance.store import Claim, Enqueue, Store
from tests.appliance.conftest import Clock
from tests.appliance.store.test_series import SERIES, STUDY, inst


def _claim(store: Store, clock: Clock) -> Claim:
    clock.advance(31)
    store.complete_quiet_series(30)
    claim = store.claim_complete_series()
    assert claim is not None
    return claim


def test_only_failed_jobs_are_retryable() -> None:
    assert [state for state in JobState if state.retryable] == [JobState.FAILED]


def test_retry_job(store: Store, clock: Clock) -> None:
    store.record_instance(inst(1))
    claim = _claim(store, clock)
    job = store.start_job(claim, STUDY, "liver")
    assert (job.state, job.attempts) == (JobState.RUNNING, 1)
    with pytest.raises(StoreError, match="only failed jobs"):
        store.retry_job(job.id)
    store.fail_job(job.id, "boom", "detail", {"model": 1.5})
    store.finish_series(claim, SeriesState.FAILED, reason="boom")
    failed = store.get_job(job.id)
    assert (failed.state, failed.reason, failed.timings) == (
        JobState.FAILED,
        "boom",
        {"model": 1.5},
    )
    queued = store.retry_job(job.id)
    assert queued.state is JobState.QUEUED
    assert store.get_series(SERIES).state is SeriesState.COMPLETE
    with pytest.raises(StoreError, match="only failed jobs"):
        store.retry_job(job.id)
    again = store.start_job(_claim(store, clock), STUDY, "liver")
    assert (again.id, again.attempts, again.reason) == (job.id, 2, None)


def test_finish_with_a_job_result_enqueues_it(store: Store, clock: Clock) -> None:
    store.record_instance(inst(1))
    claim = _claim(store, clock)
    job = store.start_job(claim, STUDY, "liver")
    sends = [
        Enqueue("pacs", Path("/out/seg.dcm"), "9.1"),
        Enqueue("pacs", Path("/out/sr.dcm"), "9.2"),
    ]
    current = store.finish_series(
        claim,
        SeriesState.DONE,
        result={"shape": [1]},
        job_id=job.id,
        job_outputs={
            "seg_sop_uid": "9.1",
            "sr_sop_uid": "9.2",
            "seg_all_frames_sop_uid": "9.4",
            "rtstruct_sop_uid": "9.5",
        },
        job_timings={"total": 2.0},
        enqueue=sends,
    )
    assert current is True
    done = store.get_job(job.id)
    assert (done.state, done.outputs["seg_sop_uid"], done.timings) == (
        JobState.DONE,
        "9.1",
        {"total": 2.0},
    )
    assert done.finished_at == clock()
    items = store.list_outbox(states=[OutboxState.PENDING])
    assert sorted((i.sop_uid, i.series_uid) for i in items) == [("9.1", SERIES), ("9.2", SERIES)]
    assert store.is_own_output("9.2") and not store.is_own_output("9.3")
    assert store.is_own_output("9.4") and store.is_own_output("9.5")


def test_finish_of_a_reopened_series_supersedes_the_job(store: Store, clock: Clock) -> None:
    store.record_instance(inst(1))
    claim = _claim(store, clock)
    job = store.start_job(claim, STUDY, "liver")
    store.record_instance(inst(2))  # re-opens the series while the job runs
    current = store.finish_series(
        claim,
        SeriesState.DONE,
        job_id=job.id,
        job_outputs={"seg_sop_uid": "9.1"},
        enqueue=[Enqueue("pacs", Path("/out/seg.dcm"), "9.1")],
    )
    assert current is False
    stale = store.get_job(job.id)
    assert (stale.state, stale.reason, stale.outputs) == (JobState.FAILED, "superseded", {})
    assert store.list_outbox() == []
    assert store.job_counts()["failed"] == 1
