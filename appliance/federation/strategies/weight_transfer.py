"""Weight transfer (Chang et al. 2018): the model travels from site to site in a fixed
order; nothing is averaged."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from appliance.errors import FederationError
from appliance.federation.aggregation import transfer_schedule
from appliance.federation.progress import ProgressLog
from appliance.federation.settings import RunSettings
from appliance.federation.strategies.common import (
    SiteBook,
    attribute,
    message_ttl,
    metrics_of,
    site_of,
)
from appliance.federation.strategies.screening import Layout, Screen


class WeightTransfer(Strategy):
    """Cyclic (``cwt``, Chang et al. 2018) or single (``swt``) weight transfer: one site
    trains at a time and hands the model to the next in ``order``; nothing is averaged.
    cwt: each round is one cycle through all sites (``rounds`` = cycles, each site met
    ``rounds`` times). swt: the model meets each site once and spends ``rounds`` local
    rounds there before moving on.

    A run that samples rounds (``round-sites``/``round-fraction``) visits a seeded draw
    of that many sites instead of all: cwt a fresh draw each cycle, swt one draw; in the
    configured ``site-order`` when there is one, else in the draw's (random) order.

    A run that tolerates dropouts (``round-min-sites`` / ``round-min-fraction``) skips a
    site that fails, does not reply within ``round-deadline-s`` or is refused, and takes
    the model on to the next site (recorded; ``skipped``)."""

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
        self.rng = random.Random(run.seed)
        self.visits: list[str] = []
        #: sites left out of a visit (a run tolerating dropouts goes on to the next;
        #: swt does not come back to a site it skipped for the rest of its visit)
        self.skipped: list[str] = []
        #: the sites that trained the model in the latest round (visit order)
        self.contributors: tuple[str, ...] = ()
        self._next_site: str | None = None
        #: the layout of the model sent to the site being visited
        self.layout: Layout | None = None

    def summary(self) -> None:
        return None

    def _draw(self) -> list[str]:
        picked = self.rng.sample(self.order, self.run.round_sample(len(self.order)))
        return sorted(picked, key=self.order.index) if self.run.site_order else picked

    def schedule(self, num_rounds: int) -> list[list[str]]:
        """The sites visited in each round (module and class docs)."""
        if not self.run.samples_rounds:
            return transfer_schedule(self.order, num_rounds, single=self.single)
        if self.single:
            return transfer_schedule(self._draw(), num_rounds, single=True)
        return [self._draw() for _ in range(num_rounds)]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        site = self._next_site
        if site is None:
            raise FederationError("weight transfer: no site to visit (start() sets it)")
        config["server-round"] = server_round
        self.layout = Layout.of(arrays)
        record = RecordDict({"arrays": arrays, "config": config})
        ttl = message_ttl(self.run.round_timeout)
        return [Message(record, self.book.node_of(site), MessageType.TRAIN, ttl=ttl)]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        tolerant = self.run.tolerates_dropouts
        check = Screen(
            self.book,
            self.run.max_update_bytes,
            layout=self.layout,
            asked=(self.book.node_of(self._next_site),) if self._next_site else None,
            deadline_s=self.run.round_timeout,
            tolerant=tolerant,
        )
        replies = check(
            list(replies),
            f"round {server_round} training",
            progress=self.progress,
            server_round=server_round,
        )
        if len(replies) != 1:
            raise FederationError(f"weight transfer expected one reply, got {len(replies)}")
        msg = replies[0]
        return msg.content.array_records["arrays"], MetricRecord(metrics_of(msg))

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config["server-round"] = server_round
        record = RecordDict({"arrays": arrays, "config": config})
        ttl = message_ttl(self.run.round_timeout)
        return [Message(record, node, MessageType.EVALUATE, ttl=ttl) for node in self.book.names]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = list(replies)
        metrics = [(metrics_of(m), site_of(m, self.book)) for m in replies]
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
        schedule = self.schedule(num_rounds)
        if self.progress is not None and len(schedule) != num_rounds:
            self.progress.data["rounds"] = len(schedule)  # swt: rounds at each site
            self.progress.save()
        for server_round, sites in enumerate(schedule, start=1):
            trained: list[str] = []
            for site in sites:
                if self.single and site in self.skipped:
                    continue  # swt: the rest of a visit that failed
                self._next_site = site
                config = ConfigRecord(dict(train_config or {}))
                sent = list(self.configure_train(server_round, arrays, config, grid))
                replies = attribute(grid.send_and_receive(sent, timeout=timeout), sent)
                try:
                    new, metrics = self.aggregate_train(server_round, replies)
                except FederationError:
                    if not self.run.tolerates_dropouts:
                        raise
                    self.skipped.append(site)  # recorded as dropped (or refused)
                    continue
                if new is None:
                    raise FederationError(f"site {site} returned no weights")
                arrays = new
                self.visits.append(site)
                trained.append(site)
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
            if trained:
                self.contributors = tuple(trained)
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
