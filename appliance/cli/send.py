"""``appliance send DESTINATION FILE...``: queue DICOM files for sending."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from appliance.cli.common import ConfigOption, fail, load, open_store


def send(
    destination: Annotated[str, typer.Argument(help="Name of a [[destinations]] entry.")],
    files: Annotated[
        list[Path],
        typer.Argument(help="DICOM files to send.", exists=True, dir_okay=False, readable=True),
    ],
    config: ConfigOption = None,
) -> None:
    """Queue files in the durable outbox; the running service sends them with retries."""
    cfg = load(config)
    from pydicom import dcmread

    from appliance.errors import NotFoundError
    from dicom_bridge.errors import InvalidUIDError
    from dicom_bridge.uids import validate_uid

    try:
        cfg.destination(destination)
    except NotFoundError as exc:
        raise fail(str(exc)) from exc
    # Check every file first, so a bad one queues nothing.
    items: list[tuple[Path, str, str | None]] = []
    for path in files:
        try:
            ds = dcmread(path, stop_before_pixels=True)
            sop_uid = validate_uid(ds.get("SOPInstanceUID"), what="SOPInstanceUID")
            series = ds.get("SeriesInstanceUID")
        except InvalidUIDError as exc:
            raise fail(f"{path}: {exc}; nothing was queued") from exc
        except Exception as exc:  # pydicom raises many types for non-DICOM input
            raise fail(
                f"{path}: not a readable DICOM file ({type(exc).__name__}); nothing was queued"
            ) from exc
        items.append((path.resolve(), sop_uid, str(series) if series else None))
    store = open_store(cfg)
    try:
        queued = [store.enqueue(destination, p, uid, series) for p, uid, series in items]
    finally:
        store.close()
    typer.echo(
        f"queued {len(queued)} file(s) for {destination}: outbox ids "
        f"{', '.join(str(i) for i in queued)}"
    )
