"""The federated benchmark's configuration (``benchmarks/federation/<name>.toml``).

A config names the simulated hospitals (phantom presets of :data:`models.phantoms.
SITE_PRESETS` with their case counts), the tasks, the methods, the seeds and the
training budget. Every site gets the same number of local optimiser steps under every
method: ``rounds x local_steps``. Errors name the file and the key.

Layout::

    name = "quick"
    description = "..."
    device = "cpu"              # or "cuda"
    seeds = [0, 1, 2]
    tasks = ["liver_ct"]
    methods = ["local", "centralised", "fedavg", ...]
    rounds = 6
    local_steps = 20
    batch_size = 2
    lr = 0.002
    prox_mu = 0.01
    workers = 2                 # simulated sites training at once
    threads_per_site = 1        # torch threads of each
    timeout_s = 1800            # per federated run
    evaluate_rounds = true      # score every round (the Dice-against-budget plot); false:
                                # only the final scoring (the ServerApp's ``evaluate``)
    phantom_grid_mm = 0         # > 0: every site's phantoms on this coarse isotropic grid
                                # (same field of view): a cheap budget for many sites
    round_sites = 0             # > 0: that many sites train in each federated round (a
    round_fraction = 1.0        # seeded draw), else this fraction of them; cwt/swt visit
                                # such a draw (docs/federation.md)

    [network]                   # tasks without ``initial``: trained from scratch
    filters = [8, 16, 32]
    res_units = 1
    norm = "batch"

    [task.liver_ct]
    patch_size = [32, 32, 32]
    target_spacing_mm = [3.0, 3.0, 3.0]
    most_shifted_site = "site_b"
    # initial = "shipped"       # fine-tune: "shipped" (the newest shipped bundle of the
    #                           # task, what a fresh appliance activates), a version of
    #                           # models/bundles/<task>/, or a bundle directory

A task with ``initial`` starts every method (``pretrained``, the baselines and every
strategy) from that bundle's weights; its network, patch size and spacing (a two-stage
model: its refiner's, and the margin) come from the bundle's card
(:func:`appliance.federation.initial.card_run_config`), the ``[network]`` table does not
apply to it, and the task's ``patch_size`` / ``target_spacing_mm`` may be left out (given,
they must equal the card's). ``pretrained`` scores the initial weights untrained.

    [[site]]
    preset = "site_a"
    train = 8
    held_out = 2

    n_sites = 32                # and/or generated hospitals (models.site_distribution):
    [generated_sites]           # gen<seed>_001 ... gen<seed>_032, drawn, not listed
    seed = 0                    # which consortium
    held_out = 1                # held-out cases per generated site
    max_train = 8               # training cases: the site's drawn case count minus
                                # held_out, at most this (a fixed budget per site)

With generated sites ``most_shifted_site`` may be left out: it is then the site whose
protocol lies farthest from the reference (:func:`models.site_distribution.shift_score`).
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from appliance.config import ConfigReader, StrategyName
from appliance.errors import FederationError
from appliance.federation.sim_sites import SimSite, parse_sim_sites

#: Where the shipped configs live in a checkout (``--config quick`` is
#: ``<this>/quick.toml``); an installed image sets ``APPLIANCE_BENCHMARK_DIR`` instead.
REPO_CONFIG_DIR = Path(__file__).resolve().parents[3] / "benchmarks" / "federation"


def config_dir() -> Path:
    env = os.environ.get("APPLIANCE_BENCHMARK_DIR", "")
    return Path(env) if env else REPO_CONFIG_DIR


class Method(StrEnum):
    """What the benchmark compares: the initial weights untrained (``pretrained``: needs a
    task ``initial``), two baselines and federated strategies (named as
    :class:`~appliance.config.StrategyName` names them)."""

    PRETRAINED = "pretrained"
    LOCAL = "local"
    CENTRALISED = "centralised"
    FEDAVG = StrategyName.FEDAVG.value
    FEDPROX = StrategyName.FEDPROX.value
    FEDBN = StrategyName.FEDBN.value
    CWT = StrategyName.CWT.value
    SWT = StrategyName.SWT.value
    GOSSIP = StrategyName.GOSSIP.value
    FEDGS = StrategyName.FEDGS.value

    @property
    def federated(self) -> bool:
        return self not in (Method.PRETRAINED, Method.LOCAL, Method.CENTRALISED)

    @property
    def strategy(self) -> StrategyName:
        if not self.federated:
            raise FederationError(f"{self} is a baseline, not a federated strategy")
        return StrategyName(self.value)


#: ``initial = "shipped"``: the newest shipped bundle of the task
SHIPPED = "shipped"


@dataclass(frozen=True, slots=True)
class InitialModel:
    """Where a task's methods start (``[task.<name>] initial``): a model bundle, and the
    run settings its card gives (:func:`appliance.federation.initial.card_run_config`)."""

    #: as the config wrote it ("shipped", a version, a path)
    source: str
    bundle_dir: Path
    #: ``task/version``
    ref: str
    weights_sha256: str
    #: ``net-*``, ``patch-size``, ``target-spacing`` and (a two-stage model) ``refiner-margin``
    run_config: Mapping[str, Any]

    def __post_init__(self) -> None:
        if "patch-size" not in self.run_config or "target-spacing" not in self.run_config:
            raise FederationError(f"{self.ref}: its card records no patch size or spacing")

    @property
    def two_stage(self) -> bool:
        return "refiner-margin" in self.run_config

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "ref": self.ref,
            "weights_sha256": self.weights_sha256,
            "run_config": dict(self.run_config),
        }


@dataclass(frozen=True, slots=True)
class TaskSetup:
    patch_size: tuple[int, int, int]
    target_spacing_mm: tuple[float, float, float]
    #: the site whose scanners differ most from the others (fedbn's target)
    most_shifted_site: str
    #: fine-tuning: the model every method starts from (``None``: from scratch)
    initial: InitialModel | None = None


@dataclass(frozen=True, slots=True)
class SimConfig:
    name: str
    description: str
    device: str
    seeds: tuple[int, ...]
    tasks: tuple[str, ...]
    methods: tuple[Method, ...]
    rounds: int
    local_steps: int
    batch_size: int
    lr: float
    prox_mu: float
    workers: int
    threads_per_site: int
    timeout_s: float
    evaluate_rounds: bool
    filters: tuple[int, ...]
    res_units: int
    norm: str
    task_setup: Mapping[str, TaskSetup]
    sites: tuple[SimSite, ...]
    #: per-round sampling of the federated strategies (RunSettings.round_sample)
    round_sites: int = 0
    round_fraction: float = 1.0
    #: > 0: every site's phantoms on this coarse isotropic grid (mm), same field of view
    phantom_grid_mm: float = 0.0

    @property
    def steps_per_site(self) -> int:
        return self.rounds * self.local_steps

    @property
    def smallest_site(self) -> str:
        return min(self.sites, key=lambda s: (s.train, s.preset)).preset

    def sim_sites(self) -> str:
        return ",".join(s.entry() for s in self.sites)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "device": self.device,
            "seeds": list(self.seeds),
            "tasks": list(self.tasks),
            "methods": [m.value for m in self.methods],
            "rounds": self.rounds,
            "local_steps": self.local_steps,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "prox_mu": self.prox_mu,
            "workers": self.workers,
            "threads_per_site": self.threads_per_site,
            "evaluate_rounds": self.evaluate_rounds,
            "round_sites": self.round_sites,
            "round_fraction": self.round_fraction,
            "phantom_grid_mm": self.phantom_grid_mm,
            "network": {
                "filters": list(self.filters),
                "res_units": self.res_units,
                "norm": self.norm,
            },
            "task": {
                t: {
                    "patch_size": list(s.patch_size),
                    "target_spacing_mm": list(s.target_spacing_mm),
                    "most_shifted_site": s.most_shifted_site,
                }
                | ({"initial": s.initial.to_dict()} if s.initial is not None else {})
                for t, s in self.task_setup.items()
            },
            "sites": [
                {"preset": s.preset, "train": s.train, "held_out": s.held_out} for s in self.sites
            ],
        }


def resolve_config_path(name_or_path: str) -> Path:
    """``quick``/``full`` (shipped configs) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = config_dir() / f"{name_or_path}.toml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in config_dir().glob("*.toml"))) or "none"
        raise FederationError(
            f"--config: no benchmark config {name_or_path!r} (shipped: {shipped}; or a .toml path)"
        )
    return path


