"""FedBN (Li et al. 2021): normalisation entries stay at the sites."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from appliance.federation.aggregation import State, merge_kept
from appliance.federation.params import from_record, to_record
from appliance.federation.progress import ProgressLog
from appliance.federation.settings import RunSettings
from appliance.federation.strategies.common import SiteBook
from appliance.federation.strategies.fedavg import Recording, SeededFedAvg
from appliance.federation.strategies.screening import Layout


class FedBN(Recording, SeededFedAvg):
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
        super().__init__(run, book, progress)
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
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None or self._current is None:
            return arrays, metrics
        return to_record(merge_kept(from_record(arrays), self._current)), metrics

    def _layout_of(self, arrays: ArrayRecord) -> Layout | None:
        """Sites reply with every entry but the normalisation ones."""
        return Layout.of(arrays, exclude=self.norm_keys)

    def _refusal(self, msg: Message) -> str | None:
        record = msg.content.array_records.get("arrays")
        sent = sorted(set(record.keys()) & self.norm_keys) if record is not None else []
        if sent:
            names = ", ".join(sent[:5])
            return f"fedbn: it sent normalisation entries ({names}), which stay at the sites"
        return None

    def _train_extra(self, replies: list[Message]) -> dict[str, Any]:
        received = [
            len(m.content.array_records["arrays"].keys()) for m in replies if not m.has_error()
        ]
        return {"entries_received": received, "norm_entries_received": 0}
