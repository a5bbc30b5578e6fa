"""``appliance federate simulate``: the federated benchmark on simulated hospitals.

For each task and seed of a :class:`~appliance.federation.simulation.config.SimConfig`:

0. a task with ``initial`` (fine-tuning) has its bundle's weights, checked against the
   network its card describes (:func:`appliance.federation.initial.trained_state`; a
   two-stage model: its refiner's), written once under the work dir; every method
   starts from them, ``pretrained`` scores them untrained;
1. the simulated sites' phantom cases are drawn exactly as their ClientApps draw them
   (:func:`appliance.federation.settings.simulated_node_config` +
   :func:`appliance.federation.site_data.phantom_site_cases`);
2. the baselines (``local``, ``centralised``) train in-process
   (:mod:`appliance.federation.simulation.baselines`), in the precision the sites'
   training decides (:func:`models.precision.training_precision`, ``auto``);
3. each federated strategy runs as a real Flower run: a ``flower-superlink
   --simulation`` started here, the production ServerApp and ClientApp submitted with
   ``flwr run``, one virtual SuperNode per site on Flower's simulation runtime (Ray);
4. every site's final weights (what the site would turn into a candidate model: global
   weights, for fedbn with the site's own normalisation, for gossip its own model) are
   scored on that site's held-out cases (:func:`appliance.federation.scoring.score_site`)
   through the inference the site would deploy: the network, or for a two-stage initial
   model the bundle's locator with the site's fine-tuned refiner
   (:func:`models.cascade.segment_cascade`; the locator's result per case is computed
   once, it is never trained). One scoring for every method.

``evaluate_rounds = false`` runs the ServerApp with ``evaluate`` off (no per-round
evaluate phase at the ClientApps) and the baselines without their per-session scoring.

Each finished (task, seed, method) is kept as JSON under the work dir, so an interrupted
benchmark resumes where it stopped (``--resume``). The report
(:mod:`appliance.federation.simulation.report`) is written from those records.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from appliance.config import StrategyName
from appliance.errors import FederationError
from appliance.federation import runner
from appliance.federation.outputs import site_weights
from appliance.federation.params import load_into
from appliance.federation.scoring import Segmenter, network_segmenter, score_site
from appliance.federation.settings import RunSettings, simulated_node_config
from appliance.federation.simulation.baselines import (
    BaselineResult,
    SiteData,
    run_centralised,
    run_local,
)
from appliance.federation.simulation.config import InitialModel, Method, SimConfig
from appliance.federation.site_data import held_out_count, phantom_site_cases
from appliance.federation.site_settings import SiteSettings
from appliance.federation.site_state import load_state, save_state

Log = Callable[[str], None]


class SimulationLink:
    """A ``flower-superlink --simulation`` on loopback that runs one submitted run at a
    time on ``num_supernodes`` virtual SuperNodes; stopped by PID on :meth:`close`."""

    def __init__(self, workdir: Path, config: SimConfig) -> None:
        self.workdir = workdir
        self.config = config
        self.flwr_home = workdir / "flwr"
        port = runner.free_port()
        self.process = runner.start_superlink(
            workdir / "superlink", host="127.0.0.1", port=port, tls=None, simulation=True
        )
        try:
            runner.wait_listening("127.0.0.1", port, self.process)
            runner.write_cli_config(self.flwr_home, f"127.0.0.1:{port}", None)
            self.app_dir = runner.write_app(workdir / "app")
        except BaseException:
            self.process.stop()
            raise

    def federation_config(self) -> dict[str, Any]:
        c = self.config
        gpu = c.device == "cuda"
        return {
            "num-supernodes": len(c.sites),
            "client-resources-num-cpus": 1,
            "client-resources-num-gpus": (1.0 / c.workers) if gpu else 0.0,
            "init-args-num-cpus": c.workers,
            "init-args-num-gpus": 1 if gpu else 0,
        }

    def run(self, settings: RunSettings) -> dict[str, Any]:
        run_id = runner.submit_run(
            self.flwr_home, self.app_dir, settings, federation_config=self.federation_config()
        )
        progress = runner.wait_run(
            Path(settings.output_dir),
            run_id,
            timeout=settings.timeout_s,
            flwr_home=self.flwr_home,
            watch=[self.process],
        )
        if progress.get("status") != "finished":
            raise FederationError(
                f"{settings.strategy} run {run_id} failed: {progress.get('error')}\n"
                f"{self.process.tail(2000)}"
            )
        return progress

    def close(self) -> None:
        self.process.stop()


@dataclass(frozen=True, slots=True)
class SimulatedSite:
    data: SiteData
    #: held-out cases with their lesion maps (for small-lesion metrics)
    scored: tuple[tuple[Any, np.ndarray], ...]
    train_bytes: int


def base_settings(
    config: SimConfig,
    task: str,
    seed: int,
    timeout_s: float,
    phantom_cache: Path | None = None,
    initial_weights: Path | None = None,
) -> RunSettings:
    """The run settings of (task, seed): the config's budget and network, or for a task
    with ``initial`` the network, grid (and refiner margin) of the initial model's card
    and ``initial_weights`` (what :func:`write_initial` wrote)."""
    setup = config.task_setup[task]
    settings = RunSettings(
        rounds=config.rounds,
        min_sites=len(config.sites),
        task=task,
        local_steps=config.local_steps,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=seed,
        net_filters=config.filters,
        net_res_units=config.res_units,
        net_norm=config.norm,
        patch_size=setup.patch_size,
        target_spacing=setup.target_spacing_mm,
        prox_mu=config.prox_mu,
        timeout_s=timeout_s,
        sim_sites=config.sim_sites(),
        sim_threads=config.threads_per_site,
        sim_phantom_cache=str(phantom_cache) if phantom_cache is not None else "",
        evaluate=config.evaluate_rounds,
        round_sites=config.round_sites,
        round_fraction=config.round_fraction,
        sim_phantom_mm=config.phantom_grid_mm,
    )
    if setup.initial is not None:
        card = RunSettings.from_config({"task": task, **setup.initial.run_config})
        settings = replace(
            settings,
            net_class=card.net_class,
            net_filters=card.net_filters,
            net_res_units=card.net_res_units,
            net_norm=card.net_norm,
            patch_size=card.patch_size,
            target_spacing=card.target_spacing,
            refiner_margin=card.refiner_margin,
            initial_weights=str(initial_weights) if initial_weights is not None else "",
        )
    settings.validate()
    return settings


def write_initial(task: str, initial: InitialModel, workdir: Path) -> Path:
    """The weights a task's runs start from (the bundle's, verified; a two-stage model's
    refiner entries), as the ServerApp reads ``initial-weights``."""
    from appliance.federation.initial import trained_state
    from models.errors import ModelsError
    from models.registry import ModelRegistry

    directory = initial.bundle_dir
    registry = ModelRegistry(directory.parent.parent)
    try:
        bundle = registry.get(directory.parent.name, directory.name)
        state = registry.load_state_dict(bundle)
    except ModelsError as exc:
        raise FederationError(f"task.{task}.initial: {exc}") from exc
    _, weights = trained_state(bundle.card, state, task, bundle.ref)
    path = workdir / "initial" / f"{task}-{bundle.card.version}.pt"
    save_state(path, {k: v.detach().cpu().numpy() for k, v in weights.items()})
    return path


def simulated_sites(settings: RunSettings) -> list[SimulatedSite]:
    """The sites of ``settings.sim_sites`` with the cases their ClientApps will load."""
    spec = settings.task_spec()
    out = []
    for index in range(len(settings.sim_sites.split(","))):
        site = SiteSettings.from_config(simulated_node_config(settings, index))
        phantoms = phantom_site_cases(site, spec.modality)
        split = len(phantoms) - held_out_count(site)
        train = tuple(p.case for p in phantoms[:split])
        held = phantoms[split:]
        out.append(
            SimulatedSite(
                data=SiteData(site.site, train, tuple(p.case for p in held)),
                scored=tuple((p.case, p.lesion_map) for p in held),
                train_bytes=sum(int(c.image.nbytes) + int(c.labels.nbytes) for c in train),
            )
        )
    return out


def config_fingerprint(config: SimConfig, task: str, seed: int) -> str:
    payload = dict(config.to_dict())
    payload.pop("seeds")
    payload.pop("methods")
    payload.pop("description")
    payload.pop("name")
    payload["task_run"] = [task, seed]
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _history_from_progress(progress: Mapping[str, Any]) -> list[dict[str, Any]]:
    out = []
    for entry in progress.get("history", []):
        if entry.get("phase") != "evaluate":
            continue
        sites = {
            name: float(m["dice"])
            for name, m in (entry.get("sites") or {}).items()
            if isinstance(m, Mapping) and float(m.get("dice", -1.0)) >= 0
        }
        out.append({"round": int(entry["round"]), "sites": sites})
    return out


def _bytes_from_progress(progress: Mapping[str, Any], key: str) -> dict[str, int]:
    totals: dict[str, int] = {}
    for entry in progress.get("history", []):
        for name, metrics in (entry.get("sites") or {}).items():
            if isinstance(metrics, Mapping):
                totals[name] = totals.get(name, 0) + int(metrics.get(key, 0))
    return totals


class SiteScorer:
    """Scores weights on the simulated sites the way each would deploy them: the run's
    network on the run's grid, or (a two-stage initial model) the bundle's locator, as
    shipped, followed by the weights as its refiner on the whole image. The locator's
    result on a held-out case does not depend on the method, so it is kept per case."""

    def __init__(self, settings: RunSettings, initial: InitialModel | None, device: str) -> None:
        from models.networks import build_network

        self.settings = settings
        self.device = device
        self.spec = settings.task_spec()
        self.model = build_network(self.spec, settings.network_config())
        self.cascade: Any = None
        self.card: Any = None
        self._located: dict[tuple[str, int], Any] = {}
        if initial is not None and initial.two_stage:
            from models.registry import ModelRegistry

            directory = initial.bundle_dir
            registry = ModelRegistry(directory.parent.parent)
            bundle = registry.get(directory.parent.name, directory.name)
            self.card = bundle.card
            self.cascade = registry.load_network(bundle, device)

    def _segmenter(self, site: str, weights: Mapping[str, Any]) -> Segmenter:
        if self.cascade is None:
            load_into(self.model, weights)
            return network_segmenter(self.model, self.spec, self.device)
        from appliance.flow.segmenting import task_spec_for
        from models.cascade import locate, segment_cascade

        load_into(self.cascade.refiner, weights)
        spec = task_spec_for(self.settings.task, self.card.preprocessing)
        refiner = self.card.refiner
        counter = iter(range(1_000_000))

        def run(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
            key = (site, next(counter))
            located = self._located.get(key)
            if located is None:
                located = locate(self.cascade, spec, image, affine, device=self.device)
                self._located[key] = located
            result = segment_cascade(
                self.cascade, spec, refiner, image, affine, device=self.device, located=located
            )
            return np.asarray(result.mask)

        return run

    def score(
        self, sites: Sequence[SimulatedSite], weights: Mapping[str, Any]
    ) -> dict[str, dict[str, Any]]:
        from models.tasks import get_task

        labels = get_task(self.settings.task)
        return {
            site.data.name: score_site(
                self._segmenter(site.data.name, weights[site.data.name]), labels, site.scored
            ).to_dict()
            for site in sites
        }


def run_method(
    config: SimConfig,
    method: Method,
    settings: RunSettings,
    sites: Sequence[SimulatedSite],
    workdir: Path,
    link: Callable[[], SimulationLink],
    log: Log,
    scorer: SiteScorer | None = None,
) -> dict[str, Any]:
    """Train one method on the simulated sites and score it; the JSON-ready record."""
    scorer = scorer or SiteScorer(settings, config.task_setup[settings.task].initial, "cpu")
    start = time.perf_counter()
    data = [s.data for s in sites]
    names = [s.data.name for s in sites]
    extra: dict[str, Any] = {}
    weights: Mapping[str, Any]
    history: list[dict[str, Any]]
    if method is Method.PRETRAINED:  # the initial weights, untrained: nothing sent
        if not settings.initial_weights:
            raise FederationError(f"pretrained: task {settings.task} has no initial weights")
        initial = load_state(Path(settings.initial_weights))
        weights = dict.fromkeys(names, initial)
        history = []
        sent, received = dict.fromkeys(names, 0), dict.fromkeys(names, 0)
    elif method is Method.LOCAL or method is Method.CENTRALISED:
        train = run_local if method is Method.LOCAL else run_centralised
        baseline: BaselineResult = train(settings, data, device=config.device, log=log)
        weights = baseline.weights
        history = baseline.history
        if method is Method.CENTRALISED:  # pooling sends each site's images and labels
            sent = {s.data.name: s.train_bytes for s in sites}
        else:
            sent = dict.fromkeys(names, 0)
        received = dict.fromkeys(names, 0)
    else:
        run_dir = workdir / "runs" / settings.task / f"seed{settings.seed}" / method.value
        run = replace(
            settings,
            strategy=StrategyName(method.value),
            output_dir=str(run_dir / "server"),
            sim_state_root=str(run_dir / "sites"),
        )
        progress = link().run(run)
        run_id = str(progress["run_id"])
        weights = {n: site_weights(run_dir / "sites" / n, run_id) for n in names}
        history = _history_from_progress(progress)
        sent = _bytes_from_progress(progress, "bytes-sent")
        received = _bytes_from_progress(progress, "bytes-received")
        extra = {"run_id": run_id, **(progress.get("result") or {})}
        extra.pop("directory", None)
    train_s = time.perf_counter() - start
    scores = scorer.score(sites, weights)
    return {
        "task": settings.task,
        "seed": settings.seed,
        "method": method.value,
        "sites": scores,
        "history": history,
        "bytes_sent": {n: int(sent.get(n, 0)) for n in names},
        "bytes_received": {n: int(received.get(n, 0)) for n in names},
        "wall_s": round(train_s, 1),
        "score_s": round(time.perf_counter() - start - train_s, 1),
        "extra": {k: v for k, v in extra.items() if isinstance(v, str | int | float | list)},
    }


def simulate(
    config: SimConfig,
    workdir: Path,
    *,
    resume: bool = False,
    log: Log = print,
) -> list[dict[str, Any]]:
    """Run every (task, seed, method) of ``config``; returns the records (also kept as
    ``<workdir>/records/<task>-seed<seed>-<method>.json``)."""
    if config.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise FederationError(
                f"device: config {config.name!r} needs a CUDA GPU and none is visible "
                "(use --config quick on CPU)"
            )
    workdir.mkdir(parents=True, exist_ok=True)
    records_dir = workdir / "records"
    records_dir.mkdir(exist_ok=True)
    link: SimulationLink | None = None

    def get_link() -> SimulationLink:
        nonlocal link
        if link is None:
            log("starting flower-superlink --simulation")
            link = SimulationLink(workdir / "flower", config)
        return link

    import torch

    from models.precision import training_precision

    precision = training_precision(torch.device(config.device)).describe()
    log(f"training precision: {precision}")
    records: list[dict[str, Any]] = []
    try:
        for task in config.tasks:
            initial = config.task_setup[task].initial
            weights_path = write_initial(task, initial, workdir) if initial else None
            if initial is not None:
                log(f"[{task}] every method starts from {initial.ref} ({initial.source})")
            for seed in config.seeds:
                settings = base_settings(
                    config, task, seed, config.timeout_s, workdir / "phantoms", weights_path
                )
                fingerprint = config_fingerprint(config, task, seed)
                sites: list[SimulatedSite] | None = None
                scorer: SiteScorer | None = None
                for method in config.methods:
                    path = records_dir / f"{task}-seed{seed}-{method.value}.json"
                    if resume and path.is_file():
                        kept = json.loads(path.read_text(encoding="utf-8"))
                        if kept.get("fingerprint") == fingerprint:
                            log(f"[{task} seed {seed}] {method}: kept from an earlier run")
                            records.append(kept)
                            continue
                    if sites is None or scorer is None:
                        sites = simulated_sites(settings)
                        scorer = SiteScorer(settings, initial, config.device)
                    log(f"[{task} seed {seed}] {method} ...")
                    record = run_method(
                        config, method, settings, sites, workdir, get_link, log, scorer
                    )
                    record["fingerprint"] = fingerprint
                    record["precision"] = precision
                    path.write_text(json.dumps(record, indent=1, sort_keys=True), encoding="utf-8")
                    mean = np.mean([s["dice_mean"] for s in record["sites"].values()])
                    log(
                        f"[{task} seed {seed}] {method}: mean Dice {mean:.3f} "
                        f"({record['wall_s']:.0f} s training, {record['score_s']:.0f} s scoring)"
                    )
                    records.append(record)
    finally:
        if link is not None:
            link.close()
    return records
