"""The scheduler: a series is complete once no instance has arrived for a quiet period.

DICOM has no end-of-series signal, so ``dicom.series_quiet_seconds`` of silence is it.
Each pass also runs ``sweep`` (the service passes the sweep of studies waiting for
their roles, :func:`appliance.flow.study.sweep_waiting_studies`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from appliance.store import Store
from dicom_bridge.uids import short_ref

LOG = logging.getLogger(__name__)


class Scheduler(threading.Thread):
    """Marks a series COMPLETE once no instance has arrived for ``quiet_seconds``."""

    def __init__(
        self,
        store: Store,
        quiet_seconds: float,
        stop: threading.Event,
        sweep: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name="scheduler", daemon=True)
        self.store = store
        self.sweep = sweep
        self.quiet_seconds = quiet_seconds
        self.stop_event = stop
        self.interval = min(1.0, max(0.05, quiet_seconds / 4))

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                for uid in self.store.complete_quiet_series(self.quiet_seconds):
                    LOG.info(
                        "series %s complete (quiet for %.1f s)", short_ref(uid), self.quiet_seconds
                    )
                if self.sweep is not None:
                    self.sweep()
            except Exception:
                LOG.exception("scheduler pass failed; retrying")