def _reader(source: str, data: Mapping[str, Any]) -> ConfigReader:
    """The config reader: the first problem raises ``FederationError("<source>: <key>:
    <what is wrong>")``."""
    return ConfigReader(data, fail=lambda issue: FederationError(f"{source}: {issue}"))


def _positive_int(r: ConfigReader, key: str, default: int | None = None) -> int:
    value = int(r.typed(key, int) if default is None else r.typed(key, int, default))
    if value < 1:
        raise r.fail(key, f"must be >= 1, got {value}")
    return value


def _numbers(r: ConfigReader, key: str, kind: type, count: int) -> tuple[Any, ...]:
    values = r.typed(key, list)
    ok = len(values) == count and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
        for v in values
    )
    if not ok or (kind is int and not all(isinstance(v, int) for v in values)):
        raise r.fail(key, f"must be {count} positive {kind.__name__}s, got {values!r}")
    return tuple(kind(v) for v in values)


def load_config(name_or_path: str) -> SimConfig:
    path = resolve_config_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise FederationError(f"{path}: {exc}") from exc
    return parse_config(data, source=str(path), base_dir=path.parent)


def _csv_numbers(text: str, kind: type) -> tuple[Any, Any, Any]:
    values = [kind(v) for v in str(text).split(",")]
    return (values[0], values[1], values[2])


