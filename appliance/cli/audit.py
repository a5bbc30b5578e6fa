"""``appliance audit export|verify``: the append-only audit trail (:mod:`appliance.store.audit`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from appliance.cli.common import ConfigOption, fail, load

app = typer.Typer(
    help="The audit trail: who sent what, and what the model did with it.",
    no_args_is_help=True,
)


@app.command("export")
def export(
    since: Annotated[
        str,
        typer.Option(
            help="From when: a date (2026-11-01), a date and time (2026-11-01T08:00, UTC "
            "unless a zone is given) or a span back from now (30m, 12h, 7d, 2w)."
        ),
    ],
    until: Annotated[
        str | None, typer.Option(help="Up to (not including) this time; same forms.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write to this file (default: stdout).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Write the audit entries from --since on as JSON lines."""
    cfg = load(config)
    from appliance.errors import AuditError
    from appliance.store.audit import entries_since, parse_since

    try:
        start = parse_since(since)
        end = parse_since(until) if until is not None else None
        lines = [
            json.dumps(e, sort_keys=True) for e in entries_since(cfg.storage.audit_file, start, end)
        ]
    except AuditError as exc:
        raise fail(str(exc), 2) from exc
    text = "".join(f"{line}\n" for line in lines)
    if out is None:
        typer.echo(text, nl=False)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot write {out}: {exc.strerror}") from exc
    typer.echo(f"{len(lines)} audit entries written to {out}", err=True)


@app.command("verify")
def verify_cmd(config: ConfigOption = None) -> None:
    """Check the audit file's hash chain: exit 1 at the first removed, reordered or
    edited entry."""
    cfg = load(config)
    from appliance.store.audit import verify

    result = verify(cfg.storage.audit_file)
    if not result.ok:
        raise fail(f"audit trail broken after {result.entries} entries: {result.problem}")
    typer.echo(f"audit trail intact: {result.entries} entries ({cfg.storage.audit_file})")
