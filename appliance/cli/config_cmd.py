"""``appliance config check FILE``: validate a config and print every error with its key."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Configuration commands.", no_args_is_help=True)


@app.command("check")
def check(file: Annotated[Path, typer.Argument(help="Config TOML file to validate.")]) -> None:
    """Validate FILE; exit 0 when valid, 2 with one line per problem otherwise."""
    from appliance.config import load_config
    from appliance.errors import ConfigError

    try:
        cfg = load_config(file)
    except ConfigError as exc:
        for issue in exc.issues:
            typer.echo(f"{issue.key}: {issue.message}", err=True)
        typer.echo(f"{file}: {len(exc.issues)} error(s)", err=True)
        raise typer.Exit(2) from exc
    typer.echo(
        f"{file}: ok (AE {cfg.dicom.ae_title} on {cfg.dicom.bind}:{cfg.dicom.port}, "
        f"{len(cfg.destinations)} destination(s), storage {cfg.storage.root})"
    )