def resolve_initial(task: str, value: str, base_dir: Path) -> InitialModel:
    """The bundle ``initial = value`` names for ``task``: ``"shipped"`` (the newest shipped
    bundle of the task: the one :func:`appliance.site_models.registry.register_shipped`
    activates on a fresh appliance), a version of ``models/bundles/<task>/`` or a bundle
    directory (``<root>/<task>/<version>``; relative to the config's folder)."""
    from appliance.config import shipped_bundles_dir
    from appliance.federation.initial import card_run_config
    from models.errors import ModelsError
    from models.registry import ModelRegistry

    shipped = ModelRegistry(shipped_bundles_dir())
    try:
        if value == SHIPPED:
            bundle = shipped.latest(task)
            if bundle is None:
                raise FederationError(f"no shipped {task} bundle under {shipped.root}")
        elif "/" in value or value.startswith("."):
            path = Path(value)
            path = path if path.is_absolute() else base_dir / path
            if not path.is_dir():
                raise FederationError(f"no bundle directory {path}")
            bundle = ModelRegistry(path.parent.parent).get(path.parent.name, path.name)
        else:
            bundle = shipped.get(task, value)
    except ModelsError as exc:
        raise FederationError(str(exc)) from exc
    if bundle.card.task != task:
        raise FederationError(f"{bundle.ref} is a model of {bundle.card.task}, not of {task}")
    entries = card_run_config(bundle.card, bundle.ref)
    return InitialModel(
        source=value,
        bundle_dir=bundle.path,
        ref=bundle.ref,
        weights_sha256=bundle.card.weights_sha256,
        run_config=entries,
    )


def _most_shifted(task: str, sites: Sequence[SimSite]) -> str:
    from models.site_distribution import shift_score, site_hospital
    from models.tasks import Modality, get_task

    ct = get_task(task).modality == Modality.CT
    return max(
        sites,
        key=lambda s: (shift_score(site_hospital(s.preset), ct=ct), s.preset),
    ).preset


