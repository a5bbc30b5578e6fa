"""The status report shown by ``appliance status`` (a plain dict, JSON-able)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from appliance.states import OutboxState, SeriesState
from appliance.store import Store

STATUS_FORMAT_VERSION = 1


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat(timespec="seconds")


def build_status(
    store: Store, *, series_limit: int = 200, rejection_limit: int = 20
) -> dict[str, Any]:
    series_counts = store.series_counts()
    outbox_counts = store.outbox_counts()
    return {
        "format": STATUS_FORMAT_VERSION,
        "generated_at": _iso(store.now()),
        "instances": store.instance_count(),
        "series_states": series_counts,
        "queues": {
            "series_waiting": series_counts[SeriesState.COMPLETE],
            "series_processing": series_counts[SeriesState.PROCESSING],
            "outbox_pending": outbox_counts[OutboxState.PENDING]
            + outbox_counts[OutboxState.SENDING],
            "outbox_dead": outbox_counts[OutboxState.DEAD],
        },
        "outbox": outbox_counts,
        "series": [
            {
                "series_uid": s.series_uid,
                "study_uid": s.study_uid,
                "modality": s.modality,
                "state": s.state.value,
                "instances": s.instances,
                "generation": s.generation,
                "first_instance_at": _iso(s.first_instance_at),
                "last_instance_at": _iso(s.last_instance_at),
                "reason": s.reason,
                "detail": s.detail,
                "result": s.result,
            }
            for s in store.list_series(limit=series_limit)
        ],
        "rejections": [
            {
                "at": _iso(r.at),
                "scope": r.scope,
                "reason": r.reason,
                "status": None if r.status is None else f"0x{r.status:04X}",
                "calling_ae": r.calling_ae,
                "peer_host": r.peer_host,
                "ref": r.ref,
            }
            for r in store.recent_rejections(rejection_limit)
        ],
    }
