"""``appliance jobs list|retry``: segmentation jobs, their timings, and re-running failures."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from appliance.cli.common import ConfigOption, fail, load, open_store

app = typer.Typer(
    help="Segmentation jobs: one per series, generation and task.", no_args_is_help=True
)


@app.command("list")
def list_jobs(
    config: ConfigOption = None,
    state: Annotated[
        str | None, typer.Option(help="Only this state: queued, running, done, failed.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    limit: Annotated[int, typer.Option(help="Most recent jobs to list.")] = 100,
) -> None:
    """List jobs, newest first, with model, per-stage timings and failure reasons."""
    cfg = load(config)
    from appliance.cli.status import job_note
    from appliance.ops.status import job_entry
    from appliance.states import JobState

    states = None
    if state is not None:
        try:
            states = [JobState(state.lower())]
        except ValueError as exc:
            allowed = ", ".join(s.value for s in JobState)
            raise fail(f"--state must be one of {allowed}; got {state!r}", 2) from exc
    store = open_store(cfg)
    try:
        jobs = [job_entry(j) for j in store.list_jobs(states=states, limit=limit)]
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(jobs, indent=2))
        return
    if not jobs:
        typer.echo("no jobs")
        return
    typer.echo(
        f"{'ID':>5}  {'TASK':<10} {'STATE':<7} {'TRIES':>5}  {'MODEL':<16}  TIMINGS / REASON"
    )
    for j in jobs:
        version = (j["model"] or {}).get("version", "-")
        typer.echo(
            f"{j['id']:>5}  {j['task']:<10} {j['state']:<7} {j['attempts']:>5}  "
            f"{version:<16}  {job_note(j)}"
        )


@app.command("retry")
def retry(
    job_id: Annotated[int, typer.Argument(metavar="ID", help="Job id (appliance jobs list).")],
    config: ConfigOption = None,
) -> None:
    """Re-queue a failed job: the worker runs its series through the pipeline again."""
    cfg = load(config)
    from appliance.errors import NotFoundError, StoreError

    store = open_store(cfg)
    try:
        job = store.retry_job(job_id)
    except (NotFoundError, StoreError) as exc:
        raise fail(str(exc)) from exc
    finally:
        store.close()
    typer.echo(f"job {job.id} ({job.task}): queued; the worker will run it again")
