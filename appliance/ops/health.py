"""``/healthz``: is every part of the running appliance working?

Checks: the DICOM listener (a real C-ECHO on loopback, over TLS when configured: see
:func:`listener_node`; the echo association is audited like any other), the worker,
scheduler and outbox threads, the database, the disk (free space above the watermark)
and the model of every routed task (active, its weights loaded). Each check says why it failed.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from appliance.config import AppConfig
from appliance.errors import ApplianceError
from appliance.site_models.registry import NetworkCache
from appliance.store import Store
from dicom_bridge.errors import DicomBridgeError
from dicom_bridge.sender import RemoteNode, TlsClientSettings, echo


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def listener_node(config: AppConfig, port: int, timeout: float = 3.0) -> RemoteNode:
    """The appliance's own listener as a C-ECHO target on loopback (or the bind address).

    The calling AE is the first allowed caller not pinned to another host (else the
    appliance's own title). With ``dicom.tls`` the echo runs over TLS, trusting
    ``dicom.tls.ca_file`` (else the server certificate itself, which works for a
    self-signed one) and presenting the server's own certificate as the client's when
    ``require_client_cert`` is set: the server certificate must then verify against
    that file and name the address checked (``127.0.0.1`` for a wildcard bind).
    """
    dicom = config.dicom
    target = "127.0.0.1" if dicom.bind in ("0.0.0.0", "", "::") else dicom.bind
    allowed = [c for c in dicom.allowed_callers if c.host is None or c.host in _LOOPBACK]
    caller = allowed[0].ae_title if allowed else dicom.ae_title
    tls = None
    if dicom.tls is not None:
        tls = TlsClientSettings(
            ca_file=dicom.tls.ca_file or dicom.tls.cert_file,
            cert_file=dicom.tls.cert_file if dicom.tls.require_client_cert else None,
            key_file=dicom.tls.key_file if dicom.tls.require_client_cert else None,
        )
    return RemoteNode(dicom.ae_title, target, port, calling_ae=caller, timeout_s=timeout, tls=tls)


def _listener(config: AppConfig, port: int, timeout: float = 3.0) -> Check:
    """A real C-ECHO: the listener accepts, negotiates and answers (over TLS when
    configured), so a listener whose slots are all held fails the check."""
    try:
        node = listener_node(config, port, timeout)
        echo(node)
    except (DicomBridgeError, ValueError, OSError) as exc:
        return Check("listener", False, f"C-ECHO {config.dicom.ae_title} on port {port}: {exc}")
    tls = " over TLS" if node.tls is not None else ""
    return Check("listener", True, f"C-ECHO{tls} {node.host}:{port} ok")


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
        _listener(config, listener_port),
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
