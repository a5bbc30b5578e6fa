"""``appliance storage usage|purge|backup|reindex``: what the appliance keeps on disk,
retention, an online backup of the database, and rebuilding a lost database's index."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from appliance.cli.common import ConfigOption, fail, load, open_store, record_command

if TYPE_CHECKING:
    from appliance.ops.retention import Item

app = typer.Typer(
    help="Disk usage, retention (the [retention] policies), backup and reindex.",
    no_args_is_help=True,
)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _item(i: Item) -> dict[str, Any]:
    return {
        "category": i.category.value,
        "ref": i.ref,
        "files": i.files,
        "bytes": i.bytes,
        "due": i.due,
        "reason": i.reason,
    }


@app.command("usage")
def usage(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Bytes on disk by category (kept or due for purging), free space and the watermark."""
    cfg = load(config)
    from appliance.ops.retention import disk_usage, plan

    store = open_store(cfg)
    try:
        todo = plan(store, cfg)
        disk = disk_usage(cfg, todo)
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(disk, indent=2))
        return
    typer.echo(f"storage root {cfg.storage.root}")
    for name, entry in disk["categories"].items():
        typer.echo(
            f"  {name:<14} {_mib(entry['bytes']):>14} in {entry['files']} file(s); "
            f"due for purging: {_mib(entry['due_bytes'])}"
        )
    for name, size in disk["other"].items():
        typer.echo(f"  {name:<14} {_mib(size):>14}")
    typer.echo(
        f"free {_mib(disk['free_bytes'])}; watermark {_mib(disk['watermark_bytes'])} "
        f"({'below: new C-STOREs refused' if disk['below_watermark'] else 'ok'})"
    )


@app.command("purge")
def purge_cmd(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would go, and why; remove nothing.")
    ] = False,
    show_kept: Annotated[
        bool, typer.Option("--show-kept", help="Also list what is kept, and why.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    config: ConfigOption = None,
) -> None:
    """Apply the retention policies now (the service also does, every
    retention.interval_hours)."""
    cfg = load(config)
    from appliance.ops.retention import plan, purge

    store = open_store(cfg)
    try:
        todo = plan(store, cfg)
        result = None if dry_run else purge(store, cfg, todo)
    finally:
        store.close()
    listed = todo.items if show_kept else todo.due
    if as_json:
        out: dict[str, Any] = {"dry_run": dry_run, "items": [_item(i) for i in listed]}
        if result is not None:
            out["purged"] = {
                "items": result.items,
                "files": result.files,
                "bytes": result.bytes,
                "skipped": result.skipped,
            }
        typer.echo(json.dumps(out, indent=2))
        return
    verb = "would purge" if dry_run else "purging"
    for i in listed:
        head = verb if i.due else "keeping"
        typer.echo(
            f"{head} {i.category.value} {i.ref}: {i.files} file(s), {_mib(i.bytes)}; {i.reason}"
        )
    due_bytes = sum(i.bytes for i in todo.due)
    if result is None:
        typer.echo(f"dry run: {len(todo.due)} item(s), {_mib(due_bytes)} would go")
    else:
        typer.echo(
            f"purged {result.items} item(s): {result.files} file(s), {_mib(result.bytes)}"
            + (f"; {result.skipped} left alone (changed meanwhile)" if result.skipped else "")
        )


@app.command("backup")
def backup(
    file: Annotated[Path, typer.Argument(help="The new backup file (never overwritten).")],
    config: ConfigOption = None,
) -> None:
    """Copy the database to FILE with SQLite's online backup API: consistent, and safe
    while `appliance serve` runs. The spool, results, cases and audit folders are plain
    files: back them up with the file system (docs/operations.md, Backup and restore)."""
    cfg = load(config)
    from appliance.errors import StoreError
    from appliance.store.integrity import backup_database

    try:
        size = backup_database(cfg.storage.database, file)
    except StoreError as exc:
        raise fail(str(exc)) from None
    typer.echo(f"backed up {cfg.storage.database} to {file} ({_mib(size)})")


@app.command("reindex")
def reindex_cmd(
    force: Annotated[
        bool,
        typer.Option("--force", help="Run on a readable database that holds records (adds only)."),
    ] = False,
    process_unfinished: Annotated[
        bool,
        typer.Option(
            "--process-unfinished",
            help="Process (and send) series without a result on disk instead of holding them.",
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Rebuild a missing, empty or unreadable database from the spool, sending nothing
    twice: series with a result on disk become done (reason reindexed) and are not sent
    again; series without one are held (skipped, reason reindexed) unless
    --process-unfinished. Refused while `appliance serve` runs."""
    cfg = load(config, audit=False)
    from appliance.errors import StoreError
    from appliance.ops.reindex import reindex

    try:
        result = reindex(cfg, force=force, process_unfinished=process_unfinished)
    except StoreError as exc:
        raise fail(str(exc)) from None
    record_command(cfg)
    if result.moved_aside is not None:
        typer.echo(f"the unreadable database was kept as {result.moved_aside}")
    typer.echo(
        f"reindexed {result.database} (was {result.condition.value}): "
        f"{result.instances} spool file(s); {result.series_done} series with a result "
        f"marked done (reindexed, not sent again); {result.series_held} series without a "
        f"result held (skipped, reindexed); "
        f"{result.series_to_process + result.released} series to process"
    )
