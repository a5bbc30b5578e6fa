"""Options and helpers shared by the CLI command groups."""

from __future__ import annotations

import re
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


def load(config_path: Path | None, *, audit: bool = True) -> AppConfig:
    """Load and validate the config or exit with code 2 listing every problem; record the
    command in the audit trail (``audit``, see :func:`record_command`)."""
    from appliance.config import load_config
    from appliance.errors import ConfigError

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from exc
    if audit:
        record_command(config)
    return config


def use_inference_threads(config: AppConfig) -> None:
    """The process's thread policy for inference (``inference.threads``; imports torch)."""
    from models.inference import apply_thread_policy

    apply_thread_policy(config.inference.threads)


_SAFE_VALUE = re.compile(r"^[A-Za-z][A-Za-z0-9_.:-]{0,63}$")


def record_command(config: AppConfig) -> None:
    """The audit trail's record of this admin command: the command and its options.
    Values are kept only when they are plain names (a task, a version, a strategy);
    anything else (paths, UIDs, free text) is recorded as given, without its value.
    Nothing is recorded when the appliance's database does not exist (yet) here or is an
    empty file (opening it would create a schema and a new audit key)."""
    import click

    from appliance.errors import ApplianceError
    from appliance.store.audit import AuditEvent

    context = click.get_current_context(silent=True)
    database = config.storage.database
    if context is None or not database.is_file() or database.stat().st_size == 0:
        return
    params: dict[str, object] = {}
    for name, value in sorted(context.params.items()):
        if name == "config" or value is None or value is False or value == ():
            continue
        if isinstance(value, bool | int | float) or (
            isinstance(value, str) and _SAFE_VALUE.match(value)
        ):
            params[name] = value
        else:
            params[name] = "<given>"
    try:
        store = open_store(config)
    except ApplianceError:
        return  # the command itself reports an unusable store
    try:
        store.audit.record(AuditEvent.ADMIN_COMMAND, command=context.command_path, params=params)
    finally:
        store.close()


def open_store(config: AppConfig) -> Store:
    """The store, or exit 1 with one line naming the database when it cannot be opened
    (not an SQLite file, corrupt, newer schema)."""
    from appliance.errors import StoreError
    from appliance.store import Store

    try:
        return Store(config.storage.database)
    except StoreError as exc:
        raise fail(
            f"{exc}; restore a backup or rebuild it with `appliance storage reindex` "
            "(docs/operations.md, Backup and restore)"
        ) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)
