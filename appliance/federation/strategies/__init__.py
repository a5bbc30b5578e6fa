"""Strategies by name, all on Flower's Message-API ``flwr.serverapp.strategy`` classes.

- ``fedavg``: :class:`SiteFedAvg` (Flower ``FedAvg``, weights = training cases).
- ``fedprox``: :class:`SiteFedProx` (Flower ``FedProx``: sends ``proximal-mu``; sites
  add the proximal term).
- ``fedbn``: :class:`FedBN`: sites never send normalisation entries; the aggregate of
  the rest is merged into the previous global weights, so aggregation never touches the
  normalisation entries.
- ``cwt``/``swt``: :class:`WeightTransfer`: the model travels site to site in a fixed
  order, nothing is averaged.
- ``gossip``: :class:`Gossip`: no global model; the coordinator only relays each site's
  model to a random peer, which averages it with its own.
- ``fedgs``: :class:`FedGS`: sites send step-scaled accumulated updates; the server
  averages them by share of local steps and applies them (optional server momentum).
- ``fedmedian``, ``fedtrimmedavg``, ``krum``: Flower's robust aggregators
  (:class:`SiteFedMedian`, :class:`SiteFedTrimmedAvg`, :class:`SiteKrum`).
- Client-side DP with fixed clipping (Flower's
  ``DifferentialPrivacyClientSideFixedClipping`` + ``fixedclipping_mod``) wraps
  fedavg, fedprox and the robust aggregators.

One module per family: :mod:`.fedavg` (Flower's FedAvg family, and the
:class:`Recording`/:class:`SeededFedAvg` bases the others build on), :mod:`.fedbn`,
:mod:`.fedgs`, :mod:`.weight_transfer`, :mod:`.gossip`; :mod:`.common` holds the
:class:`SiteBook` and the reading of replies. This module holds the table
(:data:`STRATEGIES`) that :func:`build_strategy` and :func:`train_mode` read.

Every strategy records per-site metrics, aggregates and visits to a
:class:`~appliance.federation.progress.ProgressLog` when given one. None of them touches
Python's global ``random``: each draws from its own generator seeded with the run's seed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from flwr.serverapp.strategy import DifferentialPrivacyClientSideFixedClipping, Strategy

from appliance.config import StrategyName
from appliance.errors import FederationError
from appliance.federation.progress import ProgressLog
from appliance.federation.settings import RunSettings
from appliance.federation.strategies.common import SiteBook, in_site_order
from appliance.federation.strategies.fedavg import (
    Recording,
    SeededFedAvg,
    SiteFedAvg,
    SiteFedMedian,
    SiteFedProx,
    SiteFedTrimmedAvg,
    SiteKrum,
)
from appliance.federation.strategies.fedbn import FedBN
from appliance.federation.strategies.fedgs import FedGS
from appliance.federation.strategies.gossip import Gossip
from appliance.federation.strategies.weight_transfer import WeightTransfer

__all__ = [
    "MODES",
    "STRATEGIES",
    "FedBN",
    "FedGS",
    "Gossip",
    "Recording",
    "SeededFedAvg",
    "SiteBook",
    "SiteFedAvg",
    "SiteFedMedian",
    "SiteFedProx",
    "SiteFedTrimmedAvg",
    "SiteKrum",
    "StrategySpec",
    "WeightTransfer",
    "build_strategy",
    "in_site_order",
    "train_mode",
]

#: builds a strategy from the run settings, the sites, the progress log (if any) and the
#: network's normalisation entries
Factory = Callable[[RunSettings, SiteBook, ProgressLog | None, frozenset[str]], Strategy]


@dataclass(frozen=True)
class StrategySpec:
    """One named strategy: how the coordinator builds it, and what its sites do with a
    train message (the ClientApp's ``mode``)."""

    build: Factory
    mode: str = "full"


def _built(make: Callable[..., Strategy], **options: Callable[[RunSettings], Any]) -> Factory:
    """``make(run, book, progress, **options)``, each option read from the run settings."""

    def build(
        run: RunSettings, book: SiteBook, progress: ProgressLog | None, norm_keys: frozenset[str]
    ) -> Strategy:
        return make(run, book, progress, **{key: read(run) for key, read in options.items()})

    return build


#: every strategy by name
STRATEGIES: Mapping[StrategyName, StrategySpec] = {
    StrategyName.FEDAVG: StrategySpec(_built(SiteFedAvg)),
    StrategyName.FEDPROX: StrategySpec(_built(SiteFedProx, proximal_mu=lambda r: r.prox_mu)),
    StrategyName.FEDBN: StrategySpec(FedBN, mode="fedbn"),
    StrategyName.FEDGS: StrategySpec(_built(FedGS), mode="fedgs"),
    StrategyName.CWT: StrategySpec(_built(partial(WeightTransfer, single=False))),
    StrategyName.SWT: StrategySpec(_built(partial(WeightTransfer, single=True))),
    StrategyName.GOSSIP: StrategySpec(_built(Gossip), mode="gossip"),
    StrategyName.FEDMEDIAN: StrategySpec(_built(SiteFedMedian)),
    StrategyName.FEDTRIMMEDAVG: StrategySpec(_built(SiteFedTrimmedAvg, beta=lambda r: r.trim_beta)),
    StrategyName.KRUM: StrategySpec(
        _built(SiteKrum, num_malicious_nodes=lambda r: r.krum_byzantine)
    ),
}

#: what each strategy's sites do with a train message (ClientApp ``mode``) where that is
#: not ``full``
MODES: Mapping[StrategyName, str] = {
    name: spec.mode for name, spec in STRATEGIES.items() if spec.mode != "full"
}


def _spec(name: StrategyName) -> StrategySpec:
    spec = STRATEGIES.get(name)
    if spec is None:  # pragma: no cover - the table covers StrategyName (a test checks)
        raise FederationError(f"unknown strategy {name}")
    return spec


def train_mode(name: StrategyName) -> str:
    return _spec(name).mode


def build_strategy(
    run: RunSettings,
    book: SiteBook,
    progress: ProgressLog | None,
    norm_keys: frozenset[str],
) -> Strategy:
    """The strategy named by ``run.strategy`` (wrapped in client-side DP clipping when
    ``run.dp_clipping_norm > 0``). Any randomness a strategy uses (node sampling, gossip
    pairing) comes from its own generator seeded with ``run.seed``; Python's global
    ``random`` is left alone."""
    strategy = _spec(run.strategy).build(run, book, progress, norm_keys)
    if run.dp_clipping_norm > 0:
        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy,
            noise_multiplier=run.dp_noise_multiplier,
            clipping_norm=run.dp_clipping_norm,
            num_sampled_clients=max(run.min_sites, len(book.names)),
        )
    return strategy
