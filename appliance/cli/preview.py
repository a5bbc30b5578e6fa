"""``appliance preview SERIES_UID``: PNGs of the segmentation over the images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from appliance.cli.common import ConfigOption, fail, load


def preview(
    series_uid: Annotated[str, typer.Argument(help="Series Instance UID of the source images.")],
    config: ConfigOption = None,
    seg: Annotated[
        Path | None,
        typer.Option(
            "--seg",
            help="Overlay this SEG file instead of the newest result (e.g. a corrected SEG).",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for the PNGs (default: <root>/previews/<uid>)."),
    ] = None,
    slices: Annotated[int, typer.Option(min=1, max=64, help="Slices per plane.")] = 5,
    all_planes: Annotated[
        bool, typer.Option("--all-planes", help="Also the two reformatted planes.")
    ] = False,
) -> None:
    """Write PNGs of the mask over the image on representative slices; print their paths."""
    from dicom_bridge.errors import DicomBridgeError
    from dicom_bridge.uids import validate_uid

    try:
        uid = validate_uid(series_uid, what="SERIES_UID")
    except DicomBridgeError as exc:
        raise typer.BadParameter(str(exc), param_hint="SERIES_UID") from exc
    cfg = load(config)
    from appliance.errors import NotFoundError
    from appliance.store import Store
    from appliance.tools.preview import find_latest_seg, preview_series

    store = Store(cfg.storage.database)
    try:
        try:
            store.get_series(uid)
        except NotFoundError as exc:
            raise fail(f"no series {uid} in the store", 1) from exc
        paths = [r.path for r in store.series_instances(uid)]
    finally:
        store.close()
    missing = [p for p in paths if not Path(p).is_file()]
    if not paths or missing:
        raise fail(f"{len(missing)} of {len(paths)} instance files of the series are missing")
    results = cfg.storage.root / "results"
    seg_path = seg or find_latest_seg(results, uid)
    if seg_path is None:
        raise fail(f"no SEG for this series under {results / uid}/gen-*/seg.dcm; pass --seg")
    out_dir = out or cfg.storage.root / "previews" / uid
    try:
        written = preview_series(paths, seg_path, out_dir, slices=slices, all_planes=all_planes)
    except (DicomBridgeError, ValueError, OSError) as exc:
        raise fail(f"cannot preview: {exc}") from exc
    typer.echo(f"SEG: {seg_path}")
    for item in written:
        typer.echo(str(item.path))
