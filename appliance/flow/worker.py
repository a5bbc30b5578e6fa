"""The series worker: a loop that claims the oldest COMPLETE series and hands it to the
pipeline (:func:`appliance.flow.pipeline.run_claim`), which owns its job from start to
finish."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from appliance.config import AppConfig
from appliance.flow.pipeline import run_claim
from appliance.site_models.registry import NetworkCache
from appliance.states import JobState
from appliance.store import Store

LOG = logging.getLogger(__name__)


class Worker(threading.Thread):
    """Processes COMPLETE series one at a time, oldest first."""

    def __init__(
        self,
        store: Store,
        stop: threading.Event,
        config: AppConfig,
        *,
        networks: NetworkCache | None = None,
        idle_seconds: float = 0.2,
        on_job_timings: Callable[[Mapping[str, Any]], None] | None = None,
    ) -> None:
        super().__init__(name="worker", daemon=True)
        self.store = store
        self.config = config
        self.networks = networks if networks is not None else NetworkCache(config)
        self.stop_event = stop
        self.idle_seconds = idle_seconds
        self.on_job_timings = on_job_timings  # the stage timings of every job that is DONE
        self.preload_errors: dict[str, str] = {}  # task -> why its active model did not load

    def preload(self) -> None:
        """Load the active model of every routed task, so the first job does not wait and
        ``/healthz`` can say the models are loaded."""
        for task in sorted({rule.task for rule in self.config.routing}):
            if self.stop_event.is_set():
                return
            record = self.store.active_model(task)
            if record is None:
                continue
            try:
                LOG.info("loading model %s/%s", task, record.version)
                self.networks.get(record)
                self.preload_errors.pop(task, None)
            except Exception as exc:  # reported by /healthz and at the first job
                self.preload_errors[task] = f"{type(exc).__name__}: {exc}"[:300]
                LOG.error("active model %s/%s did not load: %s", task, record.version, exc)

    def run(self) -> None:
        self.preload()
        while not self.stop_event.is_set():
            try:
                worked = self.run_once()
            except Exception:  # only the store can raise here; its state is kept
                LOG.exception("worker pass failed; retrying")
                worked = False
            if not worked:
                self.stop_event.wait(self.idle_seconds)

    def run_once(self) -> bool:
        """Claim the oldest COMPLETE series and take it through the pipeline; False when
        there was none."""
        claim = self.store.claim_complete_series()
        if claim is None:
            return False
        finished = run_claim(self.store, claim, self.config, self.networks)
        if finished.job_state is JobState.DONE and self.on_job_timings is not None:
            self.on_job_timings(finished.timings)
        return True
