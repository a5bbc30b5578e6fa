"""``appliance federate``: federated fine-tuning on Flower's deployment engine.

- ``start`` (coordinator): runs the SuperLink, submits one run of the ServerApp with the
  chosen strategy (starting from the active model of the task unless
  ``--initial-weights``/``--fresh``), shows its progress round by round and waits.
- ``status`` (coordinator): the latest (or a given) run: round, sites, metrics per round.
- ``join`` (site): runs this appliance's SuperNode, connected to the coordinator, and
  stays until a run has ended; the run's weights become a candidate model and the
  validation gate decides (:mod:`appliance.federation.site_join`, shared with ``serve``).

Settings come from the config's ``[federation]`` section; options override them.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from appliance.cli.common import ConfigOption, fail, load

if TYPE_CHECKING:
    from appliance.config import AppConfig

app = typer.Typer(help="Federated fine-tuning with other sites (Flower).", no_args_is_help=True)


def _tls(config: AppConfig, *, server: bool) -> Any:
    from appliance.federation.runner import Tls

    fed = config.federation
    if fed.insecure:
        return None
    if fed.tls_ca_file is None:
        raise fail("federation.tls_ca_file is required unless federation.insecure = true", 2)
    if server and (fed.tls_cert_file is None or fed.tls_key_file is None):
        raise fail("the coordinator needs federation.tls_cert_file and tls_key_file", 2)
    return Tls(ca=fed.tls_ca_file, cert=fed.tls_cert_file, key=fed.tls_key_file)


def _print_round(entry: dict[str, Any]) -> None:
    sites = entry.get("sites", {})
    parts = []
    for site, metrics in sorted(sites.items()):
        keys = ("loss", "dice", "steps", "step-scale-max", "refused", "dropped")
        shown = {k: metrics[k] for k in keys if k in metrics}
        parts.append(f"{site} {json.dumps(shown)}")
    aggregate = entry.get("aggregate")
    tail = f" -> {json.dumps(aggregate)}" if aggregate else ""
    typer.echo(f"  round {entry['round']} {entry['phase']}: {'; '.join(parts)}{tail}")


def _parse_set(items: list[str]) -> dict[str, Any]:
    import tomllib

    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise fail(f"--set needs KEY=VALUE, got {item!r}", 2)
        try:
            out[key.strip()] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = text
    return out


_NETWORK_KEYS = ("net-class", "net-filters", "net-res-units", "net-norm")
#: what a network key means when the active model's settings leave it out
_NETWORK_DEFAULTS = {"net-class": "unet"}


def _from_active(
    config: AppConfig, task: str, directory: Path, overrides: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    """Run settings that start from this site's active model of ``task`` (its weights,
    architecture and pre-processing), or none (a fresh network) when it has none."""
    from appliance.errors import FederationError
    from appliance.federation.initial import initial_from_active
    from appliance.store import Store

    if not config.storage.database.is_file():
        return {}, f"a freshly initialised network (no store here, so no active {task} model)"
    store = Store(config.storage.database)
    try:
        initial = initial_from_active(store, config, task, directory)
    except FederationError as exc:
        raise fail(str(exc), 2) from exc
    finally:
        store.close()
    if initial is None:
        return {}, f"a freshly initialised network (no active {task} model here)"
    for key in _NETWORK_KEYS:
        default = _NETWORK_DEFAULTS.get(key, "")
        given = str(overrides.get(key, "")).replace(" ", "") or default
        own = str(initial.run_config.get(key, "")) or default
        if key in overrides and given != own:
            raise fail(
                f"--set {key}={overrides[key]}: the run starts from {initial.describe()}, "
                f"whose {key} is {own}; use --fresh or --initial-weights "
                "to train another network",
                2,
            )
    return dict(initial.run_config), initial.describe()


@app.command("start")
def start(
    config_path: ConfigOption = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            help="fedavg, fedprox, fedbn, cwt, swt, gossip, fedgs, fedmedian, fedtrimmedavg, krum",
        ),
    ] = None,
    rounds: Annotated[
        int | None, typer.Option("--rounds", min=1, help="Rounds (cwt: cycles).")
    ] = None,
    min_sites: Annotated[int | None, typer.Option("--min-sites", min=1)] = None,
    local_steps: Annotated[int | None, typer.Option("--local-steps", min=1)] = None,
    site_order: Annotated[
        str, typer.Option("--site-order", help="cwt/swt: site names, comma-separated.")
    ] = "",
    initial_weights: Annotated[
        Path | None,
        typer.Option(
            "--initial-weights",
            help="A state dict (.pt) to start from (default: this site's active model of "
            "the task, with its architecture).",
        ),
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Start from a freshly initialised (seeded) network, not the active model.",
        ),
    ] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the run.")] = 24
    * 3600.0,
    extra: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Any run setting as KEY=VALUE (e.g. --set server-momentum=0.9 "
            "--set patch-size=64,64,64); see docs/federation.md.",
        ),
    ] = None,
) -> None:
    """Coordinator: run the SuperLink and one federated run; wait until it ends."""
    from appliance.errors import FederationError
    from appliance.federation import runner
    from appliance.federation.progress import read_progress
    from appliance.federation.settings import RunSettings

    config = load(config_path)
    fed = config.federation
    state = fed.state_root(config.storage)
    tls = _tls(config, server=True)
    overrides = _parse_set(extra or [])
    if initial_weights is not None and fresh:
        raise fail("--initial-weights and --fresh exclude each other", 2)
    task = str(overrides.get("task", fed.task))
    if initial_weights is not None:
        start_from: dict[str, Any] = {"initial-weights": str(initial_weights.resolve())}
        origin = f"{initial_weights} (--initial-weights)"
    elif fresh:
        start_from, origin = {}, "a freshly initialised network (--fresh)"
    else:
        start_from, origin = _from_active(config, task, state / "coordinator", overrides)
    try:
        settings = RunSettings.from_config(
            {
                "strategy": strategy or fed.strategy,
                "num-rounds": rounds or fed.rounds,
                "min-sites": min_sites or fed.min_sites,
                "task": fed.task,
                "local-steps": local_steps or fed.local_steps,
                "batch-size": fed.batch_size,
                "lr": fed.lr,
                "prox-mu": fed.prox_mu,
                "site-order": site_order,
                "output-dir": str(state / "coordinator"),
                "timeout-s": timeout,
                **start_from,
                **overrides,
            }
        )
    except FederationError as exc:
        raise fail(str(exc), 2) from exc
    typer.echo(f"initial weights: {origin}")
    coordinator = state / "coordinator"
    link = runner.start_superlink(
        coordinator,
        host=fed.bind,
        port=fed.coordinator_port,
        tls=tls,
        supernode_auth=bool(fed.authorized_keys),
    )
    try:
        connect = "127.0.0.1" if fed.bind in ("0.0.0.0", "::") else fed.bind
        runner.wait_listening(connect, fed.coordinator_port, link)
        flwr_home = coordinator / "flwr"
        address = f"{connect}:{fed.coordinator_port}" if tls is None else fed.coordinator
        runner.write_cli_config(flwr_home, address, tls)
        for key in fed.authorized_keys:
            runner.register_supernode(flwr_home, key)
        app_dir = runner.write_app(coordinator / "app")
        run_id = runner.submit_run(flwr_home, app_dir, settings)
        typer.echo(
            f"run {run_id}: {settings.strategy}, rounds: {settings.rounds}, "
            f"waiting for {settings.min_sites} sites"
        )
        shown = 0
        deadline = time.monotonic() + timeout
        while True:
            progress = read_progress(Path(settings.output_dir), run_id)
            if progress is not None:
                for entry in progress["history"][shown:]:
                    _print_round(entry)
                shown = len(progress["history"])
                if progress["status"] != "running":
                    break
            if not link.alive():
                raise FederationError(f"the SuperLink stopped:\n{link.tail()}")
            if time.monotonic() > deadline:
                raise FederationError(f"run {run_id} did not finish within {timeout:g} s")
            time.sleep(1.0)
    except FederationError as exc:
        raise fail(str(exc)) from exc
    finally:
        link.stop()
    if progress["status"] != "finished":
        raise fail(f"run {run_id} failed: {progress.get('error')}")
    result = progress.get("result") or {}
    typer.echo(f"run {run_id} finished; results in {result.get('directory')}")


@app.command("status")
def status(
    config_path: ConfigOption = None,
    run_id: Annotated[str | None, typer.Option("--run-id")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Coordinator: the latest run's round, sites and metrics per round."""
    from appliance.federation.progress import read_progress

    config = load(config_path)
    out = config.federation.state_root(config.storage) / "coordinator"
    progress = read_progress(out, run_id)
    if progress is None:
        raise fail("no federated run recorded here" if run_id is None else f"no run {run_id}")
    if as_json:
        typer.echo(json.dumps(progress, indent=1, sort_keys=True))
        return
    rounds_done = max((e["round"] for e in progress["history"] if e["phase"] == "train"), default=0)
    typer.echo(
        f"run {progress['run_id']}: {progress['strategy']} {progress['status']}, "
        f"round {rounds_done}/{progress['rounds']}"
    )
    sites = ", ".join(f"{s['site']} ({s['cases']} cases)" for s in progress["sites"])
    typer.echo(f"sites: {sites or 'none yet'}")
    for entry in progress["history"]:
        _print_round(entry)
    result = progress.get("result") or {}
    if result.get("contributors"):
        typer.echo(f"last round's updates from: {', '.join(result['contributors'])}")
    for site, why in sorted((result.get("not_handed_out") or {}).items()):
        typer.echo(f"final model not handed to {site}: {why}")
    if progress.get("error"):
        typer.echo(f"error: {progress['error']}")


