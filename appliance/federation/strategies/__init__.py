"""Strategies by name, all on Flower's Message-API ``flwr.serverapp.strategy`` classes.

- ``fedavg``: :class:`SiteFedAvg` (Flower ``FedAvg``, weights = training cases).
- ``fedprox``: Flower ``FedProx`` (sends ``proximal-mu``; sites add the proximal term).
- ``fedbn``: :class:`FedBN`: sites never send normalisation entries; the aggregate of
  the rest is merged into the previous global weights, so aggregation never touches the
  normalisation entries.
- ``cwt``/``swt``: :class:`WeightTransfer`: the model travels site to site in a fixed
  order, nothing is averaged.
- ``gossip``: :class:`Gossip`: no global model; the coordinator only relays each site's
  model to a random peer, which averages it with its own.
- ``fedgs``: :class:`FedGS`: sites send step-scaled accumulated updates; the server
  averages them by share of local steps and applies them (optional server momentum).
- ``fedmedian``, ``fedtrimmedavg``, ``krum``: Flower's robust aggregators.
- Client-side DP with fixed clipping (Flower's
  ``DifferentialPrivacyClientSideFixedClipping`` + ``fixedclipping_mod``) wraps
  fedavg, fedprox and the robust aggregators.

Every strategy records per-site metrics, aggregates and visits to a
:class:`~appliance.federation.progress.ProgressLog` when given one.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    Krum,
    Result,
    Strategy,
)

from appliance.errors import FederationError
from appliance.federation.aggregation import (
    State,
    consensus_distance,
    fedgs_apply,
    gossip_peers,
    merge_kept,
    transfer_schedule,
)
from appliance.federation.params import from_record, to_record
from appliance.federation.progress import ProgressLog
from appliance.federation.settings import RunSettings, StrategyName


@dataclass
class SiteBook:
    """Node ids -> site names and case counts (from the ``query.info`` round)."""

    names: dict[int, str] = field(default_factory=dict)
    cases: dict[int, int] = field(default_factory=dict)

    def name(self, node_id: int) -> str:
        return self.names.get(node_id, f"node_{node_id}")

    def node_of(self, site: str) -> int:
        for node, name in self.names.items():
            if name == site:
                return node
        raise FederationError(f"site-order: no connected site is named {site!r}")


def _site_of(msg: Message, book: SiteBook) -> str:
    if "site" in msg.content.config_records:
        return str(msg.content.config_records["site"].get("site", ""))
    return book.name(msg.metadata.src_node_id)


def _metrics_of(msg: Message) -> dict[str, Any]:
    if msg.has_error():
        return {"error": str(msg.error.reason)}
    records = msg.content.metric_records
    return dict(next(iter(records.values()))) if records else {}


def in_site_order(replies: Iterable[Message], book: SiteBook) -> list[Message]:
    """Replies sorted by site name (then node id). Replies arrive in whatever order the
    sites finish; floating-point sums depend on the order of their terms, so aggregating
    in arrival order would make two runs with the same seed differ in the last bits, and
    over rounds in the Dice."""
    return sorted(replies, key=lambda m: (_site_of(m, book), m.metadata.src_node_id))


def _check(replies: list[Message], book: SiteBook, what: str) -> None:
    failed = [f"{_site_of(m, book)}: {m.error.reason}" for m in replies if m.has_error()]
    if failed:
        raise FederationError(f"{what} failed at " + "; ".join(failed))


class Recording:
    """Mixin for FedAvg-family strategies: record each site's metrics and the aggregate."""

    book: SiteBook
    progress: ProgressLog | None

    def _record(
        self,
        server_round: int,
        phase: str,
        replies: list[Message],
        aggregate: Mapping[str, Any] | None,
        **extra: Any,
    ) -> None:
        if self.progress is None:
            return
        sites = {_site_of(m, self.book): _metrics_of(m) for m in replies}
        self.progress.add(server_round, phase, sites, aggregate, **extra)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = in_site_order(replies, self.book)
        _check(replies, self.book, f"round {server_round} training")
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        self._record(
            server_round,
            "train",
            replies,
            dict(metrics) if metrics is not None else None,
            **self._train_extra(replies),
        )
        return arrays, metrics

    def _train_extra(self, replies: list[Message]) -> dict[str, Any]:
        return {}

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = [
            m
            for m in in_site_order(replies, self.book)
            if m.has_error() or int(_metrics_of(m).get("num-examples", 0)) > 0
        ]
        if not replies:
            return None
        metrics = super().aggregate_evaluate(server_round, replies)  # type: ignore[misc]
        self._record(
            server_round, "evaluate", replies, dict(metrics) if metrics is not None else None
        )
        return metrics


