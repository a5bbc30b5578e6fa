"""Scheduled joins for ``appliance serve`` (``federation.schedule``, a cron expression).

At each fire time (:func:`appliance.config.cron.next_fire`, the appliance's local
time) the :class:`JoinScheduler` joins the federation (the same code path as
``appliance federate join``: :func:`appliance.federation.site_join.join`), but only
when the inference queue is empty (:func:`inference_busy`): while it is busy the
scheduler logs it and looks again every ``retry_s`` until the queue empties, at most
until the next fire time (then that fire is skipped, logged). Joins run in the
scheduler's own thread, one at a time; fire times that pass during a join are not made
up afterwards. Setting ``stop`` (SIGTERM) ends the wait and a join in progress (its
SuperNode is stopped by PID).

The clock, the wait, the queue check and the join are injected, so the schedule is
tested without waiting for real time or starting Flower.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from appliance.config import AppConfig
from appliance.config.cron import next_fire
from appliance.states import JobState, SeriesState
from appliance.store import Store

LOG = logging.getLogger(__name__)

#: the longest single sleep: the schedule is re-read against the clock at least this often
MAX_SLEEP_S = 60.0


def inference_busy(store: Store) -> bool:
    """Whether inference has work: a queued or running job, or a series that is complete
    but not processed yet (COMPLETE: waiting for the worker; PROCESSING: the worker has
    it). Local training pauses and scheduled joins wait while this is true."""
    jobs = store.job_counts()
    series = store.series_counts()
    return (
        jobs.get(JobState.QUEUED.value, 0)
        + jobs.get(JobState.RUNNING.value, 0)
        + series.get(SeriesState.COMPLETE.value, 0)
        + series.get(SeriesState.PROCESSING.value, 0)
    ) > 0


def local_now() -> datetime:
    """Now, in the appliance's local time zone (aware)."""
    return datetime.now().astimezone()


class JoinScheduler:
    """Fires ``join(stop)`` at the cron times of ``expression`` when ``busy()`` is false.

    ``wait(seconds)`` sleeps and returns True when the scheduler must stop (default:
    ``stop.wait``); ``now()`` gives aware datetimes (default :func:`local_now`)."""

    def __init__(
        self,
        expression: str,
        join: Callable[[threading.Event, datetime], object],
        busy: Callable[[], bool],
        stop: threading.Event,
        *,
        now: Callable[[], datetime] = local_now,
        wait: Callable[[float], bool] | None = None,
        retry_s: float = 30.0,
    ) -> None:
        next_fire(expression, now())  # a bad expression fails here, not at the first fire
        self.expression = expression
        self._join = join
        self._busy = busy
        self.stop = stop
        self._now = now
        self._wait = wait if wait is not None else stop.wait
        self.retry_s = retry_s
        self._joining = threading.Lock()
        self.fired: list[datetime] = []
        self.skipped: list[datetime] = []
        self._thread: threading.Thread | None = None

    def next_fire(self, after: datetime) -> datetime:
        return next_fire(self.expression, after)

    def run(self) -> None:
        """The scheduler loop (blocks until ``stop``)."""
        fire = self.next_fire(self._now())
        LOG.info("federation: next scheduled join at %s", fire.isoformat(timespec="minutes"))
        while not self.stop.is_set():
            delay = (fire - self._now()).total_seconds()
            if delay > 0:
                if self._wait(min(delay, MAX_SLEEP_S)):
                    return
                continue
            following = self.next_fire(fire)
            if not self._wait_until_idle(fire, following):
                if self.stop.is_set():
                    return
                self.skipped.append(fire)
                LOG.warning(
                    "federation: scheduled join of %s skipped: the inference queue stayed "
                    "busy until the next fire time %s",
                    fire.isoformat(timespec="minutes"),
                    following.isoformat(timespec="minutes"),
                )
            else:
                self._fire(fire, following)
            # the next fire after this one that has not passed (a fire time that is due
            # right now still counts; those that passed during a join are not made up)
            fire = self.next_fire(max(self._now() - timedelta(seconds=1), fire))
            if not self.stop.is_set():
                LOG.info(
                    "federation: next scheduled join at %s", fire.isoformat(timespec="minutes")
                )

    def _wait_until_idle(self, fire: datetime, following: datetime) -> bool:
        """True once the queue is empty; False if it stays busy until ``following`` or
        the scheduler is stopped."""
        logged = False
        while self._busy():
            now = self._now()
            if now >= following or self.stop.is_set():
                return False
            if not logged:
                LOG.info(
                    "federation: join scheduled at %s waits: the inference queue is busy "
                    "(retrying every %g s until %s)",
                    fire.isoformat(timespec="minutes"),
                    self.retry_s,
                    following.isoformat(timespec="minutes"),
                )
                logged = True
            if self._wait(min(self.retry_s, max(0.0, (following - now).total_seconds()))):
                return False
        return True

    def _fire(self, fire: datetime, following: datetime) -> None:
        if not self._joining.acquire(blocking=False):  # never two joins at once
            LOG.warning("federation: a join is still running; %s not started", fire)
            return
        try:
            self.fired.append(fire)
            LOG.info("federation: scheduled join (%s) starts", fire.isoformat(timespec="minutes"))
            self._join(self.stop, following)
        except Exception:
            LOG.exception("federation: the scheduled join of %s failed", fire)
        finally:
            self._joining.release()

    # -- as a thread of the service ------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="federation-schedule", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join_thread(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


def scheduled_join(
    config: AppConfig, *, now: Callable[[], datetime] = local_now
) -> Callable[[threading.Event, datetime], object]:
    """The join a scheduled fire runs: :func:`appliance.federation.site_join.join`, with
    its hand-off, connected until a run has ended here or the next fire time comes."""
    from appliance.errors import FederationError
    from appliance.federation.site_join import join

    def _run(stop: threading.Event, until: datetime) -> object:
        timeout = max(60.0, (until - now()).total_seconds() - 30.0)
        try:
            return join(config, stop=stop, timeout=timeout)
        except FederationError as exc:
            LOG.warning("federation: scheduled join ended without a run: %s", exc)
            return None

    return _run
