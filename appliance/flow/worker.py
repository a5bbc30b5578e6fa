"""The series worker: processes COMPLETE series one at a time, oldest first."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from appliance.config import AppConfig
from appliance.flow.pipeline import discard_result, process_series
from appliance.site_models.registry import NetworkCache
from appliance.states import SeriesState
from appliance.store import Store
from dicom_bridge.uids import short_ref

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
        self.on_job_timings = on_job_timings
        self.preload_errors: dict[str, str] = {}  # task -> why its active model did not load

    def preload(self) -> None:
        """Load the active model of every routed task, so the first job does not wait and
        ``/healthz`` can say the models are loaded."""
        for task in sorted({rule.task for rule in self.config.routing}):
            record = self.store.active_model(task)
            if record is None:
                continue
            try:
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
            except Exception:
                LOG.exception("worker pass failed; retrying")
                worked = False
            if not worked:
                self.stop_event.wait(self.idle_seconds)

    def run_once(self) -> bool:
        claim = self.store.claim_complete_series()
        if claim is None:
            return False
        start = time.perf_counter()
        try:
            outcome = process_series(self.store, claim, self.config, self.networks)
        except Exception as exc:
            LOG.exception("series %s failed", short_ref(claim.series_uid))
            self.store.finish_series(
                claim,
                SeriesState.FAILED,
                reason="internal_error",
                detail=f"{type(exc).__name__}: {exc}"[:500],
            )
            return True
        mark = time.perf_counter()
        current = self.store.finish_series(
            claim,
            outcome.state,
            reason=outcome.reason,
            detail=outcome.detail,
            result=outcome.result,
            job_id=None if outcome.job is None else outcome.job.id,
            job_outputs=outcome.job_outputs,
            job_timings=outcome.timings if outcome.job_outputs is not None else None,
            enqueue=outcome.enqueue,
        )
        if outcome.job is not None and outcome.job_outputs is not None and current:
            self.store.set_job_timing(
                outcome.job.id, "enqueue_s", round(time.perf_counter() - mark, 4)
            )
            self.store.set_job_timing(
                outcome.job.id, "total_s", round(time.perf_counter() - start, 4)
            )
        elapsed = time.perf_counter() - start
        if not current:
            discard_result(outcome.result_dir)
            LOG.info(
                "series %s re-opened while processing; result of generation %d discarded",
                short_ref(claim.series_uid),
                claim.generation,
            )
        elif outcome.job is not None:
            timings = outcome.timings
            if self.on_job_timings is not None and outcome.job_outputs is not None:
                self.on_job_timings(timings)
            stages = ", ".join(
                f"{k.removesuffix('_s')} {v:.2f}s"
                for k, v in timings.items()
                if k.endswith("_s") and isinstance(v, int | float)
            )
            LOG.info(
                "job %d series %s generation %d %s -> %s in %.2f s (%s)",
                outcome.job.id,
                short_ref(claim.series_uid),
                claim.generation,
                (outcome.result or {}).get("task", "?"),
                (outcome.result or {}).get("job_state", "?"),
                elapsed,
                stages,
            )
        else:
            LOG.info(
                "series %s generation %d -> %s%s in %.2f s",
                short_ref(claim.series_uid),
                claim.generation,
                outcome.state.value,
                f" ({outcome.reason})" if outcome.reason else "",
                elapsed,
            )
        return True