def _task_setup(
    t: ConfigReader, task: str, sites: Sequence[SimSite], base_dir: Path, generated: bool
) -> TaskSetup:
    shifted = t.typed("most_shifted_site", str, _most_shifted(task, sites) if generated else None)
    if shifted not in {s.preset for s in sites}:
        raise t.fail("most_shifted_site", f"{shifted!r} is not one of the sites")
    source = t.typed("initial", str, "")
    if not source:
        patch = _numbers(t, "patch_size", int, 3)
        spacing = _numbers(t, "target_spacing_mm", float, 3)
        return TaskSetup(
            (patch[0], patch[1], patch[2]), (spacing[0], spacing[1], spacing[2]), shifted
        )
    try:
        initial = resolve_initial(task, source, base_dir)
    except FederationError as exc:
        raise t.fail(
            "initial",
            f"{exc} (allowed: {SHIPPED!r}, a version of models/bundles/{task}/, or a bundle "
            "directory)",
        ) from exc
    card_patch = _csv_numbers(initial.run_config["patch-size"], int)
    card_spacing = _csv_numbers(initial.run_config["target-spacing"], float)
    grid = "its refiner's" if initial.two_stage else "its card's"
    for key, kind, card_value in (
        ("patch_size", int, card_patch),
        ("target_spacing_mm", float, card_spacing),
    ):
        if t.data.get(key) is not None and _numbers(t, key, kind, 3) != card_value:
            raise t.fail(
                key,
                f"{list(_numbers(t, key, kind, 3))} contradicts the initial model "
                f"{initial.ref} ({grid} {key} is {list(card_value)}); leave it out or set "
                "it to that",
            )
    return TaskSetup(card_patch, card_spacing, shifted, initial)


def _generated_entries(r: ConfigReader, n_sites: int) -> list[str]:
    """``preset:train:held_out`` of the ``n_sites`` generated hospitals."""
    from models.site_distribution import generated_names, site_hospital

    table = r.table("generated_sites")
    if not n_sites:
        if table.data:
            raise r.fail("generated_sites", "applies only with n_sites > 0")
        return []
    seed = table.typed("seed", int, 0)
    if not 0 <= seed <= 999_999:
        raise table.fail("seed", f"must be 0 to 999999, got {seed}")
    held_out = _positive_int(table, "held_out", 1)
    max_train = _positive_int(table, "max_train", 8)
    out = []
    for name in generated_names(n_sites, seed):
        cases = site_hospital(name).cases  # >= 2: one held out leaves one to train on
        train = max(1, min(max_train, cases - held_out))
        out.append(f"{name}:{train}:{held_out}")
    return out


