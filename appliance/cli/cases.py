"""``appliance cases import|list|exclude|include|review|accept|reject``: annotated
training cases and their review."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from appliance.cli.common import ConfigOption, fail, load, open_store

if TYPE_CHECKING:
    from appliance.store import CaseRecord, CaseRefusal

app = typer.Typer(
    help="Annotated cases: corrected SEGs (or NIfTI labels) on stored series, for training.",
    no_args_is_help=True,
)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat(timespec="seconds")


def case_entry(case: CaseRecord) -> dict[str, Any]:
    return {
        "id": case.id,
        "task": case.task,
        "state": case.state.value,
        "split": case.split.value,
        "origin": case.origin.value,
        "calling_ae": case.calling_ae,
        "review": case.review,
        "study_ref": case.study_ref,
        "source_series_uid": case.source_series_uid,
        "seg_sop_uid": case.seg_sop_uid,
        "labels": case.labels,
        "labels_present": list(case.labels_present),
        "segments": case.segments,
        "created_at": _iso(case.created_at),
    }


def refusal_entry(refusal: CaseRefusal) -> dict[str, Any]:
    return {
        "id": refusal.id,
        "at": _iso(refusal.at),
        "origin": refusal.origin.value,
        "calling_ae": refusal.calling_ae,
        "reason": refusal.reason,
        "detail": refusal.detail,
        "study_ref": refusal.study_ref,
        "seg_series_uid": refusal.seg_series_uid,
        "source_series_uid": refusal.source_series_uid,
    }


def _files(series: Path) -> list[Path]:
    if series.is_file():
        return [series]
    if not series.is_dir():
        raise fail(f"--series {series} is neither a directory nor a file", 2)
    files = sorted(p for p in series.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise fail(f"--series {series} holds no files", 2)
    return files


@app.command("import")
def import_case(
    seg_file: Annotated[
        Path | None,
        typer.Argument(metavar="[SEG_FILE]", help="A DICOM SEG on the series (not with --nifti)."),
    ] = None,
    series: Annotated[
        Path | None,
        typer.Option(
            "--series",
            help="The source series: a folder of its DICOM files (ingested like received "
            "ones). Optional for a SEG whose series is stored already.",
        ),
    ] = None,
    nifti: Annotated[
        Path | None, typer.Option("--nifti", help="A NIfTI label file on the series.")
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="Task of the NIfTI labels: liver_ct, glioma_mr.")
    ] = None,
    label_map: Annotated[
        str | None,
        typer.Option(
            "--label-map",
            help="NIfTI values to task labels, e.g. '5=liver' or '1=liver,2=liver tumour'; "
            "unnamed values become background (default: values are the task's label indices).",
        ),
    ] = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Import an annotation as a case: a DICOM SEG, or NIfTI labels plus their series."""
    if (seg_file is None) == (nifti is None):
        raise fail("give either a SEG_FILE or --nifti FILE (with --series and --task)", 2)
    if nifti is not None and (series is None or task is None):
        raise fail("--nifti needs --series DIR and --task", 2)
    if seg_file is not None and (task is not None or label_map is not None):
        raise fail("--task and --label-map are for --nifti; a SEG's codes choose the task", 2)
    for path in (seg_file, nifti):
        if path is not None and not path.is_file():
            raise fail(f"{path} is not a file", 2)
    cfg = load(config)
    from appliance.cases.from_nifti import case_from_nifti, parse_label_map
    from appliance.cases.from_seg import case_from_seg
    from appliance.errors import ApplianceError
    from appliance.flow.ingest import ingest_files
    from appliance.states import CaseOrigin
    from models.tasks import TASKS

    spec = None
    mapping = None
    if task is not None:
        spec = next((t for name, t in TASKS.items() if str(name) == task), None)
        if spec is None:
            raise fail(f"--task must be one of {', '.join(str(t) for t in TASKS)}; got {task!r}", 2)
        if label_map is not None:
            try:
                mapping = parse_label_map(label_map, spec)
            except ValueError as exc:
                raise fail(f"--label-map: {exc}", 2) from exc
    cfg.storage.root.mkdir(parents=True, exist_ok=True)
    store = open_store(cfg)
    try:
        series_uids: list[str] = []
        if series is not None:
            try:
                records = ingest_files(store, cfg, _files(series))
            except ApplianceError as exc:
                raise fail(f"--series: {exc}") from exc
            series_uids = list(dict.fromkeys(r.series_uid for r in records))
        if nifti is not None:
            if len(series_uids) != 1:
                raise fail(f"--series must hold one series; it holds {len(series_uids)}", 2)
            assert task is not None
            outcome = case_from_nifti(store, cfg, nifti, series_uids[0], task, mapping)
        else:
            assert seg_file is not None
            outcome = case_from_seg(store, cfg, seg_file, CaseOrigin.CLI, keep_copy=True)
        if outcome.refusal is not None:
            r = outcome.refusal
            if as_json:
                typer.echo(json.dumps({"refused": refusal_entry(r)}, indent=2))
            raise fail(f"refused ({r.reason}): {r.detail}")
        assert outcome.case is not None
        case = outcome.case
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps({"case": case_entry(case), "existing": outcome.existing}, indent=2))
        return
    what = "already recorded as" if outcome.existing else "imported as"
    if case.review:
        what = f"{what} (pending review: {'; '.join(case.review)})"
    typer.echo(
        f"{what} case {case.id}: {case.task}, {case.split.value}, labels "
        f"{', '.join(f'{k} {v} voxels' for k, v in case.labels.items())}"
        + (
            f"; supersedes case {', '.join(map(str, outcome.superseded))}"
            if outcome.superseded
            else ""
        )
    )


