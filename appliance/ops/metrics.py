"""``/metrics`` in the Prometheus text format (prometheus_client).

Counts and states come from the store at scrape time, so they are kept across restarts
and include what other processes did (the CLI, a federated join): instances received and
rejected (by DICOM status), refused associations, series/jobs/outbox items by state, the
outbox depth and failed send attempts, federated runs and rounds, gate decisions, active
models. Stage latencies are a histogram of this process's jobs (reset on restart, as
Prometheus expects of a histogram). Disk free space and the watermark are read live.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.config import AppConfig
from appliance.store import Store
from dicom_bridge.connections import RefusalReason

#: Seconds; jobs' stages run from tens of milliseconds (SEG writing) to minutes (CPU
#: inference of a large volume).
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class _StoreCollector(Collector):
    def __init__(self, store: Store, config: AppConfig) -> None:
        self.store = store
        self.config = config

    def collect(self) -> Iterator[Metric]:
        store = self.store
        counters = store.counters()

        received = CounterMetricFamily(
            "appliance_instances_received",
            "Instances stored and acknowledged (new, or a repeat of one already stored).",
            labels=["kind"],
        )
        for kind in ("new", "repeat"):
            received.add_metric([kind], counters.get(("instances_received", kind), 0))
        yield received

        rejected = CounterMetricFamily(
            "appliance_instances_rejected",
            "C-STOREs answered with a failure status, by status (0xA701: over a size "
            "limit, 0xA702: disk watermark, 0xC003: SOP instance conflict; aborted: the "
            "association was aborted, e.g. a dataset over limits.max_instance_mb).",
            labels=["status"],
        )
        refused = CounterMetricFamily(
            "appliance_associations_rejected", "Associations refused (calling AE not allowed)."
        )
        refused_total = 0
        for (scope, status), count in sorted(
            store.rejection_counts().items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)
        ):
            if scope == "association":
                refused_total += count
            else:
                rejected.add_metric(["aborted" if status is None else f"0x{status:04X}"], count)
        refused.add_metric([], refused_total)
        yield rejected
        yield refused

        connections = CounterMetricFamily(
            "appliance_connections_refused",
            "Connections closed before they became an association, by reason "
            f"({', '.join(RefusalReason)}).",
            labels=["reason"],
        )
        for reason in RefusalReason:
            connections.add_metric([reason], counters.get(("connections_refused", reason), 0))
        yield connections

        for name, doc, counts in (
            ("appliance_series", "Series by state.", store.series_counts()),
            ("appliance_jobs", "Segmentation jobs by state.", store.job_counts()),
            ("appliance_outbox_items", "Outbox items by state.", store.outbox_counts()),
        ):
            family = GaugeMetricFamily(name, doc, labels=["state"])
            for state, count in sorted(counts.items()):
                family.add_metric([state], count)
            yield family
        outbox = store.outbox_counts()
        yield GaugeMetricFamily(
            "appliance_outbox_depth",
            "Outbox items waiting to be sent (pending or in flight).",
            value=outbox.get("pending", 0) + outbox.get("sending", 0),
        )
        failed = CounterMetricFamily(
            "appliance_outbox_failed_attempts",
            "Send attempts that failed (each retry follows one).",
        )
        failed.add_metric([], store.outbox_failed_attempts())
        yield failed

        for name, doc, counter, label in (
            (
                "appliance_federation_runs",
                "Federated runs this site took part in.",
                "federation_runs",
                "strategy",
            ),
            (
                "appliance_federation_rounds",
                "Federated rounds of those runs.",
                "federation_rounds",
                "strategy",
            ),
            (
                "appliance_gate_decisions",
                "Validation gate decisions on candidate models.",
                "gate_decisions",
                "decision",
            ),
        ):
            counted = CounterMetricFamily(name, doc, labels=[label])
            for (counter_name, value_label), value in sorted(counters.items()):
                if counter_name == counter:
                    counted.add_metric([value_label], value)
            yield counted

        active = GaugeMetricFamily(
            "appliance_model_active",
            "The active model of each task (value 1), with its version and weights sha256.",
            labels=["task", "version", "sha256", "federated_round"],
        )
        for record in store.list_models():
            if record.state.value == "active":
                active.add_metric(
                    [
                        record.task,
                        record.version,
                        record.weights_sha256[:16],
                        str(record.federated_round or 0),
                    ],
                    1,
                )
        yield active

        root = self.config.storage.root
        yield GaugeMetricFamily(
            "appliance_disk_free_bytes",
            "Free space on the storage file system.",
            value=shutil.disk_usage(root).free,
        )
        yield GaugeMetricFamily(
            "appliance_disk_watermark_bytes",
            "Below this much free space, C-STOREs are refused (0 = no watermark).",
            value=self.config.storage.min_free_mb * 2**20,
        )
        audit = CounterMetricFamily(
            "appliance_audit_write_failures", "Audit entries this process could not write."
        )
        audit.add_metric([], store.audit.failures)
        yield audit


class Metrics:
    """The registry behind ``/metrics``; ``observe_job`` feeds the stage histogram."""

    def __init__(self, store: Store, config: AppConfig) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.stage_seconds = Histogram(
            "appliance_stage_seconds",
            "Duration of each stage of a segmentation job (load, inference, SEG, SR, ...).",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(store, config))

    def observe_job(self, timings: Mapping[str, Any]) -> None:
        for key, value in timings.items():
            if key.endswith("_s") and isinstance(value, int | float) and value >= 0:
                self.stage_seconds.labels(stage=key.removesuffix("_s")).observe(float(value))

    def render(self) -> bytes:
        return generate_latest(self.registry)
