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
    """Check that a destination answers C-ECHO."""
    cfg = load(config)
    from appliance.errors import NotFoundError
    from appliance.flow.outbox import remote_node
    from dicom_bridge.errors import SendError
    from dicom_bridge.sender import echo as c_echo

    try:
        dest = cfg.destination(destination)
    except NotFoundError as exc:
        raise fail(str(exc)) from exc
    node = remote_node(dest, cfg.dicom.ae_title)
    start = time.perf_counter()
    try:
        c_echo(node)
    except SendError as exc:
        raise fail(
            f"C-ECHO to {destination} ({dest.ae_title}@{dest.host}:{dest.port}) failed: {exc}"
        ) from exc
    typer.echo(
        f"C-ECHO to {destination} ({dest.ae_title}@{dest.host}:{dest.port}) ok "
        f"in {1000 * (time.perf_counter() - start):.0f} ms"
    )
