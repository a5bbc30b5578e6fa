"""``appliance evaluate-real``: Dice of the shipped models on the real labelled cases.

Evaluation only (issue 3): the cases in ``../shared/data`` are never used for training and
no threshold is applied. See :mod:`appliance.tools.real_evaluation`.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Annotated

import typer

from appliance.cli.common import fail


def _default_registry() -> Path:
    from appliance.config import shipped_bundles_dir

    return shipped_bundles_dir()


def _command(
    data: Path | None,
    registry: Path | None,
    only: str | None,
    device: str,
    threads: int,
    no_hd95: bool,
    json_out: Path | None,
    markdown: Path | None,
) -> str:
    parts = ["appliance", "evaluate-real"]
    if data is not None:
        parts += ["--data", str(data)]
    if registry is not None:
        parts += ["--registry", str(registry)]
    if only:
        parts += ["--only", only]
    if device != "auto":
        parts += ["--device", device]
    if threads != 2:
        parts += ["--threads", str(threads)]
    if no_hd95:
        parts.append("--no-hd95")
    if json_out is not None:
        parts += ["--json", str(json_out)]
    if markdown is not None:
        parts += ["--markdown", str(markdown)]
    return shlex.join(parts)


def evaluate_real(
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Root of the real test data (default: shared/data beside the repository).",
            show_default=False,
        ),
    ] = None,
    registry: Annotated[
        Path | None,
        typer.Option(
            "--registry",
            help="Model registry to take each task's highest version from "
            "(default: the shipped bundles, models/bundles).",
            show_default=False,
        ),
    ] = None,
    only: Annotated[
        str | None,
        typer.Option(
            "--only",
            help="Comma-separated dataset keys (default: all): ct_totalseg_j2k, "
            "ct_dcmqi_3slice, ct_3dircadb17, mr_tcga_gbm, mr_tcia_progression, mr_brats2013.",
        ),
    ] = None,
    device: Annotated[
        str, typer.Option("--device", help="auto (CUDA when available), cpu or cuda.")
    ] = "auto",
    threads: Annotated[int, typer.Option("--threads", min=1, help="torch CPU threads.")] = 2,
    no_hd95: Annotated[
        bool, typer.Option("--no-hd95", help="Skip HD95 (Dice and volumes only).")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the results as JSON here.")
    ] = None,
    markdown: Annotated[
        Path | None,
        typer.Option(
            "--markdown",
            help="Also write the results page here (docs/results/real_data_evaluation.md).",
        ),
    ] = None,
) -> None:
    """Segment the real labelled cases with the shipped models; print Dice (and HD95).

    Evaluation only, no threshold. e.g. appliance evaluate-real --markdown
    docs/results/real_data_evaluation.md
    """
    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter("allowed: auto, cpu, cuda", param_hint="--device")
    from appliance.tools.real_cases import default_data_root

    data_root = data if data is not None else default_data_root()
    if not data_root.is_dir():
        raise fail(f"data root {data_root} does not exist; pass --data PATH", 2)
    registry_root = registry if registry is not None else _default_registry()
    if not registry_root.is_dir():
        raise fail(f"model registry {registry_root} does not exist; pass --registry PATH", 2)
    selected = [k.strip() for k in only.split(",") if k.strip()] if only else None
    if only is not None and not selected:
        raise typer.BadParameter("name at least one dataset", param_hint="--only")

    import torch

    from appliance.errors import ApplianceError
    from appliance.tools.real_evaluation import evaluate_real as run
    from models.errors import ModelsError

    torch.set_num_threads(threads)
    command = _command(data, registry, only, device, threads, no_hd95, json_out, markdown)
    try:
        result = run(
            data_root,
            registry_root,
            only=selected,
            device=None if device == "auto" else device,
            hd95=not no_hd95,
            command=command,
            log=lambda line: typer.echo(line, err=True),
        )
    except (ApplianceError, ModelsError) as exc:
        raise fail(str(exc), 2) from exc
    typer.echo(result.format_table())
    try:
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(result.as_dict(), indent=2) + "\n", encoding="utf-8")
            typer.echo(f"wrote {json_out}")
        if markdown is not None:
            markdown.parent.mkdir(parents=True, exist_ok=True)
            markdown.write_text(result.to_markdown(), encoding="utf-8")
            typer.echo(f"wrote {markdown}")
    except OSError as exc:
        raise fail(f"cannot write the results: {exc}") from exc
    if result.failed:
        raise fail(f"{len(result.failed)} dataset(s) could not be loaded (see above)", 1)
