"""``appliance outbox list|retry``: look at and revive queued sends."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer

from appliance.cli.common import ConfigOption, fail, load, open_store

app = typer.Typer(help="The durable outbox of sends to destinations.", no_args_is_help=True)


@app.command("list")
def list_items(
    config: ConfigOption = None,
    state: Annotated[
        str | None, typer.Option(help="Only this state: pending, sending, sent, dead.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    limit: Annotated[int, typer.Option(help="Most recent items to list.")] = 100,
) -> None:
    """List outbox items, newest first."""
    cfg = load(config)
    from appliance.states import OutboxState

    states = None
    if state is not None:
        try:
            states = [OutboxState(state.lower())]
        except ValueError as exc:
            allowed = ", ".join(s.value for s in OutboxState)
            raise fail(f"--state must be one of {allowed}; got {state!r}", 2) from exc
    store = open_store(cfg)
    try:
        items = store.list_outbox(states=states, limit=limit)
    finally:
        store.close()
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "id": i.id,
                        "destination": i.destination,
                        "state": i.state.value,
                        "attempts": i.attempts,
                        "sop_uid": i.sop_uid,
                        "series_uid": i.series_uid,
                        "path": str(i.path),
                        "next_attempt_at": i.next_attempt_at,
                        "last_error": i.last_error,
                        "last_status": i.last_status,
                    }
                    for i in items
                ],
                indent=2,
            )
        )
        return
    if not items:
        typer.echo("outbox is empty")
        return
    typer.echo(
        f"{'ID':>6}  {'DESTINATION':<14} {'STATE':<8} {'TRIES':>5}  {'NEXT TRY':<19}  LAST ERROR"
    )
    for i in items:
        nxt = dt.datetime.fromtimestamp(i.next_attempt_at).strftime("%Y-%m-%d %H:%M:%S")
        typer.echo(
            f"{i.id:>6}  {i.destination:<14} {i.state.value:<8} {i.attempts:>5}  "
            f"{nxt:<19}  {i.last_error or ''}"
        )


@app.command("retry")
def retry(
    item_id: Annotated[int, typer.Argument(metavar="ID", help="Outbox item id.")],
    config: ConfigOption = None,
) -> None:
    """Make a dead (or waiting) item due now, with a fresh attempt budget."""
    cfg = load(config)
    from appliance.errors import NotFoundError, StoreError

    store = open_store(cfg)
    try:
        item = store.retry_outbox(item_id)
    except NotFoundError as exc:
        raise fail(str(exc)) from exc
    except StoreError as exc:
        raise fail(str(exc)) from exc
    finally:
        store.close()
    typer.echo(f"outbox {item.id} to {item.destination}: pending, will be sent on the next pass")