@app.command("join")
def join(
    config_path: ConfigOption = None,
    stay: Annotated[bool, typer.Option("--stay", help="Keep serving runs until stopped.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for a run.")] = 24
    * 3600.0,
    no_validate: Annotated[
        bool,
        typer.Option(
            "--no-validate",
            help="Register the run's weights as a candidate but do not run the validation "
            "gate (overrides federation.auto_validate).",
        ),
    ] = False,
) -> None:
    """Site: run this appliance's SuperNode and stay until a run has ended here; its
    weights become a candidate model, validated by the gate (federation.auto_validate)."""
    import dataclasses
    import threading

    from appliance.errors import FederationError
    from appliance.federation import site_join

    config = load(config_path)
    if no_validate:
        config = dataclasses.replace(
            config, federation=dataclasses.replace(config.federation, auto_validate=False)
        )
    _tls(config, server=False)  # a missing CA is a usage error (exit 2)
    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    try:
        outcome = site_join.join(config, stop=stop, timeout=timeout, stay=stay, say=typer.echo)
    except FederationError as exc:
        raise fail(str(exc)) from exc
    except KeyboardInterrupt:
        return
    if outcome.errors:
        raise typer.Exit(1)


def _csv(text: str) -> list[str]:
    return [t for t in text.replace(" ", "").split(",") if t]


