"""``appliance segment INPUT --out OUTPUT``: a DICOM series folder or a NIfTI file segmented
offline through a job's clinical path, written as a NIfTI on the input grid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from appliance.cli.common import ConfigOption, fail, load, use_inference_threads


def segment(
    source: Annotated[
        Path,
        typer.Argument(
            metavar="INPUT",
            help="A DICOM series folder (a study folder for glioma_brats) or a .nii/.nii.gz file.",
            show_default=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="The NIfTI to write (.nii or .nii.gz).", show_default=False
        ),
    ],
    task: Annotated[
        str | None,
        typer.Option(
            help="The task (default for DICOM: the site's routing rules; needed for NIfTI)."
        ),
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(help="A registered model version of the task (default: the active one)."),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Segment INPUT the way a job would (same DICOM checks, routing, model, inference,
    post-processing and size limits) and write the mask as a NIfTI on the input grid: a uint8
    label map, or for glioma_brats (overlapping regions) a 4-D uint8 NIfTI with one 0/1
    volume per label. Nothing is recorded as a series or job."""
    cfg = load(config)
    use_inference_threads(cfg)
    from appliance.errors import ApplianceError
    from appliance.flow.offline import segment_path
    from appliance.flow.pipeline import label_voxels
    from appliance.store import Store
    from models.tasks import get_task

    database = cfg.storage.database
    if not database.is_file() or database.stat().st_size == 0:
        raise fail(
            f"no appliance database at {database}: its models are registered when the "
            "appliance first starts (appliance serve) or with appliance models import"
        )
    try:
        site = Store(database)
    except ApplianceError as exc:
        raise fail(str(exc)) from None
    try:
        done = segment_path(site, cfg, source, out, task=task, version=version)
    except ApplianceError as exc:
        raise fail(str(exc)) from None
    finally:
        site.close()
    model = done.model
    counts = label_voxels(done.mask, get_task(done.task))
    typer.echo(
        f"{done.task}: model {model.name} {model.version} (sha256 {model.weights_sha256[:12]}) "
        f"on {done.segmentation.device} -> {out}"
    )
    typer.echo("  " + ", ".join(f"{name} {n} voxels" for name, n in counts.items()))
