"""What every strategy needs: which node is which site, and replies read in site order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import DEFAULT_TTL, Error, Message

from appliance.errors import FederationError


@dataclass
class SiteBook:
    """Node ids -> site names and case counts (from the ``query.info`` round), and the
    nodes whose description was refused there (node id -> reason; every reply of theirs
    is refused, :mod:`.screening`)."""

    names: dict[int, str] = field(default_factory=dict)
    cases: dict[int, int] = field(default_factory=dict)
    refused: dict[int, str] = field(default_factory=dict)

    def name(self, node_id: int) -> str:
        return self.names.get(node_id, f"node_{node_id}")

    def node_of(self, site: str) -> int:
        for node, name in self.names.items():
            if name == site:
                return node
        raise FederationError(f"site-order: no connected site is named {site!r}")


def site_of(msg: Message, book: SiteBook) -> str:
    """The site a reply comes from: the name it gives, else (also for an error reply,
    which has no content) the book's name of its node."""
    if msg.has_content() and "site" in msg.content.config_records:
        return str(msg.content.config_records["site"].get("site", ""))
    return book.name(msg.metadata.src_node_id)


def metrics_of(msg: Message) -> dict[str, Any]:
    """A reply's metrics (its first ``MetricRecord``), or its error as ``{"error": ...}``."""
    if msg.has_error():
        return {"error": str(msg.error.reason)}
    records = msg.content.metric_records
    return dict(next(iter(records.values()))) if records else {}


def in_site_order(replies: Iterable[Message], book: SiteBook) -> list[Message]:
    """Replies sorted by site name (then node id). Replies arrive in whatever order the
    sites finish; floating-point sums depend on the order of their terms, so aggregating
    in arrival order would make two runs with the same seed differ in the last bits, and
    over rounds in the Dice."""
    return sorted(replies, key=lambda m: (site_of(m, book), m.metadata.src_node_id))


def message_ttl(timeout_s: float) -> float:
    """The time to live of a message a round sends: its deadline (within Flower's
    default). The SuperLink never delivers an expired message, so a site that comes
    back late (a SuperNode restarted, a machine that froze) does not train for a round
    that has already ended but picks up the current one."""
    return float(min(timeout_s, DEFAULT_TTL))


def attribute(replies: Iterable[Message], sent: Iterable[Message]) -> list[Message]:
    """``replies`` with each error the SuperLink made on a node's behalf (node
    unavailable: its heartbeats stopped; message unavailable: it expired unanswered)
    re-addressed as if from the node the message was sent to, so it is charged to that
    site. Such errors come from the SuperLink's own node id and name the message they
    answer (``sent``: the messages of this exchange, after the grid pushed them)."""
    by_id = {m.metadata.message_id: m for m in sent if m.metadata.message_id}
    out = []
    for msg in replies:
        original = by_id.get(msg.metadata.reply_to_message_id)
        if (
            msg.has_error()
            and original is not None
            and original.metadata.dst_node_id != msg.metadata.src_node_id
        ):
            msg = Message(Error(code=msg.error.code, reason=msg.error.reason), reply_to=original)
        out.append(msg)
    return out


def check_replies(replies: list[Message], book: SiteBook, what: str) -> None:
    """Raise :class:`FederationError` naming every site whose reply is an error."""
    failed = [f"{site_of(m, book)}: {m.error.reason}" for m in replies if m.has_error()]
    if failed:
        raise FederationError(f"{what} failed at " + "; ".join(failed))
