"""The ``appliance`` command line (typer). Heavy imports stay inside the commands."""

from __future__ import annotations

import typer

from appliance.cli import (
    audit,
    cases,
    config_cmd,
    demo,
    echo,
    evaluate_real,
    federate,
    healthcheck,
    jobs,
    models,
    outbox,
    phantoms,
    preview,
    segment,
    send,
    serve,
    status,
    storage,
    train,
)

app = typer.Typer(
    name="appliance",
    help="DICOM segmentation appliance: receive, segment, send back, learn.",
    no_args_is_help=True,
    add_completion=False,
    # An error's traceback must never show local variables (keys, paths, patient data).
    pretty_exceptions_show_locals=False,
)
app.command("serve")(serve.serve)
app.command("status")(status.status)
app.command("echo")(echo.echo)
app.command("send")(send.send)
app.command("demo")(demo.demo)
app.command("preview")(preview.preview)
app.command("segment")(segment.segment)
app.command("healthcheck")(healthcheck.healthcheck)
app.command("train", context_settings=train.PASSTHROUGH)(train.train)
app.command("evaluate", context_settings=train.PASSTHROUGH)(train.evaluate)
app.command("evaluate-real")(evaluate_real.evaluate_real)
app.add_typer(phantoms.app, name="phantoms")
app.add_typer(config_cmd.app, name="config")
app.add_typer(outbox.app, name="outbox")
app.add_typer(models.app, name="models")
app.add_typer(jobs.app, name="jobs")
app.add_typer(federate.app, name="federate")
app.add_typer(cases.app, name="cases")
app.add_typer(audit.app, name="audit")
app.add_typer(storage.app, name="storage")


def main() -> None:
    from appliance.errors import StoreError
    from models.threads import passive_openmp_wait

    # before any command imports torch: OpenMP reads its wait policy once (models.threads)
    passive_openmp_wait()

    try:
        app()
    except StoreError as exc:  # a database that fails mid-command: one line, no traceback
        typer.echo(
            f"error: {exc}; restore a backup or rebuild it with `appliance storage reindex` "
            "(docs/operations.md, Backup and restore)",
            err=True,
        )
        raise SystemExit(1) from None
