"""Starts and stops the whole appliance: store, models, listener, scheduler, worker, outbox,
and (``federation.schedule``) the scheduled federation joins."""

from __future__ import annotations

import logging
import signal
import threading
import time
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, Any

from appliance.config import AppConfig
from appliance.errors import StoreError
from appliance.flow.ingest import Ingest
from appliance.flow.ingest import index_spool as reconcile_spool
from appliance.flow.outbox import OutboxLoop, OutboxSender
from appliance.flow.scheduler import Scheduler
from appliance.flow.study import sweep_waiting_studies
from appliance.flow.worker import Worker
from appliance.ops.health import check_health, report
from appliance.ops.http import StatusServer
from appliance.ops.metrics import Metrics
from appliance.ops.retention import RetentionLoop
from appliance.site_models.registry import NetworkCache, register_shipped
from appliance.store import Store
from appliance.store.integrity import DatabaseCondition, ServiceLock, check_database
from dicom_bridge.listener import AllowedCaller, Listener, ListenerSettings, TlsServerSettings
from dicom_bridge.spool import Spool
from models.inference import apply_thread_policy

if TYPE_CHECKING:
    from appliance.federation.schedule import JoinScheduler

LOG = logging.getLogger(__name__)


def listener_settings(config: AppConfig) -> ListenerSettings:
    d = config.dicom
    tls = None
    if d.tls is not None:
        tls = TlsServerSettings(
            d.tls.cert_file, d.tls.key_file, d.tls.ca_file, d.tls.require_client_cert
        )
    return ListenerSettings(
        ae_title=d.ae_title,
        bind=d.bind,
        port=d.port,
        max_associations=d.max_associations,
        allowed_callers=tuple(AllowedCaller(c.ae_title, c.host) for c in d.allowed_callers),
        tls=tls,
        max_pdu_size=d.max_pdu_size,
        min_free_bytes=config.storage.min_free_mb * 2**20,
        first_pdu_timeout=d.first_pdu_timeout_seconds,
        max_connections_per_peer=d.max_connections_per_peer,
        network_timeout=d.network_timeout_seconds,
        limits=config.limits.sizes,
    )


def check_startup(config: AppConfig) -> None:
    """Refuse to start on a missing, empty or unreadable database when the spool or the
    results already hold data: starting as on a first start would index every spooled
    series again and process and send it to the PACS once more, and the cases, model
    history and keys kept in the database would be gone. Raises one-line
    :class:`StoreError`; a true first start (no data, no database) passes."""
    storage = config.storage
    check = check_database(storage.database)
    if check.condition is DatabaseCondition.HOLDS_DATA or not _holds_data(config):
        return
    raise StoreError(
        f"database {storage.database} is {check.detail} but {storage.root} holds received "
        "data; refusing to start as a first start (every series would be processed and "
        "sent again). Rebuild the index from the spool with `appliance storage reindex`, "
        "or stop and restore a backup (docs/operations.md, Backup and restore)"
    )


def _holds_data(config: AppConfig) -> bool:
    spool_dir, results = config.storage.spool_dir, config.results_dir
    if spool_dir.is_dir() and next(Spool(spool_dir, fsync=False).iter_files(), None):
        return True
    return results.is_dir() and next(results.iterdir(), None) is not None


