"""The series worker: processes COMPLETE series one at a time, oldest first."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from appliance.pipeline import process_series
from appliance.routing import DEFAULT_RULES, RoutingRule
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
        *,
        rules: Sequence[RoutingRule] = DEFAULT_RULES,
        idle_seconds: float = 0.2,
    ) -> None:
        super().__init__(name="worker", daemon=True)
        self.store = store
        self.rules = tuple(rules)
        self.stop_event = stop
        self.idle_seconds = idle_seconds

    def run(self) -> None:
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
            outcome = process_series(self.store, claim, self.rules)
        except Exception as exc:
            LOG.exception("series %s failed", short_ref(claim.series_uid))
            self.store.finish_series(
                claim,
                SeriesState.FAILED,
                reason="internal_error",
                detail=f"{type(exc).__name__}: {exc}"[:500],
            )
            return True
        current = self.store.finish_series(
            claim,
            outcome.state,
            reason=outcome.reason,
            detail=outcome.detail,
            result=outcome.result,
        )
        elapsed = time.perf_counter() - start
        if not current:
            LOG.info(
                "series %s re-opened while processing; result of generation %d discarded",
                short_ref(claim.series_uid),
                claim.generation,
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