@app.command("list")
def list_cases(
    config: ConfigOption = None,
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    refusals: Annotated[int, typer.Option(help="Most recent refusals to show.")] = 20,
) -> None:
    """List cases (state, split, labels) and the most recent refused annotations."""
    cfg = load(config)
    store = open_store(cfg)
    try:
        cases = [case_entry(c) for c in store.list_cases(task=task)]
        refused = [refusal_entry(r) for r in store.list_case_refusals(refusals)]
        counts = store.case_counts()
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps({"counts": counts, "cases": cases, "refused": refused}, indent=2))
        return
    if not cases:
        typer.echo("no cases")
    else:
        head = f"{'ID':>5}  {'TASK':<10} {'STATE':<10} {'SPLIT':<8} {'ORIGIN':<6} "
        typer.echo(head + f"{'STUDY':<12}  LABELS")
        for c in cases:
            present = ", ".join(c["labels_present"]) or "-"
            typer.echo(
                f"{c['id']:>5}  {c['task']:<10} {c['state']:<10} {c['split']:<8} "
                f"{c['origin']:<6} {c['study_ref']:<12}  {present}"
            )
    if refused:
        typer.echo("refused annotations (newest first):")
        for r in refused:
            typer.echo(f"  {r['at']}  {r['origin']:<5} {r['reason']}: {r['detail']}")


def _set_state(case_id: int, config: Path | None, state_name: str) -> None:
    cfg = load(config)
    from appliance.errors import NotFoundError, StoreError
    from appliance.states import CaseState

    store = open_store(cfg)
    try:
        case = store.set_case_state(case_id, CaseState(state_name))
    except (NotFoundError, StoreError) as exc:
        raise fail(str(exc)) from exc
    finally:
        store.close()
    typer.echo(f"case {case.id} ({case.task}, {case.split.value}): {case.state.value}")


@app.command("exclude")
def exclude(
    case_id: Annotated[int, typer.Argument(metavar="ID", help="Case id (appliance cases list).")],
    config: ConfigOption = None,
) -> None:
    """Take a case out of training and evaluation (its files are kept)."""
    _set_state(case_id, config, "excluded")


@app.command("include")
def include(
    case_id: Annotated[int, typer.Argument(metavar="ID", help="Case id (appliance cases list).")],
    config: ConfigOption = None,
) -> None:
    """Make an excluded or superseded case active again (the series' active case of the
    same task, if any, becomes superseded)."""
    _set_state(case_id, config, "active")


@app.command("review")
def review(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List the cases pending review, with the reasons they wait (accept or reject them)."""
    cfg = load(config)
    from appliance.states import CaseState

    store = open_store(cfg)
    try:
        pending = [case_entry(c) for c in store.list_cases(states=[CaseState.PENDING])]
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps({"pending": pending}, indent=2))
        return
    if not pending:
        typer.echo("no cases pending review")
        return
    for c in pending:
        typer.echo(
            f"case {c['id']}: {c['task']}, {c['split']}, from {c['calling_ae'] or c['origin']}, "
            f"study {c['study_ref']}, labels {', '.join(c['labels_present']) or '-'}"
        )
        for reason in c["review"]:
            typer.echo(f"  - {reason}")


def _review(case_id: int, config: Path | None, accept: bool) -> None:
    cfg = load(config)
    from appliance.errors import NotFoundError, StoreError

    store = open_store(cfg)
    try:
        case = store.review_case(case_id, accept)
    except (NotFoundError, StoreError) as exc:
        raise fail(str(exc)) from exc
    finally:
        store.close()
    typer.echo(f"case {case.id} ({case.task}, {case.split.value}): {case.state.value}")


@app.command("accept")
def accept(
    case_id: Annotated[int, typer.Argument(metavar="ID", help="Case id (appliance cases review).")],
    config: ConfigOption = None,
) -> None:
    """Accept a pending case: it becomes active (the series' active case of the same task,
    if any, becomes superseded)."""
    _review(case_id, config, True)


@app.command("reject")
def reject(
    case_id: Annotated[int, typer.Argument(metavar="ID", help="Case id (appliance cases review).")],
    config: ConfigOption = None,
) -> None:
    """Reject a pending case: it is used for nothing (its files go with retention)."""
    _review(case_id, config, False)
