"""The ``appliance`` command line (typer). Heavy imports stay inside the commands."""

from __future__ import annotations

import typer

from appliance.cli import config_cmd, demo, echo, outbox, send, serve, status

app = typer.Typer(
    name="appliance",
    help="DICOM segmentation appliance: receive, segment, send back, learn.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("serve")(serve.serve)
app.command("status")(status.status)
app.command("echo")(echo.echo)
app.command("send")(send.send)
app.command("demo")(demo.demo)
app.add_typer(config_cmd.app, name="config")
app.add_typer(outbox.app, name="outbox")


def main() -> None:
    app()
