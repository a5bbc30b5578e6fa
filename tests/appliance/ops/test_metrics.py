"""``/metrics``: store-backed counts in the Prometheus text format (kept across a restart,
since they live in the database), this process's stage histogram, disk gauges."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from appliance.config import AppConfig, parse_config
from appliance.ops.metrics import Metrics
from appliance.states import SeriesState
from appliance.store import Claim, NewInstance, Store

SERIES = "1.2.826.0.1.3680043.8.498.91.2"
STUDY = "1.2.826.0.1.3680043.8.498.91.1"


@pytest.fixture
def config(tmp_path: Path) -> AppConfig:
    return parse_config(
        {
            "storage": {"root": str(tmp_path / "data"), "fsync": False, "min_free_mb": 7},
            "models": {"shipped": "", "device": "cpu"},
        }
    )


def instance(sop: str) -> NewInstance:
    return NewInstance(
        sop_uid=sop,
        series_uid=SERIES,
        study_uid=STUDY,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=Path("/nonexistent") / f"{sop}.dcm",
        size=10,
        calling_ae="MODALITY",
        modality="CT",
    )


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by name and labels."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


def populate(store: Store) -> None:
    """Two new instances and a repeat, two refusals, one finished series with a failed
    job, two outbox items (one sent, one failed once), a federated run, an active model."""
    store.record_instance(instance(f"{SERIES}.1"))
    store.record_instance(instance(f"{SERIES}.2"))
    store.record_instance(instance(f"{SERIES}.2"))  # the PACS sent it again
    store.record_rejection("instance", "disk full", status=0xA702, calling_ae="MODALITY")
    store.record_rejection("association", "calling AE not allowed", calling_ae="STRANGER")
    store.complete_quiet_series(-1.0)
    claim = store.claim_complete_series()
    assert claim == Claim(SERIES, 1)
    job = store.start_job(claim, STUDY, "liver_ct")
    store.fail_job(job.id, "inference_failed", "RuntimeError: out of memory")
    store.finish_series(claim, SeriesState.DONE, result={"task": "liver_ct"})
    store.enqueue("pacs", Path("/nonexistent/seg.dcm"), "1.2.3.1", SERIES)
    store.enqueue("pacs", Path("/nonexistent/sr.dcm"), "1.2.3.2", SERIES)
    first, second = store.claim_due()
    store.mark_sent(first.id, 0x0000)
    store.mark_send_failed(second.id, "connection refused", None, retry_at=store.now() + 60)
    store.bump("federation_runs", "fedavg")
    store.bump("federation_rounds", "fedavg", 3)
    store.bump("gate_decisions", "accepted")
    store.register_model(
        task="liver_ct",
        version="1.2.0",
        name="liver",
        weights_sha256="ab" * 32,
        federated_round=3,
        path=Path("/nowhere"),
        origin="test",
    )
    store.activate("liver_ct", "1.2.0", force=True)


def test_store_backed_counts_in_prometheus_text(config: AppConfig, tmp_path: Path) -> None:
    store = Store(config.storage.database)
    try:
        populate(store)
        text = Metrics(store, config).render().decode()
    finally:
        store.close()

    assert "# TYPE appliance_instances_received_total counter" in text
    found = samples(text)
    assert value(found, "appliance_instances_received_total", kind="new") == 2
    assert value(found, "appliance_instances_received_total", kind="repeat") == 1
    assert value(found, "appliance_instances_rejected_total", status="0xA702") == 1
    assert value(found, "appliance_associations_rejected_total") == 1
    assert value(found, "appliance_series", state="done") == 1
    assert value(found, "appliance_series", state="receiving") == 0
    assert value(found, "appliance_jobs", state="failed") == 1
    assert value(found, "appliance_jobs", state="running") == 0
    assert value(found, "appliance_outbox_items", state="sent") == 1
    assert value(found, "appliance_outbox_items", state="pending") == 1
    assert value(found, "appliance_outbox_depth") == 1
    assert value(found, "appliance_outbox_failed_attempts_total") == 1
    assert value(found, "appliance_federation_runs_total", strategy="fedavg") == 1
    assert value(found, "appliance_federation_rounds_total", strategy="fedavg") == 3
    assert value(found, "appliance_gate_decisions_total", decision="accepted") == 1
    active = {
        "task": "liver_ct",
        "version": "1.2.0",
        "sha256": "ab" * 8,
        "federated_round": "3",
    }
    assert value(found, "appliance_model_active", **active) == 1
    assert value(found, "appliance_disk_watermark_bytes") == 7 * 2**20
    assert value(found, "appliance_disk_free_bytes") > 0
    assert value(found, "appliance_audit_write_failures_total") == 0
    assert STUDY not in text and SERIES not in text  # no identifiers, only counts


def test_counts_survive_a_restart_and_the_histogram_starts_empty(config: AppConfig) -> None:
    store = Store(config.storage.database)
    try:
        populate(store)
        metrics = Metrics(store, config)
        metrics.observe_job({"inference_s": 1.5, "seg_s": 0.2, "device": "cpu", "bad_s": -1.0})
        before = samples(metrics.render().decode())
    finally:
        store.close()
    assert value(before, "appliance_stage_seconds_count", stage="inference") == 1
    assert value(before, "appliance_stage_seconds_sum", stage="seg") == pytest.approx(0.2)
    assert value(before, "appliance_stage_seconds_bucket", stage="inference", le="2.5") == 1
    assert value(before, "appliance_stage_seconds_bucket", stage="inference", le="1.0") == 0
    stages = {dict(labels).get("stage") for name, labels in before if "stage_seconds" in name}
    assert stages == {"inference", "seg"}  # not "device" (no _s) nor a negative duration

    store = Store(config.storage.database)  # a restart: a new process, the same database
    try:
        after = samples(Metrics(store, config).render().decode())
    finally:
        store.close()
    for name, labels in before:
        if not name.startswith("appliance_stage_seconds") and "disk_free" not in name:
            assert after[(name, labels)] == before[(name, labels)], name
    assert not any(name.startswith("appliance_stage_seconds") for name, _ in after)
