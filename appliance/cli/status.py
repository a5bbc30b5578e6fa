"""``appliance status [--json]``: instances, series, jobs (with stage timings), queues,
active models, recent rejections."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from appliance.cli.common import ConfigOption, load, open_store


def status(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    limit: Annotated[int, typer.Option(help="Most recent series to list.")] = 50,
) -> None:
    """Show what the appliance holds and what it is doing."""
    cfg = load(config)
    from appliance.ops.status import build_status

    store = open_store(cfg)
    try:
        report = build_status(store, series_limit=limit)
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_text(report)


def _print_text(report: dict[str, Any]) -> None:
    q = report["queues"]
    typer.echo(f"instances: {report['instances']}")
    states = ", ".join(f"{k} {v}" for k, v in report["series_states"].items() if v)
    typer.echo(f"series: {len(report['series'])} listed ({states or 'none'})")
    typer.echo(
        f"queues: {q['series_waiting']} series waiting, {q['series_processing']} processing, "
        f"{q['outbox_pending']} to send, {q['outbox_dead']} dead letters"
    )
    if report["series"]:
        typer.echo("")
        typer.echo(f"{'SERIES UID':<64}  {'MOD':<4} {'STATE':<11} {'INST':>5}  RESULT / REASON")
        for s in report["series"]:
            if s["reason"]:
                note = f"{s['reason']}: {s['detail'] or ''}"
            elif s["result"]:
                shape = "x".join(str(v) for v in s["result"].get("shape", []))
                note = f"{s['result'].get('task', '?')}: volume {shape}"
            else:
                note = ""
            typer.echo(
                f"{s['series_uid']:<64}  {s['modality']:<4} {s['state']:<11} "
                f"{s['instances']:>5}  {note}"
            )
    if report.get("models"):
        typer.echo("")
        active = ", ".join(f"{task} {m['version']}" for task, m in report["models"].items())
        typer.echo(f"active models: {active}")
    if report.get("cases"):
        parts = [
            f"{task} train {c['train']}, held-out {c['held_out']}, excluded {c['excluded']}"
            for task, c in sorted(report["cases"].items())
        ]
        typer.echo(f"annotated cases: {'; '.join(parts)}")
    if report.get("jobs"):
        typer.echo("")
        typer.echo(f"{'JOB':>5}  {'TASK':<10} {'STATE':<7} {'MODEL':<16}  TIMINGS / REASON")
        for j in report["jobs"]:
            typer.echo(
                f"{j['id']:>5}  {j['task']:<10} {j['state']:<7} "
                f"{(j['model'] or {}).get('version', '-'):<16}  {job_note(j)}"
            )
    if report["rejections"]:
        typer.echo("")
        typer.echo("recent rejections:")
        for r in report["rejections"]:
            status = f" [{r['status']}]" if r["status"] else ""
            typer.echo(
                f"  {r['at']} {r['scope']}{status} from {r['calling_ae'] or '?'}: {r['reason']}"
            )


STAGES = ("volume_s", "model_s", "inference_s", "seg_s", "sr_s", "save_s", "enqueue_s", "total_s")


def job_note(job: dict[str, Any]) -> str:
    """Per-stage seconds of a job, or its failure reason."""
    if job["state"] == "failed":
        return f"{job['reason']}: {job['detail'] or ''}"
    timings = job.get("timings") or {}
    parts = [f"{k.removesuffix('_s')} {timings[k]:.2f}s" for k in STAGES if k in timings]
    return ", ".join(parts)
