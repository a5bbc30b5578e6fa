"""The benchmark's two baselines, trained in-process on the same simulated sites.

- ``local``: each site trains alone on its own cases, ``rounds`` sessions of
  ``local_steps`` steps, each session starting from the site's previous weights;
- ``centralised``: one model on all sites' training cases pooled, ``rounds`` sessions of
  ``local_steps x sites`` steps (the step budget of all sites together).

Each session is one :func:`models.training.fine_tune` call with the run's settings, just
as one federated round is at a site (fresh optimiser, the same learning-rate schedule,
precision and seeds from :func:`appliance.federation.settings.round_seed`), so the
baselines differ from the federated runs only in what is shared. Both start from the
run's ``initial-weights`` when it has them (fine-tuning), else from the ServerApp's seeded
initial network. A refiner run trains on the cases cut to jittered truth boxes and
scores on the held-out cases cut to exact ones, as its ClientApps do
(:func:`appliance.federation.site_data.run_training_cases`, ``run_held_out_cases``).
When the run evaluates (``evaluate``), every model is scored after each session on the
held-out cases it serves (:func:`appliance.federation.scoring.mean_dice`); otherwise the
history stays empty.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from appliance.federation.aggregation import State
from appliance.federation.params import load_into, model_state
from appliance.federation.scoring import mean_dice
from appliance.federation.settings import RunSettings, round_seed
from appliance.federation.site_data import run_held_out_cases, run_training_cases
from models.training_case import TrainingCase

#: the centralised model's "site" name in seeds and records
POOLED = "pooled"


@dataclass(frozen=True, slots=True)
class SiteData:
    """One simulated site's cases, as the ClientApp would load them."""

    name: str
    train: tuple[TrainingCase, ...]
    held_out: tuple[TrainingCase, ...]


@dataclass(frozen=True, slots=True)
class BaselineResult:
    #: the weights each site ends with (centralised: the same for all)
    weights: Mapping[str, State]
    #: per session: ``{"round": r, "sites": {site: dice}}``
    history: list[dict[str, Any]]
    seconds: float


def _train_session(
    model: torch.nn.Module,
    run: RunSettings,
    cases: Sequence[TrainingCase],
    prepared: Sequence[Any],
    steps: int,
    seed: int,
    device: str,
) -> None:
    from models.training import TrainConfig, fine_tune

    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config = TrainConfig(
        steps=steps, batch_size=run.batch_size, lr=run.lr, seed=seed, device=device
    )
    fine_tune(model, run.task_spec(), list(cases), config, initial_state=start, prepared=prepared)


def _fresh_model(run: RunSettings) -> torch.nn.Module:
    """The network the ServerApp starts from: seeded, or with ``initial-weights``."""
    from appliance.federation.site_state import load_state
    from models.networks import build_network

    torch.manual_seed(run.seed)  # the same initial weights as the ServerApp's
    model = build_network(run.task_spec(), run.network_config())
    if run.initial_weights:
        from pathlib import Path

        load_into(model, load_state(Path(run.initial_weights)))
    return model


class _Cases:
    """A site's training cases of one session and their sampler preparation: a whole-model
    run prepares them once; a refiner run cuts them anew each session (its seed)."""

    def __init__(self, run: RunSettings, cases: Sequence[TrainingCase]) -> None:
        self.run = run
        self.cases = tuple(cases)
        self._prepared: list[Any] | None = None

    def session(self, seed: int) -> tuple[tuple[TrainingCase, ...], list[Any]]:
        from models.training import prepare_cases

        spec = self.run.task_spec()
        if not self.run.stage:
            if self._prepared is None:
                self._prepared = prepare_cases(spec, list(self.cases), seed=self.run.seed)
            return self.cases, self._prepared
        cut = run_training_cases(self.run, self.cases, seed)
        return cut, prepare_cases(spec, list(cut), seed=self.run.seed)


def run_local(
    run: RunSettings,
    sites: Sequence[SiteData],
    *,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> BaselineResult:
    spec = run.task_spec()
    start = time.perf_counter()
    models = {s.name: _fresh_model(run) for s in sites}
    cases = {s.name: _Cases(run, s.train) for s in sites}
    held_out = {s.name: run_held_out_cases(run, s.held_out) for s in sites}
    history: list[dict[str, Any]] = []
    for server_round in range(1, run.rounds + 1):
        scores: dict[str, float] = {}
        for site in sites:
            model = models[site.name]
            seed = round_seed(run.seed, server_round, site.name)
            train, prepared = cases[site.name].session(seed)
            _train_session(model, run, train, prepared, run.local_steps, seed, device)
            if run.evaluate:
                scores[site.name] = mean_dice(model, spec, held_out[site.name])
        if run.evaluate:
            history.append({"round": server_round, "sites": scores})
            log(f"  local round {server_round}/{run.rounds}: " + _fmt(scores))
    weights = {name: model_state(m) for name, m in models.items()}
    return BaselineResult(weights, history, time.perf_counter() - start)


def run_centralised(
    run: RunSettings,
    sites: Sequence[SiteData],
    *,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> BaselineResult:
    spec = run.task_spec()
    start = time.perf_counter()
    model = _fresh_model(run)
    pooled = _Cases(run, [c for s in sites for c in s.train])
    held_out = {s.name: run_held_out_cases(run, s.held_out) for s in sites}
    history: list[dict[str, Any]] = []
    for server_round in range(1, run.rounds + 1):
        seed = round_seed(run.seed, server_round, POOLED)
        train, prepared = pooled.session(seed)
        _train_session(model, run, train, prepared, run.local_steps * len(sites), seed, device)
        if run.evaluate:
            scores = {s.name: mean_dice(model, spec, held_out[s.name]) for s in sites}
            history.append({"round": server_round, "sites": scores})
            log(f"  centralised round {server_round}/{run.rounds}: " + _fmt(scores))
    state = model_state(model)
    return BaselineResult({s.name: state for s in sites}, history, time.perf_counter() - start)


def _fmt(scores: Mapping[str, float]) -> str:
    return " ".join(f"{k}={v:.3f}" for k, v in scores.items())