class Service:
    """The running appliance. ``start()`` returns once the listener is bound."""

    def __init__(self, config: AppConfig, *, stop_event: threading.Event | None = None) -> None:
        self.config = config
        self.stop_event = stop_event if stop_event is not None else threading.Event()
        threads = apply_thread_policy(config.inference.threads)
        LOG.info("inference: %d CPU thread(s) (inference.threads)", threads)
        storage = config.storage
        storage.root.mkdir(parents=True, exist_ok=True)
        self.lock = ServiceLock(storage.database).acquire()
        try:
            check_startup(config)
            self.store = Store(storage.database)
        except BaseException:
            self.lock.release()
            raise
        self.spool = Spool(storage.spool_dir, fsync=storage.fsync)
        self.ingest = Ingest(self.store)
        self.listener = Listener(
            listener_settings(config),
            self.spool,
            self.ingest.on_instance,
            self.ingest.on_rejection,
            self.ingest.on_association,
            on_connection_refused=self.ingest.on_connection_refused,
        )
        self._threads: list[threading.Thread] = []
        self._federation: JoinScheduler | None = None
        self.metrics = Metrics(self.store, config)
        self.networks = NetworkCache(config)
        self.worker: Worker | None = None
        self.http: StatusServer | None = None

    def _stopping(self, step: str) -> bool:
        if self.stop_event.is_set():
            LOG.info("stop requested during start-up (before %s)", step)
            return True
        return False

    def start(self) -> None:
        """Start every part. Each step first checks ``stop_event``: a stop requested during
        start-up skips the remaining steps (``stop()`` then stops what did start)."""
        if self._stopping("resuming"):
            return
        requeued = self.store.requeue_interrupted()
        resent = self.store.requeue_sending()
        if requeued or resent:
            LOG.info("resuming: %d series and %d outbox items were interrupted", requeued, resent)
        reconcile_spool(self.store, self.spool)
        if self._stopping("registering shipped models"):
            return
        register_shipped(self.store, self.config)
        if self._stopping("starting the workers"):
            return
        for task in sorted({rule.task for rule in self.config.routing}):
            if self.store.active_model(task) is None:
                LOG.warning(
                    "no active model for %s: its series will not be segmented "
                    "(appliance models import/activate)",
                    task,
                )
        self.worker = Worker(
            self.store,
            self.stop_event,
            self.config,
            networks=self.networks,
            on_job_timings=self.metrics.observe_job,
        )
        self._threads = [
            Scheduler(
                self.store,
                self.config.dicom.series_quiet_seconds,
                self.stop_event,
                sweep=partial(sweep_waiting_studies, self.store, self.config),
            ),
            self.worker,
            OutboxLoop(
                OutboxSender(self.store, self.config),
                self.config.outbox.poll_seconds,
                self.stop_event,
            ),
        ]
        if self.config.retention.interval_hours > 0:
            self._threads.append(RetentionLoop(self.store, self.config, self.stop_event))
        for thread in self._threads:
            thread.start()
        self._start_federation_schedule()
        if self._stopping("listening"):
            return
        self.listener.start()
        if self.config.http.enabled and not self._stopping("the HTTP endpoint"):
            http = self.config.http
            self.http = StatusServer(http.bind, http.port, self.health, self.metrics.render)
            self.http.start()

    def health(self) -> dict[str, Any]:
        """``/healthz``: every check of :mod:`appliance.ops.health`, and the overall status."""
        return report(
            check_health(
                config=self.config,
                store=self.store,
                listener_port=self.listener.port,
                threads=self._threads,
                networks=self.networks,
                load_errors=self.worker.preload_errors if self.worker else {},
            )
        )

    def _start_federation_schedule(self) -> None:
        """``federation.schedule``: join the federation at its cron times, only when the
        inference queue is empty (:mod:`appliance.federation.schedule`)."""
        expression = self.config.federation.schedule
        if expression is None:
            return
        from appliance.federation.schedule import JoinScheduler, inference_busy, scheduled_join

        self._federation = JoinScheduler(
            expression,
            scheduled_join(self.config),
            lambda: inference_busy(self.store),
            self.stop_event,
        )
        self._federation.start()

    def stop(self, timeout: float = 10.0) -> None:
        LOG.info("stopping: no new associations; finishing current work")
        self.listener.stop()
        if self.http is not None:
            self.http.stop()
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        if self._federation is not None:  # its SuperNode gets SIGTERM, by PID, then SIGKILL
            self._federation.join_thread(max(timeout, 25.0))
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.store.close()
        self.lock.release()
        LOG.info("stopped")

    def run_forever(self) -> None:
        """Start, then block until SIGTERM/SIGINT; shut down gracefully."""

        def _signal(signum: int, frame: FrameType | None) -> None:
            LOG.info("received %s", signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, _signal)
        signal.signal(signal.SIGINT, _signal)
        self.start()
        if not self.stop_event.is_set():
            LOG.info(
                "appliance ready: AE %s on %s:%d",
                self.config.dicom.ae_title,
                self.config.dicom.bind,
                self.listener.port,
            )
        # Wait in half-second slices: Python runs a signal handler only between them, so a
        # SIGTERM is seen within 0.5 s whatever the platform does with a blocking wait.
        stopped = False
        while not stopped:
            stopped = self.stop_event.wait(0.5)
        self.stop()