def parse_config(
    data: Mapping[str, Any], *, source: str = "config", base_dir: Path | None = None
) -> SimConfig:
    from models.tasks import TaskName

    r = _reader(source, data)
    seeds = r.typed("seeds", list)
    if not seeds or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds
    ):
        raise r.fail("seeds", f"must be a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise r.fail("seeds", "a seed is listed twice")
    tasks = r.typed("tasks", list)
    allowed_tasks = [t.value for t in TaskName]
    if not tasks or any(t not in allowed_tasks for t in tasks):
        raise r.fail("tasks", f"must be some of {', '.join(allowed_tasks)}, got {tasks!r}")
    methods_raw = r.typed("methods", list)
    try:
        methods = tuple(Method(m) for m in methods_raw)
    except ValueError as exc:
        allowed = ", ".join(m.value for m in Method)
        raise r.fail("methods", f"must be some of {allowed}, got {methods_raw!r}") from exc
    if not methods or len(set(methods)) != len(methods):
        raise r.fail("methods", "must list each method once, at least one")
    device = r.typed("device", str, "cpu")
    if device not in ("cpu", "cuda"):
        raise r.fail("device", f"must be cpu or cuda, got {device!r}")
    lr = r.typed("lr", float, 2e-3)
    prox_mu = r.typed("prox_mu", float, 0.01)
    if not (math.isfinite(lr) and lr > 0):
        raise r.fail("lr", "must be a number > 0")
    if not (math.isfinite(prox_mu) and prox_mu >= 0):
        raise r.fail("prox_mu", "must be a number >= 0")
    timeout_s = r.typed("timeout_s", float, 3600.0)
    if not timeout_s > 0:
        raise r.fail("timeout_s", "must be > 0")

    network = r.table("network")
    filters = network.raw("filters", [8, 16, 32])
    if not (
        isinstance(filters, list)
        and len(filters) >= 2
        and all(isinstance(f, int) and not isinstance(f, bool) and f > 0 for f in filters)
    ):
        raise network.fail("filters", f"must be >= 2 positive integers, got {filters!r}")
    norm = network.typed("norm", str, "batch")
    if norm not in ("batch", "instance"):
        raise network.fail("norm", f"must be batch or instance, got {norm!r}")
    res_units = network.typed("res_units", int, 1)
    if res_units < 0:
        raise network.fail("res_units", "must be >= 0")

    entries = []
    n_sites = r.typed("n_sites", int, 0)
    if not 0 <= n_sites <= 999:
        raise r.fail("n_sites", f"must be 0 to 999 generated sites, got {n_sites}")
    for number, table in enumerate(r.typed("site", list, [] if n_sites else None)):
        if not isinstance(table, dict):
            raise r.fail(f"site[{number}]", "must be a table with preset, train, held_out")
        site = r.child(table, f"site[{number}]")
        preset, train = site.typed("preset", str), site.typed("train", int)
        entries.append(f"{preset}:{train}:{site.typed('held_out', int)}")
    entries += _generated_entries(r, n_sites)
    try:
        sites = parse_sim_sites(",".join(entries))
    except FederationError as exc:
        raise r.fail("site", str(exc).removeprefix("sim-sites: ")) from exc
    if len(sites) < 2:
        raise r.fail("site", "a federation needs at least 2 sites")

    task_tables = r.table("task")
    setups: dict[str, TaskSetup] = {}
    for task in tasks:
        table = task_tables.data.get(task)
        if not isinstance(table, dict):
            raise task_tables.fail(
                task,
                "is required (patch_size, target_spacing_mm, most_shifted_site; or initial "
                "and most_shifted_site)",
            )
        t = task_tables.child(table, task_tables.key(task))
        setups[task] = _task_setup(t, task, sites, base_dir or Path.cwd(), n_sites > 0)
    if Method.PRETRAINED in methods:
        scratch = [t for t, s in setups.items() if s.initial is None]
        if scratch:
            raise r.fail(
                "methods",
                f"pretrained scores the initial weights, but task {', '.join(scratch)} has no "
                "initial (set [task.<name>] initial or drop pretrained)",
            )

    round_sites = r.typed("round_sites", int, 0)
    if round_sites < 0:
        raise r.fail("round_sites", f"must be >= 0 (0: by round_fraction), got {round_sites}")
    round_fraction = r.typed("round_fraction", float, 1.0)
    if not 0 < round_fraction <= 1:
        raise r.fail("round_fraction", f"must be in (0, 1], got {round_fraction}")
    if (round_sites or round_fraction < 1) and Method.GOSSIP in methods:
        raise r.fail(
            "round_sites" if round_sites else "round_fraction",
            "gossip pairs every site in every round: drop gossip from methods or sample none",
        )
    phantom_grid_mm = r.typed("phantom_grid_mm", float, 0.0)
    if not 0 <= phantom_grid_mm <= 50:
        raise r.fail("phantom_grid_mm", f"must be 0 to 50 mm, got {phantom_grid_mm}")
    return SimConfig(
        name=r.typed("name", str),
        description=r.typed("description", str, ""),
        device=device,
        seeds=tuple(int(s) for s in seeds),
        tasks=tuple(str(t) for t in tasks),
        methods=methods,
        rounds=_positive_int(r, "rounds"),
        local_steps=_positive_int(r, "local_steps"),
        batch_size=_positive_int(r, "batch_size", 2),
        lr=lr,
        prox_mu=prox_mu,
        workers=_positive_int(r, "workers", 2),
        threads_per_site=_positive_int(r, "threads_per_site", 1),
        timeout_s=timeout_s,
        evaluate_rounds=bool(r.typed("evaluate_rounds", bool, True)),
        filters=tuple(int(f) for f in filters),
        res_units=int(res_units),
        norm=norm,
        task_setup=setups,
        sites=sites,
        round_sites=round_sites,
        round_fraction=round_fraction,
        phantom_grid_mm=phantom_grid_mm,
    )
