"""``appliance echo DESTINATION``: C-ECHO a configured destination."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from appliance.cli.common import ConfigOption, fail, load


def echo(
    destination: Annotated[str, typer.Argument(help="Name of a [[destinations]] entry.")],
    config: ConfigOption = None,
) -> None:
    """Check that a destination answers: C-ECHO, or for a DICOMweb destination one QIDO-RS
    query."""
    cfg = load(config)
    from appliance.config import DestinationKind
    from appliance.errors import NotFoundError
    from appliance.flow.outbox import describe_destination, remote_node, web_endpoint
    from dicom_bridge.errors import SendError
    from dicom_bridge.sender import echo as c_echo
    from dicom_bridge.stow import check_endpoint

    try:
        dest = cfg.destination(destination)
    except NotFoundError as exc:
        raise fail(str(exc)) from exc
    what = "QIDO-RS" if dest.kind is DestinationKind.DICOMWEB else "C-ECHO"
    where = describe_destination(dest)
    start = time.perf_counter()
    try:
        if dest.kind is DestinationKind.DICOMWEB:
            check_endpoint(web_endpoint(dest))
        else:
            c_echo(remote_node(dest, cfg.dicom.ae_title))
    except SendError as exc:
        raise fail(f"{what} to {destination} ({where}) failed: {exc}") from exc
    typer.echo(
        f"{what} to {destination} ({where}) ok in {1000 * (time.perf_counter() - start):.0f} ms"
    )
