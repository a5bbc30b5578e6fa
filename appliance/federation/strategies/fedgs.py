"""FedGS (MICCAI 2024 DeCaF): step-scaled site updates applied with server momentum."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from appliance.federation.aggregation import State, fedgs_apply
from appliance.federation.params import from_record, to_record
from appliance.federation.progress import ProgressLog
from appliance.federation.settings import RunSettings
from appliance.federation.strategies.common import (
    SiteBook,
    in_site_order,
    metrics_of,
)
from appliance.federation.strategies.fedavg import Recording, SeededFedAvg


class FedGS(Recording, SeededFedAvg):
    """FedGS (MICCAI 2024 DeCaF): sites send their accumulated, small-lesion step-scaled
    updates; the server averages them weighted by each site's share of local steps and
    applies the result to the global weights, optionally with server momentum."""

    def __init__(self, run: RunSettings, book: SiteBook, progress: ProgressLog | None) -> None:
        super().__init__(run, book, progress, weighted_by="steps")
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
        replies = self.screen(server_round, in_site_order(replies, self.book))
        valid = [m for m in replies if not m.has_error()]
        if not valid or self._current is None:
            return None, None
        updates = [from_record(m.content.array_records["arrays"]) for m in valid]
        steps = [float(metrics_of(m)["steps"]) for m in valid]
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
