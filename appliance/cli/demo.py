"""``appliance demo``: run the main job end to end on embedded defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def demo(
    workdir: Annotated[Path | None, typer.Option(help="Where to write the demo's files.")] = None,
    orthanc: Annotated[
        bool | None,
        typer.Option(
            "--orthanc/--builtin-pacs", help="PACS to use (default: Orthanc if installed)."
        ),
    ] = None,
) -> None:
    """Phantom CT + MR through a running appliance; SEG + SR back to a PACS; Dice and timings."""
    from appliance.ops.logs import configure_logging
    from appliance.tools.demo import run_demo

    configure_logging("WARNING")
    try:
        result = run_demo(workdir, echo=typer.echo, use_orthanc=orthanc)
    except (RuntimeError, TimeoutError) as exc:
        typer.echo(f"demo FAILED: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"demo ok ({result.pacs})")
