"""The scheduler: a series is complete once no instance has arrived for the quiet period
(on the store's clock); recent series stay RECEIVING; a failed pass is retried."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import StoreError
from appliance.flow.scheduler import Scheduler
from appliance.states import SeriesState
from appliance.store import NewInstance, Store
from tests.appliance.conftest import Clock

ROOT = "1.2.826.0.1.3680043.8.498.77"
QUIET = 0.2  # seconds of the store's clock; the scheduler then looks every 0.05 s


def receive(store: Store, series: str, n: int = 2) -> None:
    """``n`` instances of ``series`` (study ``<series>.0``), as the listener records them."""
    for i in range(n):
        store.record_instance(
            NewInstance(
                sop_uid=f"{series}.{i + 1}",
                series_uid=series,
                study_uid=f"{series}.0",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=Path("/nonexistent") / f"{series}.{i + 1}.dcm",
                size=10,
                calling_ae="MODALITY",
                modality="CT",
            )
        )


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def running(store: Store) -> Iterator[tuple[Scheduler, threading.Event]]:
    stop = threading.Event()
    scheduler = Scheduler(store, QUIET, stop)
    yield scheduler, stop
    stop.set()
    if scheduler.is_alive():
        scheduler.join(5)


def state(store: Store, series: str) -> SeriesState:
    return store.get_series(series).state


def test_completes_quiet_series_and_not_recent_ones(
    store: Store, clock: Clock, running: tuple[Scheduler, threading.Event]
) -> None:
    scheduler, stop = running
    quiet, recent = f"{ROOT}.1", f"{ROOT}.2"
    receive(store, quiet)
    clock.advance(10 * QUIET)
    receive(store, recent)
    scheduler.start()

    wait_until(lambda: state(store, quiet) is SeriesState.COMPLETE)
    time.sleep(10 * scheduler.interval)  # several more passes
    assert state(store, recent) is SeriesState.RECEIVING

    clock.advance(QUIET)  # now it has been quiet long enough too
    wait_until(lambda: state(store, recent) is SeriesState.COMPLETE)
    stop.set()
    scheduler.join(5)
    assert not scheduler.is_alive()
    assert store.claim_complete_series() is not None  # the worker can take them


def test_a_series_that_receives_again_is_not_complete_until_quiet_again(
    store: Store, clock: Clock, running: tuple[Scheduler, threading.Event]
) -> None:
    scheduler, _ = running
    series = f"{ROOT}.3"
    receive(store, series, 1)
    clock.advance(QUIET / 2)
    receive(store, series, 2)  # one more instance: the quiet period starts again
    clock.advance(QUIET * 0.75)
    scheduler.start()
    time.sleep(10 * scheduler.interval)
    assert state(store, series) is SeriesState.RECEIVING
    clock.advance(QUIET)
    wait_until(lambda: state(store, series) is SeriesState.COMPLETE)


class FailsFirstPasses(Store):
    """A real store whose first ``failures`` passes of the scheduler fail."""

    failures = 3

    def complete_quiet_series(self, quiet_seconds: float) -> list[str]:
        if self.failures:
            self.failures -= 1
            raise StoreError("database error: database is locked")
        return super().complete_quiet_series(quiet_seconds)


def test_a_failed_pass_is_logged_and_retried(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    store = FailsFirstPasses(tmp_path / "db.sqlite3", clock=clock)
    stop = threading.Event()
    scheduler = Scheduler(store, QUIET, stop)
    try:
        series = f"{ROOT}.4"
        receive(store, series)
        clock.advance(10 * QUIET)
        scheduler.start()
        wait_until(lambda: state(store, series) is SeriesState.COMPLETE)
        assert store.failures == 0 and scheduler.is_alive()
        assert caplog.text.count("scheduler pass failed; retrying") == 3
    finally:
        stop.set()
        scheduler.join(5)
        store.close()


@pytest.mark.parametrize(("quiet", "interval"), [(60.0, 1.0), (2.0, 0.5), (0.1, 0.05)])
def test_looks_a_few_times_per_quiet_period(store: Store, quiet: float, interval: float) -> None:
    assert Scheduler(store, quiet, threading.Event()).interval == interval
