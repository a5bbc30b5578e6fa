"""Decentralised gossip averaging: no global model, each site averages with a random peer."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from appliance.errors import FederationError
from appliance.federation.aggregation import consensus_distance, gossip_peers
from appliance.federation.params import from_record
from appliance.federation.progress import ProgressLog
from appliance.federation.settings import RunSettings
from appliance.federation.strategies.common import (
    SiteBook,
    attribute,
    check_replies,
    message_ttl,
    metrics_of,
    site_of,
)
from appliance.federation.strategies.screening import Layout, Screen


class Gossip(Strategy):
    """Decentralised gossip averaging: each site keeps its own model; every round each
    site trains, then is paired with a random peer and averages its model with the
    peer's, weighted by case counts. The coordinator only relays the peer's model with
    the next message; it never forms a global model. After the last round the sites'
    consensus distance is reported.

    Pairs are drawn among the sites whose model of the round was accepted: a site that
    was refused, failed or missed the round's deadline (left out when the run tolerates
    dropouts) is paired with nobody, and the others are re-paired among themselves. It
    is asked again the next round and trains on from its own model."""

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
                {site_of(m, self.book): metrics_of(m) for m in replies},
                None,
            )
        return None

    def _screen(self, initial: ArrayRecord, asked: list[int]) -> Screen:
        tolerant = self.run.tolerates_dropouts
        return Screen(
            self.book,
            self.run.max_update_bytes,
            layout=Layout.of(initial),
            asked=tuple(asked),
            minimum=self.run.round_minimum(len(asked)) if tolerant and asked else 1,
            deadline_s=self.run.round_timeout,
            tolerant=tolerant,
        )

    def _send(
        self,
        grid: Grid,
        messages: list[Message],
        timeout: float,
        what: str,
        *,
        screen: Screen | None = None,
        server_round: int = 0,
    ) -> dict[int, Message]:
        """The replies by node: all of them, or with ``screen`` those it accepts (it
        fails the round when it accepts none)."""
        replies = attribute(grid.send_and_receive(messages, timeout=timeout), messages)
        if screen is None:
            check_replies(replies, self.book, what)
        else:
            replies = screen(replies, what, progress=self.progress, server_round=server_round)
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
        screen = self._screen(initial_arrays, self.nodes)
        models: dict[int, ArrayRecord] = {}
        peer_of: dict[int, int] = {}
        for server_round in range(1, num_rounds + 1):
            messages = []
            for node in self.nodes:
                config = ConfigRecord(dict(train_config or {}))
                config["server-round"] = server_round
                peer = peer_of.get(node)
                if peer is None or peer not in models:  # first round, or no peer this time
                    arrays, config["has-peer"] = initial_arrays, False
                else:
                    arrays, config["has-peer"] = models[peer], True
                    config["peer-cases"] = self.book.cases.get(peer, 1)
                messages.append(
                    Message(
                        RecordDict({"arrays": arrays, "config": config}),
                        node,
                        MessageType.TRAIN,
                        ttl=message_ttl(timeout),
                    )
                )
            what = f"gossip round {server_round}"
            replies = self._send(
                grid, messages, timeout, what, screen=screen, server_round=server_round
            )
            # a site left out of the round is paired with nobody; the others re-pair
            models = {n: replies[n].content.array_records["arrays"] for n in replies}
            present = [n for n in self.nodes if n in models]
            peers = gossip_peers(len(present), self.rng) if len(present) >= 2 else []
            peer_of = {node: present[peers[i]] for i, node in enumerate(present) if peers}
            pairing = {self.book.name(n): self.book.name(p) for n, p in peer_of.items()}
            self.pairings.append(pairing)
            if self.progress is not None:
                self.progress.add(
                    server_round,
                    "train",
                    {self.book.name(n): metrics_of(replies[n]) for n in self.nodes if n in replies},
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
        messages = []
        for node, peer in peer_of.items():
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
        replies = self._send(
            grid,
            messages,
            timeout,
            "gossip averaging",
            screen=self._screen(initial_arrays, list(peer_of)),
            server_round=num_rounds,
        )
        # each site's final model: averaged, or (its peer refused) its last accepted one
        finals = {n: models[n] for n in models}
        finals.update({n: m.content.array_records["arrays"] for n, m in replies.items()})
        if not finals:
            raise FederationError("gossip: no site has a model that was not refused")
        self.consensus = consensus_distance(
            [from_record(finals[n]) for n in self.nodes if n in finals]
        )
        if self.progress is not None:
            self.progress.add(
                num_rounds,
                "average",
                {self.book.name(n): metrics_of(replies[n]) for n in self.nodes if n in replies},
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
