"""The outbox: durable sends to named destinations, with backoff and a dead-letter state."""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from appliance.config import AppConfig, DestinationConfig, DestinationKind, OutboxConfig
from appliance.errors import NotFoundError
from appliance.states import OutboxState
from appliance.store import OutboxItem, Store
from dicom_bridge.errors import SendError
from dicom_bridge.sender import RemoteNode, SendResult, TlsClientSettings, send_files
from dicom_bridge.stow import WebAuth, WebEndpoint, stow_files
from dicom_bridge.uids import short_ref

LOG = logging.getLogger(__name__)

SendFn = Callable[[RemoteNode, Sequence[Path]], list[SendResult]]
StowFn = Callable[[WebEndpoint, Sequence[Path]], list[SendResult]]


def backoff_seconds(attempts: int, settings: OutboxConfig) -> float:
    """Delay before the next try after ``attempts`` failed tries (exponential, capped)."""
    return float(
        min(
            settings.backoff_max_seconds,
            settings.backoff_initial_seconds * 2 ** max(0, attempts - 1),
        )
    )


def remote_node(dest: DestinationConfig, default_calling_ae: str) -> RemoteNode:
    """The C-STORE peer of a ``dimse`` destination."""
    if dest.kind is not DestinationKind.DIMSE:
        raise SendError(f"destination {dest.name!r} is not a DIMSE destination")
    assert dest.ae_title is not None and dest.host is not None and dest.port is not None
    tls = None
    if dest.tls is not None:
        tls = TlsClientSettings(
            ca_file=dest.tls.ca_file, cert_file=dest.tls.cert_file, key_file=dest.tls.key_file
        )
    return RemoteNode(
        ae_title=dest.ae_title,
        host=dest.host,
        port=dest.port,
        calling_ae=dest.calling_ae or default_calling_ae,
        timeout_s=dest.timeout_seconds,
        tls=tls,
    )


def web_endpoint(dest: DestinationConfig) -> WebEndpoint:
    """The STOW-RS service of a ``dicomweb`` destination."""
    if dest.kind is not DestinationKind.DICOMWEB or dest.url is None:
        raise SendError(f"destination {dest.name!r} is not a DICOMweb destination")
    return WebEndpoint(
        url=dest.url,
        auth=WebAuth(dest.auth),
        username=dest.username,
        password_file=dest.password_file,
        token_file=dest.token_file,
        ca_file=dest.ca_file,
        timeout_s=dest.timeout_seconds,
    )


def describe_destination(dest: DestinationConfig) -> str:
    """Where a destination is, for messages: ``AE@host:port`` or the URL."""
    if dest.kind is DestinationKind.DICOMWEB:
        return str(dest.url)
    return f"{dest.ae_title}@{dest.host}:{dest.port}"


class OutboxSender:
    """Sends due outbox items, one association per destination per pass."""

    def __init__(
        self,
        store: Store,
        config: AppConfig,
        *,
        send: SendFn = send_files,
        stow: StowFn = stow_files,
    ) -> None:
        self.store = store
        self.config = config
        self._send = send
        self._stow = stow

    def run_once(self) -> int:
        """Send everything due now; return how many items were attempted."""
        items = self.store.claim_due()
        by_dest: dict[str, list[OutboxItem]] = defaultdict(list)
        for item in items:
            by_dest[item.destination].append(item)
        for name, group in by_dest.items():
            self._send_group(name, group)
        return len(items)

    def _send_group(self, name: str, group: list[OutboxItem]) -> None:
        try:
            dest = self.config.destination(name)
        except NotFoundError:
            for item in group:
                self._failed(item, f"destination {name!r} is not configured", None)
            return
        present = [item for item in group if item.path.is_file()]
        for item in group:
            if not item.path.is_file():
                self._failed(item, "file to send no longer exists", None, final=True)
        if not present:
            return
        try:
            paths = [item.path for item in present]
            if dest.kind is DestinationKind.DICOMWEB:
                results = self._stow(web_endpoint(dest), paths)
            else:
                results = self._send(remote_node(dest, self.config.dicom.ae_title), paths)
            if len(results) != len(present):
                raise SendError(f"sender returned {len(results)} results for {len(present)} files")
        except SendError as exc:
            for item in present:
                self._failed(item, str(exc), None)
            return
        except Exception as exc:  # never leave claimed items stuck in SENDING
            LOG.exception("outbox: unexpected error sending to %s", name)
            for item in present:
                self._failed(item, f"internal error: {type(exc).__name__}", None)
            return
        for item, result in zip(present, results, strict=True):
            if result.ok:
                self.store.mark_sent(item.id, result.status, peer=describe_destination(dest))
                LOG.info(
                    "outbox %d: %s sent to %s (status 0x%04X)",
                    item.id,
                    short_ref(item.sop_uid),
                    name,
                    result.status or 0,
                )
            else:
                self._failed(item, result.error or "failed", result.status)

    def _failed(
        self, item: OutboxItem, error: str, status: int | None, *, final: bool = False
    ) -> None:
        settings = self.config.outbox
        attempts = item.attempts + 1
        retry_at: float | None = None
        if not final and attempts < settings.max_attempts:
            retry_at = _now(self.store) + backoff_seconds(attempts, settings)
        state = self.store.mark_send_failed(item.id, error, status, retry_at=retry_at)
        if state is OutboxState.DEAD:
            LOG.error(
                "outbox %d to %s dead after %d attempts: %s",
                item.id,
                item.destination,
                attempts,
                error,
            )
        else:
            LOG.warning(
                "outbox %d to %s failed (attempt %d/%d), retry in %.0f s: %s",
                item.id,
                item.destination,
                attempts,
                settings.max_attempts,
                (retry_at or 0) - _now(self.store),
                error,
            )


def _now(store: Store) -> float:
    return float(store.now())


class OutboxLoop(threading.Thread):
    def __init__(self, sender: OutboxSender, poll_seconds: float, stop: threading.Event) -> None:
        super().__init__(name="outbox", daemon=True)
        self.sender = sender
        self.poll_seconds = poll_seconds
        self.stop_event = stop

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                attempted = self.sender.run_once()
            except Exception:
                LOG.exception("outbox pass failed; retrying")
                attempted = 0
            if not attempted:
                self.stop_event.wait(self.poll_seconds)