def _fedavg_kwargs(run: RunSettings, weighted_by: str = "num-examples") -> dict[str, Any]:
    return {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0 if run.evaluate else 0.0,
        "min_train_nodes": run.min_sites,
        "min_evaluate_nodes": run.min_sites if run.evaluate else 0,
        "min_available_nodes": run.min_sites,
        "weighted_by_key": weighted_by,
    }


class SiteFedAvg(Recording, FedAvg):
    """FedAvg (McMahan et al. 2017): average weighted by each site's training cases."""

    def __init__(self, run: RunSettings, book: SiteBook, progress: ProgressLog | None) -> None:
        FedAvg.__init__(self, **_fedavg_kwargs(run))
        self.book, self.progress = book, progress


class SiteFedProx(Recording, FedProx):
    def __init__(self, run: RunSettings, book: SiteBook, progress: ProgressLog | None) -> None:
        FedProx.__init__(self, proximal_mu=run.prox_mu, **_fedavg_kwargs(run))
        self.book, self.progress = book, progress


class SiteFedMedian(Recording, FedMedian):
    def __init__(self, run: RunSettings, book: SiteBook, progress: ProgressLog | None) -> None:
        FedMedian.__init__(self, **_fedavg_kwargs(run))
        self.book, self.progress = book, progress


class SiteFedTrimmedAvg(Recording, FedTrimmedAvg):
    def __init__(self, run: RunSettings, book: SiteBook, progress: ProgressLog | None) -> None:
        FedTrimmedAvg.__init__(self, beta=run.trim_beta, **_fedavg_kwargs(run))
        self.book, self.progress = book, progress


class SiteKrum(Recording, Krum):
    def __init__(self, run: RunSettings, book: SiteBook, progress: ProgressLog | None) -> None:
        Krum.__init__(self, num_malicious_nodes=run.krum_byzantine, **_fedavg_kwargs(run))
        self.book, self.progress = book, progress


