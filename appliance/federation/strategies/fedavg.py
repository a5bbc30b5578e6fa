"""The FedAvg family: Flower's ``FedAvg``, ``FedProx`` and robust aggregators
(``FedMedian``, ``FedTrimmedAvg``, ``Krum``) with the site bookkeeping every strategy of
ours adds, and the two pieces the federation's own FedAvg-based strategies
(:mod:`.fedbn`, :mod:`.fedgs`) build on:

- :class:`Recording`, first in a strategy's bases: replies aggregated in site order,
  per-site metrics and the aggregate recorded to the run's progress log;
- :class:`SeededFedAvg`, last in its bases: Flower's node sampling drawn from the
  strategy's own ``random.Random`` instead of Python's global one.

A strategy's Flower options that come from the run settings (FedProx's ``proximal_mu``,
...) are given by the strategy table in :mod:`appliance.federation.strategies`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from logging import INFO
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum

from appliance.errors import FederationError
from appliance.federation.progress import ProgressLog
from appliance.federation.settings import RunSettings
from appliance.federation.strategies.common import (
    SiteBook,
    attribute,
    in_site_order,
    message_ttl,
    metrics_of,
    site_of,
)
from appliance.federation.strategies.screening import Layout, Screen


def fedavg_kwargs(run: RunSettings, weighted_by: str = "num-examples") -> dict[str, Any]:
    """``FedAvg`` constructor options: every site trains (and evaluates, if the run
    evaluates) every round; ``weighted_by`` names the reply metric that weights a site."""
    return {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0 if run.evaluate else 0.0,
        "min_train_nodes": run.min_sites,
        "min_evaluate_nodes": run.min_sites if run.evaluate else 0,
        "min_available_nodes": run.min_sites,
        "weighted_by_key": weighted_by,
    }


class Recording(FedAvg):
    """First base of a FedAvg-family strategy: built from the run settings, it aggregates
    replies in site order (:func:`in_site_order`), fails the round on a site's error (or,
    when the run tolerates dropouts, leaves failed and late sites out of it),
    refuses replies that fail the :class:`~.screening.Screen` (against the model it sent
    that round) and records each site's metrics and the aggregate to ``progress``.

    ``options`` are the Flower class's own constructor options (``proximal_mu``, ...).
    The strategy's node sampling draws from ``rng``, seeded with the run's seed (see
    :class:`SeededFedAvg`)."""

    train_sample: Callable[[int], int] | None

    def __init__(
        self,
        run: RunSettings,
        book: SiteBook,
        progress: ProgressLog | None,
        *,
        weighted_by: str = "num-examples",
        **options: Any,
    ) -> None:
        super().__init__(**fedavg_kwargs(run, weighted_by), **options)
        self.book, self.progress = book, progress
        self.rng = random.Random(run.seed)
        sample: Callable[[int], int] | None = run.round_sample if run.samples_rounds else None
        self.train_sample = sample
        self.run = run
        #: the nodes asked to train in the current round
        self.asked: tuple[int, ...] = ()
        self.max_update_bytes = run.max_update_bytes
        #: a strategy weighting by ``steps`` (FedGS) bounds them by the run's local steps
        self.max_steps = run.local_steps if weighted_by == "steps" else None
        #: the layout of the model sent in the current round (see :meth:`configure_train`)
        self.layout: Layout | None = None
        #: the sites whose updates went into the latest aggregate (site order)
        self.contributors: tuple[str, ...] = ()
        #: the training messages of the current round
        self.sent: list[Message] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.layout = self._layout_of(arrays)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.asked = tuple(m.metadata.dst_node_id for m in messages)
        self.sent = messages  # Flower sets their message ids when it pushes them
        return messages

    def _layout_of(self, arrays: ArrayRecord) -> Layout | None:
        """What the sites' replies to ``arrays`` must look like (FedBN: fewer entries)."""
        return Layout.of(arrays)

    def _refusal(self, msg: Message) -> str | None:
        """A strategy's own reason to refuse a reply, besides the :class:`Screen`'s."""
        return None

    def screen(self, server_round: int, replies: list[Message]) -> list[Message]:
        """The round's replies that are not refused (:class:`~.screening.Screen`)."""
        tolerant = self.run.tolerates_dropouts
        check = Screen(
            self.book,
            self.max_update_bytes,
            layout=self.layout,
            max_steps=self.max_steps,
            extra=self._refusal,
            asked=self.asked or None,
            minimum=self.run.round_minimum(len(self.asked)) if tolerant else 1,
            deadline_s=self.run.round_timeout,
            tolerant=tolerant,
        )
        accepted = check(
            attribute(replies, self.sent),
            f"round {server_round} training",
            progress=self.progress,
            server_round=server_round,
        )
        self.contributors = tuple(self.book.name(m.metadata.src_node_id) for m in accepted)
        return accepted

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
        sites = {site_of(m, self.book): metrics_of(m) for m in replies}
        self.progress.add(server_round, phase, sites, aggregate, **extra)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = self.screen(server_round, in_site_order(replies, self.book))
        arrays, metrics = super().aggregate_train(server_round, replies)
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
            if m.has_error() or int(metrics_of(m).get("num-examples", 0)) > 0
        ]
        if not replies:
            return None
        metrics = super().aggregate_evaluate(server_round, replies)
        self._record(
            server_round, "evaluate", replies, dict(metrics) if metrics is not None else None
        )
        return metrics


