"""Hand-made Flower messages and a stand-in ``Grid`` for strategy tests (no SuperLink)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from flwr.app import ConfigRecord, Error, Message, MessageType, Metadata, MetricRecord, RecordDict

from appliance.federation.params import to_record
from appliance.federation.strategies import SiteBook

NORM = frozenset({"norm.weight"})


def reply(
    node: int,
    arrays: Mapping[str, np.ndarray],
    metrics: dict[str, float],
    message_type: str = MessageType.TRAIN,
) -> Message:
    """Site ``site_<node>``'s reply from node ``node``."""
    content = RecordDict(
        {
            "arrays": to_record(arrays),
            "metrics": MetricRecord(metrics),
            "site": ConfigRecord({"site": f"site_{node}"}),
        }
    )
    metadata = Metadata(
        run_id=1,
        message_id=f"m{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id=f"i{node}",
        group_id="1",
        created_at=0.0,
        ttl=60.0,
        message_type=message_type,
    )
    return Message(content=content, metadata=metadata)


def failure(node: int, reason: str, message_type: str = MessageType.TRAIN) -> Message:
    """An error reply from node ``node`` (its ClientApp raised, or Flower says the node is
    gone)."""
    ok = reply(node, {}, {}, message_type)
    return Message(metadata=ok.metadata, error=Error(code=0, reason=reason))


def book(n: int = 2, cases: Sequence[int] | None = None) -> SiteBook:
    """Nodes ``1..n`` named ``site_<node>`` with ``cases[node - 1]`` (default ``<node>``)
    training cases reported at discovery."""
    counts = list(cases) if cases is not None else list(range(1, n + 1))
    return SiteBook(
        {i: f"site_{i}" for i in range(1, n + 1)}, {i: counts[i - 1] for i in range(1, n + 1)}
    )


class FakeGrid:
    """The part of Flower's ``Grid`` the strategies use: the connected nodes, and replies
    made by ``answer`` to each message sent (messages kept in ``sent``)."""

    def __init__(
        self, nodes: Iterable[int], answer: Callable[[Message], Message] | None = None
    ) -> None:
        self.nodes = list(nodes)
        self.answer = answer
        self.sent: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float) -> list[Message]:
        assert self.answer is not None
        sent = list(messages)
        self.sent.extend(sent)
        return [self.answer(m) for m in sent]