@app.command("simulate")
def simulate(
    bench: Annotated[
        str,
        typer.Option(
            "--config",
            help="Benchmark config: quick (CPU), full (GPU), or a .toml path "
            "(benchmarks/federation/).",
        ),
    ] = "quick",
    out: Annotated[
        Path, typer.Option("--out", help="Where the markdown, JSON and PNGs go.")
    ] = Path("docs/results"),
    workdir: Annotated[
        Path | None,
        typer.Option("--workdir", help="Runs and per-run records (default: a temp dir)."),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Keep finished runs of the same config in --workdir."),
    ] = False,
    seeds: Annotated[str, typer.Option("--seeds", help="Override: e.g. 0,1.")] = "",
    tasks: Annotated[str, typer.Option("--tasks", help="Override: e.g. liver_ct.")] = "",
    methods: Annotated[str, typer.Option("--methods", help="Override: e.g. local,fedavg.")] = "",
) -> None:
    """Benchmark: pretrained (a task's initial model untrained), local-only, centralised
    and every federated strategy on simulated hospitals (phantoms with per-site domain
    shift), on Flower's simulation runtime with the production ServerApp/ClientApp.
    Writes docs/results/federation_<name>.*"""
    import tempfile
    from dataclasses import replace

    from appliance.errors import FederationError
    from appliance.federation.simulation.config import Method, load_config
    from appliance.federation.simulation.report import write_report
    from appliance.federation.simulation.run import simulate as run_benchmark

    try:
        config = load_config(bench)
        if seeds:
            config = replace(config, seeds=tuple(int(s) for s in _csv(seeds)))
        if tasks:
            unknown = [t for t in _csv(tasks) if t not in config.tasks]
            if unknown:
                raise FederationError(f"--tasks: {', '.join(unknown)} not in the config")
            config = replace(config, tasks=tuple(_csv(tasks)))
        if methods:
            config = replace(config, methods=tuple(Method(m) for m in _csv(methods)))
    except ValueError as exc:
        raise fail(f"--seeds/--methods: {exc}", 2) from exc
    except FederationError as exc:
        raise fail(str(exc), 2) from exc
    work = workdir or Path(tempfile.gettempdir()) / f"appliance-simulate-{config.name}"
    command = f"appliance federate simulate --config {bench}" + "".join(
        f" --{k} {v}" for k, v in (("seeds", seeds), ("tasks", tasks), ("methods", methods)) if v
    )
    typer.echo(
        f"benchmark {config.name}: {len(config.sites)} sites, tasks {', '.join(config.tasks)}, "
        f"seeds {', '.join(map(str, config.seeds))}, {len(config.methods)} methods; work dir {work}"
    )
    start = time.monotonic()
    try:
        records = run_benchmark(config, work, resume=resume, log=typer.echo)
    except FederationError as exc:
        raise fail(str(exc)) from exc
    wall_s = time.monotonic() - start
    written = write_report(config, records, out, command=command, wall_s=wall_s)
    typer.echo(f"done in {wall_s:.0f} s")
    for path in written.values():
        typer.echo(f"wrote {path}")
