"""``appliance models list|show|import|validate|activate|rollback``: the site's model versions.

A model version is a registry bundle (weights + model card with sha256) under
``models.root``; its lifecycle state (candidate, validated, active, rejected, retired) is
recorded in the store, with exactly one active version per task. ``validate`` runs the
validation gate (:mod:`appliance.site_models.gate`) on the site's held-out annotated cases.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated

import typer

from appliance.cli.common import ConfigOption, fail, load, open_store, use_inference_threads

app = typer.Typer(
    help="Model versions per task: import, activate, roll back.", no_args_is_help=True
)


def _when(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat(timespec="seconds")


@app.command("list")
def list_models(
    config: ConfigOption = None,
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List registered model versions and their states."""
    cfg = load(config)
    store = open_store(cfg)
    try:
        records = store.list_models(task)
    finally:
        store.close()
    if as_json:
        typer.echo(
            json.dumps(
                [
                    {
                        "task": r.task,
                        "version": r.version,
                        "state": r.state.value,
                        "name": r.name,
                        "weights_sha256": r.weights_sha256,
                        "federated_round": r.federated_round,
                        "origin": r.origin,
                        "path": str(r.path),
                        "registered_at": _when(r.registered_at),
                    }
                    for r in records
                ],
                indent=2,
            )
        )
        return
    if not records:
        typer.echo("no models registered (appliance models import PATH --task TASK)")
        return
    typer.echo(f"{'TASK':<12} {'VERSION':<20} {'STATE':<10} {'SHA256':<12}  {'ORIGIN':<16} NAME")
    for r in records:
        typer.echo(
            f"{r.task:<12} {r.version:<20} {r.state.value:<10} {r.weights_sha256[:12]:<12}  "
            f"{r.origin:<16} {r.name}"
        )


@app.command("show")
def show(
    task: Annotated[str, typer.Argument(help="Task, e.g. liver_ct.")],
    version: Annotated[str, typer.Argument(help="Model version, e.g. 1.0.0.")],
    config: ConfigOption = None,
) -> None:
    """Show a model version: state, activation history and its model card."""
    cfg = load(config)
    from appliance.errors import NotFoundError
    from models.model_card import ModelCard, ModelCardError
    from models.registry import CARD_FILE

    store = open_store(cfg)
    try:
        record = store.get_model(task, version)
        history = [h for h in store.activation_history(task) if h.version == version]
    except NotFoundError as exc:
        raise fail(str(exc)) from exc
    finally:
        store.close()
    typer.echo(f"{record.task}/{record.version}: {record.state.value} ({record.origin})")
    typer.echo(f"path: {record.path}")
    typer.echo(f"weights sha256: {record.weights_sha256}")
    for h in history:
        forced = " (forced past the validation gate)" if h.forced else ""
        typer.echo(f"{h.action}d at {_when(h.at)}{forced}, replacing {h.previous_version or '-'}")
    try:
        card = ModelCard.from_json((record.path / CARD_FILE).read_bytes())
    except (OSError, ModelCardError) as exc:
        raise fail(f"cannot read the model card: {exc}") from exc
    from appliance.site_models.gate import latest_reports

    for report in latest_reports(cfg, task):
        if report.get("candidate_version") == version:
            typer.echo(
                f"gate: {report.get('decision')} at {_when(float(str(report['decided_at'])))} "
                f"on {report.get('cases')} held-out case(s): {report.get('reason')}"
            )
    typer.echo("model card:")
    typer.echo(card.to_json())


