"""Running it for months, end to end on a real ``appliance serve`` process: /healthz and
/metrics, the Docker healthcheck command, JSON logs, the audit trail, and that no
patient name or ID reaches any log or the audit file."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dicom_bridge.synthetic import SeriesGeometry, SeriesIdentity, write_series
from tests.interop.test_roundtrip_seg import wait_for
from tests.liver_series import write_liver_series
from tests.peers import ApplianceProcess, free_port, storescp, storescu

pytestmark = pytest.mark.interop

# Known identities: none of these strings may appear in a log or the audit file.
CT = SeriesIdentity(
    patient_name="KOWALCZYK^ZBIGNIEW^MAREK",
    patient_id="PID-7788123",
    series_description="Abdomen portal venous",
)
MR = SeriesIdentity(
    patient_name="OYELARAN^ADEBISI",
    patient_id="PID-5566021",
    series_description="AX T1 POST GAD",
    body_part="HEAD",
)
#: a CT series with no liver in it (a plain ellipsoid): the shipped liver model's first stage
#: finds nothing, so its job fails as nothing_found and nothing is sent for it
EMPTY_CT = SeriesIdentity(
    patient_name="NAKAGAWA^HARUTO",
    patient_id="PID-9911042",
    series_description="Abdomen portal venous",
)
PHI = (
    "KOWALCZYK",
    "ZBIGNIEW",
    "MAREK",
    "PID-7788123",
    "OYELARAN",
    "ADEBISI",
    "PID-5566021",
    "NAKAGAWA",
    "HARUTO",
    "PID-9911042",
)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text ``text`` (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.compile(rf"^{re.escape(name)}(\{{(.*)\}})? (\S+)$", re.M)
    for match in pattern.finditer(text):
        got = ",".join(sorted((match.group(2) or "").split(","))) if match.group(2) else ""
        if got == want:
            return float(match.group(3))
    return 0.0


def test_health_metrics_audit_and_no_patient_data_in_logs(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    http_port = free_port()
    ct_files = write_liver_series(tmp_path / "ct", CT)
    empty_files = write_series(
        tmp_path / "empty", SeriesGeometry(slices=16, rows=64, columns=64), identity=EMPTY_CT
    )
    mr_files = write_series(
        tmp_path / "mr",
        SeriesGeometry(slices=12, rows=64, columns=64, pixel_spacing=(1.0, 1.0)),
        modality="MR",
        identity=MR,
    )
    with storescp(tmp_path / "pacs") as (pacs_port, pacs_dir):
        app = appliance_factory(
            quiet=1.0,
            destinations=(
                dict(name="pacs", ae_title="TESTPACS", host="127.0.0.1", port=pacs_port),
            ),
            extra=(
                f"[http]\nenabled = true\nport = {http_port}\n"
                '[logging]\nformat = "json"\nlevel = "DEBUG"\n'
            ),
        )
        base = f"http://127.0.0.1:{http_port}"

        def healthy() -> dict[str, Any] | None:
            try:
                code, body = _get(f"{base}/healthz")
            except urllib.error.URLError:  # the HTTP server is not listening yet
                return None
            return json.loads(body) if code == 200 else None

        health = wait_for(healthy, 60, "the appliance never became healthy")
        checks = health["checks"]
        assert {"listener", "worker", "scheduler", "outbox", "database", "disk"} <= set(checks)
        assert checks["model liver_ct"]["ok"] and "loaded" in checks["model liver_ct"]["detail"]
        assert app.cli("healthcheck").returncode == 0

        for files in (ct_files, mr_files, empty_files):
            result = storescu(app.port, files)
            assert result.returncode == 0, result.stderr

        def sent() -> bool:
            status = app.status()
            jobs = [j for j in status["jobs"] if j["state"] in ("done", "failed")]
            return len(jobs) == 3 and status["outbox"].get("sent", 0) == 4

        wait_for(sent, 240, "the three jobs did not finish, or their SEG and SR were not sent")
        by_series = {j["series_uid"]: j for j in app.status()["jobs"]}
        assert by_series[CT.series_uid]["state"] == by_series[MR.series_uid]["state"] == "done"
        empty = by_series[EMPTY_CT.series_uid]
        assert (empty["state"], empty["reason"]) == ("failed", "nothing_found"), empty
        assert "found no liver" in empty["detail"]
        code, body = _get(f"{base}/metrics")
        assert code == 200
        text = body.decode()
        received = _metric(text, "appliance_instances_received_total", kind="new")
        assert received == len(ct_files) + len(mr_files) + len(empty_files)
        assert _metric(text, "appliance_jobs", state="done") == 2
        assert _metric(text, "appliance_jobs", state="failed") == 1
        assert _metric(text, "appliance_outbox_items", state="sent") == 4
        assert _metric(text, "appliance_outbox_depth") == 0
        assert _metric(text, "appliance_stage_seconds_count", stage="inference") >= 2
        assert _metric(text, "appliance_model_active", **_active(text, "liver_ct")) == 1
        assert "appliance_gate_decisions_total" in text
        assert "appliance_federation_rounds_total" in text
        assert _get(f"{base}/nothing")[0] == 404
        assert len(list(pacs_dir.iterdir())) == 4
        app.stop()

    audit = [json.loads(line) for line in (app.root / "audit" / "audit.jsonl").open()]
    events = [e["event"] for e in audit]
    for event in ("association", "series_received", "job_finished", "object_sent"):
        assert event in events, event
    jobs = [e for e in audit if e["event"] == "job_finished"]
    assert all(e["model_sha256"] for e in jobs)
    assert sorted(e["state"] for e in jobs) == ["done", "done", "failed"]
    assert app.cli("audit", "verify").returncode == 0
    exported = app.cli("audit", "export", "--since", "1h").stdout.splitlines()
    assert len(exported) >= len(audit)

    # JSON logs: every line the service wrote is one JSON object
    log_lines = [line for line in app.log.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in log_lines if line.startswith("{")]
    assert len(parsed) > 20 and len(parsed) == len(log_lines), [
        line for line in log_lines if not line.startswith("{")
    ][:5]
    assert any(p["level"] == "DEBUG" for p in parsed)

    # no patient name or ID anywhere: the service log, the audit trail, any other log
    scanned = [app.log, app.root / "audit" / "audit.jsonl", *tmp_path.rglob("*.log")]
    for path in scanned:
        content = path.read_text(errors="replace").upper()
        for value in PHI:
            assert value not in content, f"{value} found in {path}"
    for uid in (CT.study_uid, MR.study_uid, EMPTY_CT.study_uid):
        assert uid not in (app.root / "audit" / "audit.jsonl").read_text()


def _active(text: str, task: str) -> dict[str, str]:
    match = re.search(rf'^appliance_model_active\{{([^}}]*task="{task}"[^}}]*)\}}', text, re.M)
    assert match, text
    return dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))


def test_low_disk_is_unhealthy_refuses_stores_and_is_counted(
    tmp_path: Path, appliance_factory: Callable[..., ApplianceProcess]
) -> None:
    http_port = free_port()
    app = appliance_factory(
        extra=f"[http]\nenabled = true\nport = {http_port}\n",
        start=False,
    )
    # a watermark no disk can meet: 100 TB free
    text = app.config.read_text().replace("[storage]\n", "[storage]\nmin_free_mb = 100000000\n")
    app.config.write_text(text)
    app.start()
    base = f"http://127.0.0.1:{http_port}"

    def answered() -> tuple[int, bytes] | None:
        try:
            return _get(f"{base}/healthz")
        except OSError:
            return None

    code, body = wait_for(answered, 30, "no /healthz")
    assert code == 503
    health = json.loads(body)
    assert health["status"] == "fail" and not health["checks"]["disk"]["ok"]
    check = app.cli("healthcheck", check=False)
    assert check.returncode == 1 and "disk" in check.stderr

    files = write_series(tmp_path / "ct", SeriesGeometry(slices=3, rows=16, columns=16))
    result = storescu(app.port, files)
    output = result.stdout + result.stderr
    assert output.count("Refused: OutOfResources") == 3
    metrics = _get(f"{base}/metrics")[1].decode()
    assert _metric(metrics, "appliance_instances_rejected_total", status="0xA702") == 3
    assert _metric(metrics, "appliance_instances_received_total", kind="new") == 0
    assert not list((app.root / "spool").rglob("*.dcm"))
    assert "disk space low" in app.log.read_text()
