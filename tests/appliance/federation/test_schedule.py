"""A scheduled join fires at its time: ``appliance serve``'s federation scheduler with an
injected clock and a recording join (the real join, a SuperNode process, is exercised by
the interop tests). Also: the queue check it waits on, and ``federation.schedule``
validation (one implementation, croniter, for both)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.config import load_config
from appliance.config.cron import next_fire, valid_cron
from appliance.errors import ConfigError
from appliance.federation.schedule import JoinScheduler, inference_busy
from appliance.states import SeriesState
from appliance.store import NewInstance, Store
from tests.appliance.conftest import Clock

START = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)  # a Monday, 01:00


class VirtualTime:
    """``now``/``wait`` for the scheduler: waiting advances the clock; past ``end`` the
    scheduler is told to stop."""

    def __init__(self, stop: threading.Event, end: datetime) -> None:
        self.t = START
        self.stop = stop
        self.end = end

    def now(self) -> datetime:
        return self.t

    def wait(self, seconds: float) -> bool:
        self.t += timedelta(seconds=max(seconds, 0.001))
        if self.t >= self.end:
            self.stop.set()
        return self.stop.is_set()


class RecordingJoin:
    """Records when it was called and how many joins were in flight; a join lasts
    ``duration`` of virtual time."""

    def __init__(self, time: VirtualTime, duration: timedelta = timedelta(minutes=3)) -> None:
        self.time = time
        self.duration = duration
        self.calls: list[datetime] = []
        self.until: list[datetime] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def __call__(self, stop: threading.Event, until: datetime) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.calls.append(self.time.now())
        self.until.append(until)
        self.time.t += self.duration
        self.in_flight -= 1


def _scheduler(
    expression: str,
    hours: float,
    busy_until: datetime | None = None,
    duration: timedelta = timedelta(minutes=3),
) -> tuple[JoinScheduler, RecordingJoin, list[datetime]]:
    stop = threading.Event()
    time = VirtualTime(stop, START + timedelta(hours=hours))
    join = RecordingJoin(time, duration)
    checks: list[datetime] = []

    def busy() -> bool:
        checks.append(time.now())
        return busy_until is not None and time.now() < busy_until

    scheduler = JoinScheduler(
        expression, join, busy, stop, now=time.now, wait=time.wait, retry_s=60.0
    )
    return scheduler, join, checks


def test_fires_at_the_cron_time_not_before() -> None:
    scheduler, join, checks = _scheduler("30 2 * * *", hours=3)
    scheduler.run()
    assert join.calls == [datetime(2026, 3, 2, 2, 30, tzinfo=UTC)]
    assert checks and min(checks) >= datetime(2026, 3, 2, 2, 30, tzinfo=UTC)  # nothing before
    assert join.until == [datetime(2026, 3, 3, 2, 30, tzinfo=UTC)]  # bounded by the next fire
    assert scheduler.fired == join.calls and scheduler.skipped == []


def test_waits_while_the_queue_is_busy_and_fires_once_it_is_empty() -> None:
    idle_at = datetime(2026, 3, 2, 2, 10, tzinfo=UTC)
    scheduler, join, checks = _scheduler("0 2 * * *", hours=4, busy_until=idle_at)
    scheduler.run()
    assert join.calls == [idle_at]  # first check at 02:00, retried every minute
    assert datetime(2026, 3, 2, 2, 0, tzinfo=UTC) in checks
    assert len([c for c in checks if c < idle_at]) == 10
    assert scheduler.skipped == []


def test_a_queue_busy_until_the_next_fire_skips_that_fire() -> None:
    day2_idle = datetime(2026, 3, 3, 2, 30, tzinfo=UTC)
    scheduler, join, _ = _scheduler("0 2 * * *", hours=27, busy_until=day2_idle)
    scheduler.run()
    assert scheduler.skipped == [datetime(2026, 3, 2, 2, 0, tzinfo=UTC)]
    assert join.calls == [day2_idle]


def test_never_two_joins_at_once_and_missed_fires_are_not_made_up() -> None:
    scheduler, join, _ = _scheduler("*/5 * * * *", hours=1, duration=timedelta(minutes=12))
    scheduler.run()
    assert join.max_in_flight == 1
    minutes = [c.minute for c in join.calls]
    # 01:05 runs until 01:17; the fires of 01:10 and 01:15 are not made up: next is 01:20
    assert minutes[:3] == [5, 20, 35]
    for earlier, later in zip(join.calls, join.calls[1:], strict=False):
        assert later >= earlier + join.duration


def test_stop_ends_the_wait_and_the_join_gets_the_stop_event() -> None:
    stop = threading.Event()
    seen: list[threading.Event] = []
    time = VirtualTime(stop, START + timedelta(days=2))

    def join(event: threading.Event, until: datetime) -> None:
        seen.append(event)
        event.set()  # as SIGTERM during a join

    scheduler = JoinScheduler("0 2 * * *", join, lambda: False, stop, now=time.now, wait=time.wait)
    scheduler.run()
    assert seen == [stop]
    assert time.now() < START + timedelta(days=1)  # stopped right after the first join


def test_a_real_thread_stops_on_the_event() -> None:
    stop = threading.Event()
    calls: list[datetime] = []
    scheduler = JoinScheduler("0 2 * * *", lambda e, u: calls.append(u), lambda: False, stop)
    scheduler.start()
    stop.set()
    scheduler.join_thread(5.0)
    assert not scheduler.alive()
    assert calls == []


def test_next_fire_uses_croniter() -> None:
    assert valid_cron("0 2 * * 1-5") and valid_cron("*/15 * * * *")
    assert not valid_cron("61 * * * *") and not valid_cron("0 2 * *")
    assert not valid_cron("0 0 2 * * *")  # seconds field: not a 5-field expression
    saturday = datetime(2026, 3, 7, 12, 0, tzinfo=UTC)
    assert next_fire("0 2 * * 1-5", saturday) == datetime(2026, 3, 9, 2, 0, tzinfo=UTC)
    with pytest.raises(ValueError):
        next_fire("0 2 * * *", datetime(2026, 3, 7, 12, 0))


SERIES = "1.2.826.0.1.3680043.8.498.2"


def _one_instance(store: Store) -> None:
    series = SERIES
    store.record_instance(
        NewInstance(
            sop_uid=f"{series}.1",
            series_uid=series,
            study_uid="1.2.826.0.1.3680043.8.498.1",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            path=Path("/spool/x.dcm"),
            size=1000,
            calling_ae="PACS",
            modality="CT",
            series_description="abdomen",
            body_part_examined="ABDOMEN",
            image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
            instance_number=1,
        )
    )


def test_inference_busy_follows_the_series_states(store: Store, clock: Clock) -> None:
    assert inference_busy(store) is False
    _one_instance(store)
    assert inference_busy(store) is False  # still arriving: not in the queue yet
    clock.advance(31)
    store.complete_quiet_series(30)
    assert inference_busy(store) is True  # complete, waiting for the worker
    claim = store.claim_complete_series()
    assert claim is not None and inference_busy(store) is True  # processing
    store.finish_series(claim, SeriesState.DONE, result={"shape": [1]})
    assert inference_busy(store) is False


def test_training_at_an_appliance_site_pauses_while_inference_has_work(
    store: Store, clock: Clock, tmp_path: Path
) -> None:
    from appliance.federation.client_app import _inference_pause
    from appliance.federation.settings import CaseSource
    from appliance.federation.site_settings import SiteSettings

    phantom_site = SiteSettings(site="site_a", state_dir=tmp_path)
    with _inference_pause(phantom_site) as should_pause:
        assert should_pause is None  # tests and simulation: nothing to yield to
    site = SiteSettings(
        site="site_a", state_dir=tmp_path, source=CaseSource.STORE, database=store.path
    )
    with _inference_pause(site) as should_pause:
        assert should_pause is not None and should_pause() is False
        _one_instance(store)
        clock.advance(31)
        store.complete_quiet_series(30)
        assert should_pause() is True


@pytest.mark.parametrize("expression", ["61 * * * *", "0 2 * *", "every night", "0 0 2 * * *"])
def test_a_bad_cron_expression_names_the_key(tmp_path: Path, expression: str) -> None:
    path = tmp_path / "appliance.toml"
    path.write_text(
        f'[storage]\nroot = "{tmp_path}"\n[federation]\ninsecure = true\n'
        f'schedule = "{expression}"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "federation.schedule" in str(err.value) and "cron" in str(err.value)


def test_schedule_and_auto_validate_are_read(tmp_path: Path) -> None:
    path = tmp_path / "appliance.toml"
    path.write_text(
        f'[storage]\nroot = "{tmp_path}"\n[federation]\ninsecure = true\n'
        'schedule = "30 1 * * 6"\nauto_validate = false\n',
        encoding="utf-8",
    )
    fed = load_config(path).federation
    assert fed.schedule == "30 1 * * 6" and fed.auto_validate is False
    path.write_text(f'[storage]\nroot = "{tmp_path}"\n', encoding="utf-8")
    assert load_config(path).federation.auto_validate is True