@app.command("validate")
def validate(
    task: Annotated[str, typer.Argument(help="Task, e.g. liver_ct.")],
    version: Annotated[str, typer.Argument(help="The candidate version to validate.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """Run the validation gate: the candidate against the active model on this site's
    held-out cases. Promoted (made active) only if no label's mean Dice is worse by more
    than models.gate_margin; otherwise rejected. Exit code 0 when promoted, 1 otherwise."""
    cfg = load(config)
    use_inference_threads(cfg)
    from appliance.errors import GateError, NotFoundError, StoreError
    from appliance.site_models.gate import GateDecision, load_held_out, run_gate

    store = open_store(cfg)
    try:
        held_out = load_held_out(store, task)
        for reason in held_out.skipped:
            typer.echo(f"skipped: {reason}", err=True)
        if held_out.skipped:
            typer.echo(f"{len(held_out.skipped)} held-out case(s) could not be loaded", err=True)
        report = run_gate(store, cfg, task, version, held_out.cases)
    except (NotFoundError, StoreError, GateError) as exc:
        raise fail(str(exc)) from exc
    finally:
        store.close()
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        typer.echo(report.format_text())
    if report.decision is not GateDecision.PROMOTED:
        raise typer.Exit(1)


@app.command("import")
def import_model(
    path: Annotated[
        Path,
        typer.Argument(
            help="A MONAI bundle folder (configs/metadata.json, configs/inference.json, "
            "models/model.pt) or a registry bundle folder (model_card.json + weights)."
        ),
    ],
    task: Annotated[str, typer.Option("--task", help="Task the model is for, e.g. liver_ct.")],
    version: Annotated[
        str | None,
        typer.Option(help="Version to register (default: from the bundle's metadata/card)."),
    ] = None,
    label_map: Annotated[
        str | None,
        typer.Option(
            "--label-map",
            help="Which MONAI-bundle output channel is which task label, overriding the "
            "bundle's channel_def: CHANNEL=LABEL[,...], LABEL a name or index "
            '(e.g. "5=liver" or "5=1,6=2").',
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Import a model as a CANDIDATE (not used until activated)."""
    from models.channel_map import parse_label_map
    from models.errors import ChannelMapError

    try:
        overrides = parse_label_map(label_map) if label_map is not None else None
    except ChannelMapError as exc:
        raise fail(str(exc), code=2) from exc
    cfg = load(config)
    from appliance.errors import ModelImportError, StoreError
    from appliance.site_models.registry import import_bundle, registry_for

    store = open_store(cfg)
    try:
        record = import_bundle(store, cfg, path, task=task, version=version, label_map=overrides)
    except (ModelImportError, StoreError) as exc:
        raise fail(str(exc)) from exc
    finally:
        store.close()
    card = registry_for(cfg).get(record.task, record.version).card
    missing = card.source.get("missing_labels") or ()
    if missing:
        typer.echo(
            f"warning: {record.task}/{record.version} has no output channel for "
            f"{', '.join(missing)}: its results will never contain "
            f"{' or '.join(missing)} segments",
            err=True,
        )
    typer.echo(
        f"imported {record.task}/{record.version} (sha256 {record.weights_sha256[:12]}) as a "
        "candidate; activate it with appliance models activate "
        f"{record.task} {record.version} --force"
    )


@app.command("activate")
def activate(
    task: Annotated[str, typer.Argument(help="Task, e.g. liver_ct.")],
    version: Annotated[str, typer.Argument(help="Model version to make active.")],
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Activate a candidate without the validation gate on local held-out cases "
            "(appliance models validate); recorded as forced in the model's history.",
        ),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Make a validated (or retired) version the active model of its task. Its weights
    are test-loaded first (one forward pass); a model that does not load is refused."""
    cfg = load(config)
    from appliance.errors import ModelLoadError, NotFoundError, StoreError
    from appliance.site_models.registry import check_loadable

    store = open_store(cfg)
    try:
        previous = store.active_model(task)
        check_loadable(store.get_model(task, version))
        record = store.activate(task, version, force=force)
    except ModelLoadError as exc:
        raise fail(f"refusing to activate: {exc}") from exc
    except (NotFoundError, StoreError) as exc:
        raise fail(str(exc)) from exc
    finally:
        store.close()
    was = f" (was {previous.version})" if previous else ""
    typer.echo(f"{record.task}: {record.version} is active{was}")


@app.command("rollback")
def rollback(
    task: Annotated[str, typer.Argument(help="Task, e.g. liver_ct.")],
    config: ConfigOption = None,
) -> None:
    """Re-activate the model that was active before the current one."""
    cfg = load(config)
    from appliance.errors import NotFoundError, StoreError

    store = open_store(cfg)
    try:
        previous = store.active_model(task)
        record = store.rollback(task)
    except (NotFoundError, StoreError) as exc:
        raise fail(str(exc)) from exc
    finally:
        store.close()
    was = f" (was {previous.version})" if previous else ""
    typer.echo(f"{task}: rolled back to {record.version}{was}")
