"""``/healthz``: is every part of the running appliance working?

Checks: the DICOM listener (its socket accepts a TCP connection; no association is
opened, so nothing lands in the audit trail), the worker, scheduler and outbox threads,
the database, the disk (free space above the watermark) and the model of every routed
task (active, its weights loaded). Each check says why it failed.
"""

from __future__ import annotations

import shutil
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.config import AppConfig
from appliance.errors import ApplianceError
from appliance.site_models.registry import NetworkCache
from appliance.store import Store


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


def _listener(host: str, port: int, timeout: float = 2.0) -> Check:
    target = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    try:
        socket.create_connection((target, port), timeout=timeout).close()
    except OSError as exc:
        return Check("listener", False, f"{target}:{port} does not accept connections: {exc}")
    return Check("listener", True, f"accepting on {target}:{port}")


def _threads(threads: Sequence[threading.Thread]) -> list[Check]:
    return [
        Check(t.name, t.is_alive(), "running" if t.is_alive() else "thread has stopped")
        for t in threads
    ]


def _database(store: Store) -> Check:
    try:
        version = store.schema_version
    except ApplianceError as exc:
        return Check("database", False, str(exc))
    return Check("database", True, f"schema version {version}")


def _disk(config: AppConfig) -> Check:
    try:
        free = shutil.disk_usage(config.storage.root).free
    except OSError as exc:
        return Check("disk", False, f"cannot measure free space: {exc.strerror}")
    watermark = config.storage.min_free_mb * 2**20
    detail = f"{free // 2**20} MiB free, watermark {watermark // 2**20} MiB"
    if watermark and free < watermark:
        return Check("disk", False, f"{detail}: new C-STOREs are refused")
    return Check("disk", True, detail)


def _models(
    store: Store, config: AppConfig, networks: NetworkCache, errors: Mapping[str, str]
) -> list[Check]:
    checks = []
    for task in sorted({rule.task for rule in config.routing}):
        name = f"model {task}"
        try:
            record = store.active_model(task)
        except ApplianceError as exc:
            checks.append(Check(name, False, str(exc)))
            continue
        if record is None:
            checks.append(Check(name, False, "no active model (appliance models activate)"))
        elif task in errors:
            checks.append(Check(name, False, f"{record.version} did not load: {errors[task]}"))
        elif not networks.is_loaded(record):
            checks.append(Check(name, False, f"{record.version} not loaded yet"))
        else:
            checks.append(
                Check(name, True, f"{record.version} loaded (sha256 {record.weights_sha256[:12]})")
            )
    return checks


def check_health(
    *,
    config: AppConfig,
    store: Store,
    listener_port: int,
    threads: Sequence[threading.Thread],
    networks: NetworkCache,
    load_errors: Mapping[str, str],
) -> list[Check]:
    return [
        _listener(config.dicom.bind, listener_port),
        *_threads(threads),
        _database(store),
        _disk(config),
        *_models(store, config, networks, load_errors),
    ]


def report(checks: Sequence[Check]) -> dict[str, Any]:
    return {
        "status": "ok" if all(c.ok for c in checks) else "fail",
        "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks},
    }