class FedBN(Recording, FedAvg):
    """FedBN (Li et al. 2021): normalisation entries stay at the sites. Sites send every
    other entry; their weighted average replaces those entries of the global weights and
    the normalisation entries of the global weights are left as they were."""

    def __init__(
        self,
        run: RunSettings,
        book: SiteBook,
        progress: ProgressLog | None,
        norm_keys: frozenset[str],
    ) -> None:
        FedAvg.__init__(self, **_fedavg_kwargs(run))
        self.book, self.progress = book, progress
        self.norm_keys = norm_keys
        self._current: State | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._current = from_record(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = in_site_order(replies, self.book)
        for msg in replies:
            if not msg.has_error():
                sent = set(msg.content.array_records["arrays"].keys()) & self.norm_keys
                if sent:
                    raise FederationError(
                        f"fedbn: site {_site_of(msg, self.book)} sent normalisation entries"
                    )
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None or self._current is None:
            return arrays, metrics
        return to_record(merge_kept(from_record(arrays), self._current)), metrics

    def _train_extra(self, replies: list[Message]) -> dict[str, Any]:
        received = [
            len(m.content.array_records["arrays"].keys()) for m in replies if not m.has_error()
        ]
        return {"entries_received": received, "norm_entries_received": 0}


class FedGS(Recording, FedAvg):
    """FedGS (MICCAI 2024 DeCaF): sites send their accumulated, small-lesion step-scaled
    updates; the server averages them weighted by each site's share of local steps and
    applies the result to the global weights, optionally with server momentum."""

    def __init__(self, run: RunSettings, book: SiteBook, progress: ProgressLog | None) -> None:
        FedAvg.__init__(self, **_fedavg_kwargs(run, weighted_by="steps"))
        self.book, self.progress = book, progress
        self.server_lr = run.server_lr
        self.momentum = run.server_momentum
        self._current: State | None = None
        self._velocity: State | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._current = from_record(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = in_site_order(replies, self.book)
        _check(replies, self.book, f"round {server_round} training")
        valid = [m for m in replies if not m.has_error()]
        if not valid or self._current is None:
            return None, None
        updates = [from_record(m.content.array_records["arrays"]) for m in valid]
        steps = [float(_metrics_of(m)["steps"]) for m in valid]
        new, self._velocity = fedgs_apply(
            self._current,
            updates,
            steps,
            server_lr=self.server_lr,
            momentum=self.momentum,
            velocity=self._velocity,
        )
        metrics = self.train_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key)
        self._record(server_round, "train", replies, dict(metrics), step_shares=steps)
        return to_record(new), metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Evaluation replies carry no ``steps``: their Dice is weighted by held-out cases."""
        by_steps = self.weighted_by_key
        self.weighted_by_key = "num-examples"
        try:
            return super().aggregate_evaluate(server_round, replies)
        finally:
            self.weighted_by_key = by_steps


class WeightTransfer(Strategy):
    """Cyclic (``cwt``, Chang et al. 2018) or single (``swt``) weight transfer: one site
    trains at a time and hands the model to the next in ``order``; nothing is averaged.
    cwt: each round is one cycle through all sites (``rounds`` = cycles, each site met
    ``rounds`` times). swt: the model meets each site once and spends ``rounds`` local
    rounds there before moving on."""

    def __init__(
        self,
        run: RunSettings,
        book: SiteBook,
        progress: ProgressLog | None,
        *,
        single: bool,
    ) -> None:
        self.run, self.book, self.progress, self.single = run, book, progress, single
        order = list(run.site_order) or sorted(book.names.values())
        for site in order:
            book.node_of(site)
        if len(set(order)) != len(order):
            raise FederationError("site-order: a site is listed twice")
        self.order = order
        self.visits: list[str] = []

    def summary(self) -> None:
        return None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        site = self._next_site
        config["server-round"] = server_round
        record = RecordDict({"arrays": arrays, "config": config})
        return [Message(record, self.book.node_of(site), MessageType.TRAIN)]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        _check(replies, self.book, f"round {server_round} training")
        if len(replies) != 1:
            raise FederationError(f"weight transfer expected one reply, got {len(replies)}")
        msg = replies[0]
        return msg.content.array_records["arrays"], MetricRecord(_metrics_of(msg))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config["server-round"] = server_round
        record = RecordDict({"arrays": arrays, "config": config})
        return [Message(record, node, MessageType.EVALUATE) for node in self.book.names]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        metrics = [(_metrics_of(m), _site_of(m, self.book)) for m in replies]
        if self.progress is not None:
            self.progress.add(server_round, "evaluate", {s: m for m, s in metrics}, None)
        valid = [m for m, _ in metrics if "dice" in m and m.get("num-examples", 0) > 0]
        if not valid:
            return None
        total = sum(float(m["num-examples"]) for m in valid)
        return MetricRecord(
            {"dice": sum(float(m["dice"]) * float(m["num-examples"]) for m in valid) / total}
        )

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Any = None,
    ) -> Result:
        result = Result()
        arrays = initial_arrays
        schedule = transfer_schedule(self.order, num_rounds, single=self.single)
        if self.progress is not None and len(schedule) != num_rounds:
            self.progress.data["rounds"] = len(schedule)  # swt: rounds at each site
            self.progress.save()
        for server_round, sites in enumerate(schedule, start=1):
            for site in sites:
                self._next_site = site
                config = ConfigRecord(dict(train_config or {}))
                replies = list(
                    grid.send_and_receive(
                        self.configure_train(server_round, arrays, config, grid), timeout=timeout
                    )
                )
                new, metrics = self.aggregate_train(server_round, replies)
                if new is None:
                    raise FederationError(f"site {site} returned no weights")
                arrays = new
                self.visits.append(site)
                if self.progress is not None:
                    self.progress.add(
                        server_round,
                        "train",
                        {site: dict(metrics or {})},
                        None,
                        visits=[site],
                    )
                if metrics is not None:
                    result.train_metrics_clientapp[len(self.visits)] = metrics
            result.arrays = arrays
            if self.run.evaluate:
                config = ConfigRecord(dict(evaluate_config or {}))
                replies = list(
                    grid.send_and_receive(
                        self.configure_evaluate(server_round, arrays, config, grid),
                        timeout=timeout,
                    )
                )
                evaluated = self.aggregate_evaluate(server_round, replies)
                if evaluated is not None:
                    result.evaluate_metrics_clientapp[server_round] = evaluated
        return result


class Gossip(Strategy):
    """Decentralised gossip averaging: each site keeps its own model; every round each
    site trains, then is paired with a random peer and averages its model with the
    peer's, weighted by case counts. The coordinator only relays the peer's model with
    the next message; it never forms a global model. After the last round the sites'
    consensus distance is reported."""

    def __init__(self, run: RunSettings, book: SiteBook, progress: ProgressLog | None) -> None:
        if len(book.names) < 2:
            raise FederationError("gossip needs at least two sites")
        self.run, self.book, self.progress = run, book, progress
        self.rng = np.random.default_rng(run.seed)
        self.nodes = sorted(book.names, key=book.name)
        self.pairings: list[dict[str, str]] = []
        self.consensus: float | None = None

    def summary(self) -> None:
        return None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        raise FederationError("gossip sends per-site messages; use start()")

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return None, None  # there is no aggregate

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config["server-round"] = server_round
        return [
            Message(
                RecordDict({"arrays": ArrayRecord(), "config": config}), n, MessageType.EVALUATE
            )
            for n in self.nodes
        ]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        if self.progress is not None:
            self.progress.add(
                server_round,
                "evaluate",
                {_site_of(m, self.book): _metrics_of(m) for m in replies},
                None,
            )
        return None

    def _send(
        self, grid: Grid, messages: list[Message], timeout: float, what: str
    ) -> dict[int, Message]:
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        _check(replies, self.book, what)
        return {m.metadata.src_node_id: m for m in replies}

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Any = None,
    ) -> Result:
        result = Result()
        models: dict[int, ArrayRecord] = {}
        peers: list[int] | None = None
        for server_round in range(1, num_rounds + 1):
            messages = []
            for i, node in enumerate(self.nodes):
                config = ConfigRecord(dict(train_config or {}))
                config["server-round"] = server_round
                if peers is None:
                    arrays, config["has-peer"] = initial_arrays, False
                else:
                    peer = self.nodes[peers[i]]
                    arrays, config["has-peer"] = models[peer], True
                    config["peer-cases"] = self.book.cases.get(peer, 1)
                messages.append(
                    Message(
                        RecordDict({"arrays": arrays, "config": config}), node, MessageType.TRAIN
                    )
                )
            replies = self._send(grid, messages, timeout, f"gossip round {server_round}")
            models = {node: replies[node].content.array_records["arrays"] for node in self.nodes}
            peers = gossip_peers(len(self.nodes), self.rng)
            pairing = {
                self.book.name(node): self.book.name(self.nodes[peers[i]])
                for i, node in enumerate(self.nodes)
            }
            self.pairings.append(pairing)
            if self.progress is not None:
                self.progress.add(
                    server_round,
                    "train",
                    {self.book.name(n): _metrics_of(replies[n]) for n in self.nodes},
                    None,
                    peers=pairing,
                )
            if self.run.evaluate and server_round < num_rounds:
                evaluated = self._send(
                    grid,
                    list(
                        self.configure_evaluate(
                            server_round,
                            ArrayRecord(),
                            ConfigRecord(dict(evaluate_config or {})),
                            grid,
                        )
                    ),
                    timeout,
                    "gossip evaluation",
                )
                self.aggregate_evaluate(server_round, list(evaluated.values()))
        # the last pairing's averaging, then the consensus distance of the sites' models
        assert peers is not None
        messages = []
        for i, node in enumerate(self.nodes):
            peer = self.nodes[peers[i]]
            config = ConfigRecord(dict(train_config or {}))
            config["server-round"] = num_rounds
            config["peer-cases"] = self.book.cases.get(peer, 1)
            messages.append(
                Message(
                    RecordDict({"arrays": models[peer], "config": config}),
                    node,
                    f"{MessageType.TRAIN}.average",
                )
            )
        replies = self._send(grid, messages, timeout, "gossip averaging")
        final = [from_record(replies[n].content.array_records["arrays"]) for n in self.nodes]
        self.consensus = consensus_distance(final)
        if self.progress is not None:
            self.progress.add(
                num_rounds,
                "average",
                {self.book.name(n): _metrics_of(replies[n]) for n in self.nodes},
                {"consensus_distance": self.consensus},
            )
        if self.run.evaluate:
            evaluated = self._send(
                grid,
                list(
                    self.configure_evaluate(
                        num_rounds, ArrayRecord(), ConfigRecord(dict(evaluate_config or {})), grid
                    )
                ),
                timeout,
                "gossip evaluation",
            )
            self.aggregate_evaluate(num_rounds, list(evaluated.values()))
        result.arrays = ArrayRecord()  # no global model
        return result


#: what each strategy's sites do with a train message (ClientApp ``mode``)
MODES: Mapping[StrategyName, str] = {
    StrategyName.FEDBN: "fedbn",
    StrategyName.FEDGS: "fedgs",
    StrategyName.GOSSIP: "gossip",
}


def train_mode(name: StrategyName) -> str:
    return MODES.get(name, "full")


def build_strategy(
    run: RunSettings,
    book: SiteBook,
    progress: ProgressLog | None,
    norm_keys: frozenset[str],
) -> Strategy:
    """The strategy named by ``run.strategy`` (wrapped in client-side DP clipping when
    ``run.dp_clipping_norm > 0``)."""
    name = run.strategy
    strategy: Strategy
    if name == StrategyName.FEDAVG:
        strategy = SiteFedAvg(run, book, progress)
    elif name == StrategyName.FEDPROX:
        strategy = SiteFedProx(run, book, progress)
    elif name == StrategyName.FEDBN:
        strategy = FedBN(run, book, progress, norm_keys)
    elif name == StrategyName.FEDGS:
        strategy = FedGS(run, book, progress)
    elif name == StrategyName.CWT:
        strategy = WeightTransfer(run, book, progress, single=False)
    elif name == StrategyName.SWT:
        strategy = WeightTransfer(run, book, progress, single=True)
    elif name == StrategyName.GOSSIP:
        strategy = Gossip(run, book, progress)
    elif name == StrategyName.FEDMEDIAN:
        strategy = SiteFedMedian(run, book, progress)
    elif name == StrategyName.FEDTRIMMEDAVG:
        strategy = SiteFedTrimmedAvg(run, book, progress)
    elif name == StrategyName.KRUM:
        strategy = SiteKrum(run, book, progress)
    else:  # pragma: no cover - StrategyName is exhaustive
        raise FederationError(f"unknown strategy {name}")
    if run.dp_clipping_norm > 0:
        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy,
            noise_multiplier=run.dp_noise_multiplier,
            clipping_norm=run.dp_clipping_norm,
            num_sampled_clients=max(run.min_sites, len(book.names)),
        )
    random.seed(run.seed)
    return strategy
