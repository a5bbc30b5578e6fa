"""Progress of a federated run as JSON in the coordinator's state dir.

The ServerApp writes it after every step (atomically: temp file + rename); ``appliance
federate status`` reads it. Layout (one file per run, ``progress-<run id>.json``, and
``latest.json`` pointing at the newest)::

    {"run_id": "...", "strategy": "fedavg", "status": "running|finished|failed",
     "rounds": 2, "started": iso, "updated": iso,
     "sites": [{"node_id": 1, "site": "site_a", "cases": 3}], "sites_at": iso,
     "history": [{"round": 1, "phase": "train", "sites": {"site_a": {metrics}},
                  "aggregate": {metrics} | null, "visits": ["site_a", ...], "at": iso}],

(``sites_at``: when discovery ended; ``at``: when an entry was added, to the
millisecond.)
     "result": {...} | null, "error": "..." | null}
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

LATEST = "latest.json"


class RunStatus(StrEnum):
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _stamp() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _atomic_write(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1, sort_keys=True, default=float)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class ProgressLog:
    """The growing record of one run; every mutation is written through to disk."""

    directory: Path
    run_id: str
    strategy: str
    rounds: int
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = {
            "run_id": self.run_id,
            "strategy": self.strategy,
            "status": RunStatus.RUNNING.value,
            "rounds": self.rounds,
            "started": _now(),
            "updated": _now(),
            "sites": [],
            "history": [],
            "result": None,
            "error": None,
        }
        self.save()

    @property
    def path(self) -> Path:
        return self.directory / f"progress-{self.run_id}.json"

    def save(self) -> None:
        self.data["updated"] = _now()
        _atomic_write(self.path, self.data)
        _atomic_write(self.directory / LATEST, {"run_id": self.run_id, "file": self.path.name})

    def set_sites(self, sites: list[dict[str, Any]]) -> None:
        self.data["sites"] = sites
        self.data["sites_at"] = _stamp()
        self.save()

    def add(
        self,
        server_round: int,
        phase: str,
        sites: Mapping[str, Mapping[str, Any]],
        aggregate: Mapping[str, Any] | None = None,
        **extra: Any,
    ) -> None:
        entry: dict[str, Any] = {
            "round": server_round,
            "phase": phase,
            "sites": {k: dict(v) for k, v in sites.items()},
            "aggregate": dict(aggregate) if aggregate is not None else None,
        }
        entry.update(extra)
        entry["at"] = _stamp()
        self.data["history"].append(entry)
        self.save()

    def finish(self, result: Mapping[str, Any]) -> None:
        self.data["status"] = RunStatus.FINISHED.value
        self.data["result"] = dict(result)
        self.save()

    def fail(self, error: str) -> None:
        self.data["status"] = RunStatus.FAILED.value
        self.data["error"] = error
        self.save()


def read_progress(directory: Path, run_id: str | None = None) -> dict[str, Any] | None:
    """The progress of ``run_id`` (default: the latest run) or ``None`` if there is none."""
    if run_id is None:
        latest = directory / LATEST
        if not latest.is_file():
            return None
        run_id = str(json.loads(latest.read_text(encoding="utf-8"))["run_id"])
    path = directory / f"progress-{run_id}.json"
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text(encoding="utf-8")))
