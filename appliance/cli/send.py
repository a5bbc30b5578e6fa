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
    store = open_store(cfg)
    queued = []
    for path in files:
        try:
            ds = dcmread(path, stop_before_pixels=True)
            sop_uid = validate_uid(ds.get("SOPInstanceUID"), what="SOPInstanceUID")
            series = ds.get("SeriesInstanceUID")
        except (InvalidUIDError, Exception) as exc:
            raise fail(f"{path}: not a sendable DICOM file ({exc})") from exc
        queued.append(
            store.enqueue(destination, path.resolve(), sop_uid, str(series) if series else None)
        )
    typer.echo(
        f"queued {len(queued)} file(s) for {destination}: outbox ids "
        f"{', '.join(str(i) for i in queued)}"
    )