class SeededFedAvg(FedAvg):
    """Last base of a FedAvg-family strategy: Flower's ``FedAvg.configure_train`` and
    ``configure_evaluate`` (Flower 1.42), drawing the node sample from the strategy's own
    ``rng`` (set by :class:`Recording`).

    Flower's versions sample with ``strategy_utils.sample_nodes``, which calls the
    module-level ``random.sample``, i.e. Python's global generator, and takes no
    generator to use instead (the strategy factory used to reseed the global generator
    with the run's seed for it, changing global state for all code in the process). Here
    the same draw, ``rng.sample(all_nodes, sample_size)`` with ``rng =
    random.Random(seed)`` (the sequence ``random.seed(seed)`` gave), is made on the
    strategy's own generator, so a run's sample depends on its seed alone and global
    ``random`` is never touched. With ``fraction_train`` 1.0 the sample is every
    connected node and the draw only decides their order (replies are aggregated in site
    order regardless). A run that samples rounds (``round-sites``/``round-fraction``)
    trains a fresh draw of that many connected sites each round; every site evaluates.

    Being last in the bases, a Flower subclass's own ``configure_train`` (``FedProx``
    adds ``proximal-mu`` to the config) still runs before this one."""

    rng: random.Random
    run: RunSettings
    #: the run's per-round sample size of ``n`` connected sites (``round-sites`` /
    #: ``round-fraction``); ``None``: every site trains in every round
    train_sample: Callable[[int], int] | None = None

    def _sample(
        self,
        grid: Grid,
        fraction: float,
        min_nodes: int,
        what: str,
        sized: Callable[[int], int] | None = None,
    ) -> list[int]:
        num_nodes = int(len(list(grid.get_node_ids())) * fraction)
        sample_size = max(num_nodes, min_nodes)
        if sized is not None:  # the run samples: of those connected once min-sites are
            sample_size = self.min_available_nodes
        min_available = max(self.min_available_nodes, sample_size)
        deadline = time.monotonic() + self.run.timeout_s
        while len(all_nodes := list(grid.get_node_ids())) < min_available:
            if time.monotonic() > deadline:
                raise FederationError(
                    f"{what}: only {len(all_nodes)} of the {min_available} sites needed are "
                    f"connected after {self.run.timeout_s:g} s (timeout-s)"
                )
            log(
                INFO,
                "Waiting for nodes to connect: %d connected (minimum required: %d).",
                len(all_nodes),
                min_available,
            )
            time.sleep(1)
        if sized is not None:
            sample_size = sized(len(all_nodes))
        sampled = self.rng.sample(all_nodes, sample_size)
        log(INFO, "%s: Sampled %s nodes (out of %s)", what, len(sampled), len(all_nodes))
        return sampled

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.fraction_train == 0.0:
            return []
        nodes = self._sample(
            grid, self.fraction_train, self.min_train_nodes, "configure_train", self.train_sample
        )
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._with_ttl(record, nodes, MessageType.TRAIN)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.fraction_evaluate == 0.0:
            return []
        nodes = self._sample(
            grid, self.fraction_evaluate, self.min_evaluate_nodes, "configure_evaluate"
        )
        config["server-round"] = server_round
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._with_ttl(record, nodes, MessageType.EVALUATE)

    def _with_ttl(self, record: RecordDict, nodes: list[int], message_type: str) -> list[Message]:
        """One message per node, living as long as the round's deadline
        (:func:`~.common.message_ttl`)."""
        ttl = message_ttl(self.run.round_timeout)
        return [Message(record, node, message_type, ttl=ttl) for node in nodes]


class SiteFedAvg(Recording, SeededFedAvg):
    """FedAvg (McMahan et al. 2017): average weighted by each site's training cases."""


class SiteFedProx(Recording, FedProx, SeededFedAvg):
    """FedProx (Li et al. 2020): FedAvg that sends ``proximal-mu``; sites add the
    proximal term to their loss."""


class SiteFedMedian(Recording, FedMedian, SeededFedAvg):
    """Coordinate-wise median of the sites' weights (Yin et al. 2018)."""


class SiteFedTrimmedAvg(Recording, FedTrimmedAvg, SeededFedAvg):
    """Coordinate-wise trimmed mean of the sites' weights (Yin et al. 2018)."""


class SiteKrum(Recording, Krum, SeededFedAvg):
    """Krum (Blanchard et al. 2017): the site model closest to its neighbours."""
