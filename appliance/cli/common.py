"""Options and helpers shared by the CLI command groups."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from appliance.config import AppConfig
    from appliance.store import Store

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        envvar="APPLIANCE_CONFIG",
        help="Config TOML file (default: $APPLIANCE_CONFIG).",
        show_default=False,
    ),
]


def load(config_path: Path | None) -> AppConfig:
    """Load and validate the config or exit with code 2 listing every problem."""
    from appliance.config import load_config
    from appliance.errors import ConfigError

    try:
        return load_config(config_path)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc


def open_store(config: AppConfig) -> Store:
    from appliance.store import Store

    return Store(config.storage.database)


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)
