"""``appliance demo``: run the main job end to end on embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    workdir: Annotated[Path | None, typer.Option(help="Where to write the demo's files.")] = None,
    slices: Annotated[int, typer.Option(min=2, max=1000, help="Slices in the CT series.")] = 60,
) -> None:
    """Push a synthetic CT to a running appliance, check its volume, send objects back."""
    from appliance.demo import run_demo
    from appliance.logs import configure_logging

    configure_logging("WARNING")
    result = run_demo(workdir, slices=slices, echo=typer.echo)
    if result.returned_instances != result.instances_sent or result.affine_error_mm > 1e-3:
        typer.echo("demo FAILED", err=True)
        raise typer.Exit(1)
    typer.echo("demo ok")
