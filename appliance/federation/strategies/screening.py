"""What the coordinator refuses from a site before anything is aggregated.

A site is a peer, not a trusted party: its training reply is read only after it passes
:func:`refusal`, which refuses (with a reason naming the problem)

- a reply from a node whose description at discovery was refused, or that calls itself
  by another site's name;
- ``num-examples`` (the FedAvg weight) that is not a whole number from 1 to the training
  cases the site reported at discovery (:class:`~.common.SiteBook` ``cases``, themselves
  bounded by the run's ``max-site-cases``), and where a strategy weights by ``steps``
  (FedGS) a step count outside ``1..local-steps``;
- arrays over ``max-update-bytes`` in all;
- arrays whose names, shapes or dtypes differ from the model sent that round (an
  integer array may stand for a floating one and back: :class:`Layout`);
- arrays with a NaN or an infinity.

:func:`screen` applies it to a round's replies: each refused reply is dropped from the
round, logged with its site and reason, and recorded in the progress log (phase
``refused``, ``{"refused": reason}`` per site); when every reply is refused the round
fails with :class:`~appliance.errors.FederationError` instead of aggregating nothing.

A site asked that does not reply within the round's deadline is left out of the round,
logged and recorded (phase ``dropped``, ``{"dropped": reason}`` per site). A site that
fails (an error reply: its ClientApp raised, its SuperNode went away) fails the round,
unless the run tolerates dropouts (``round-min-sites`` / ``round-min-fraction``): then
it is dropped the same way, and the round fails only when fewer of the sites asked than
that minimum replied.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message
from flwr.common import log
from flwr.common.constant import ErrorCode

from appliance.errors import FederationError
from appliance.federation.progress import ProgressLog
from appliance.federation.strategies.common import SiteBook, check_replies, metrics_of, site_of

#: at most this many names are listed in a reason
_LISTED = 5


@dataclass(frozen=True)
class Layout:
    """Names, shapes and dtypes of the arrays a reply must carry (the model sent out)."""

    entries: Mapping[str, tuple[tuple[int, ...], str]]

    @classmethod
    def of(cls, record: ArrayRecord, *, exclude: frozenset[str] = frozenset()) -> Layout | None:
        """The layout of ``record`` without ``exclude``; ``None`` for an empty record
        (nothing was sent, so there is nothing to compare with)."""
        if not len(record):
            return None
        return cls(
            {k: (tuple(a.shape), str(a.dtype)) for k, a in record.items() if k not in exclude}
        )

    def mismatch(self, record: ArrayRecord) -> str | None:
        """Why ``record`` does not have this layout, or ``None``."""
        missing = [k for k in self.entries if k not in record]
        unexpected = [k for k in record if k not in self.entries]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing {_listed(missing)}")
            if unexpected:
                parts.append(f"unexpected {_listed(unexpected)}")
            return "arrays do not match the global model: " + ", ".join(parts)
        for key, array in record.items():
            shape, dtype = tuple(array.shape), str(array.dtype)
            want_shape, want_dtype = self.entries[key]
            if shape != want_shape or not _same_numbers(dtype, want_dtype):
                return (
                    f"array {key} is {dtype} {list(shape)}, the global model's is "
                    f"{want_dtype} {list(want_shape)}"
                )
        return None


def _same_numbers(dtype: str, want: str) -> bool:
    """Whether an array of ``dtype`` may stand for the global model's ``want``: the same
    dtype, or an integer one for a floating one and back. Integer buffers (BatchNorm's
    ``num_batches_tracked``) come out of averaging as floats and go to the sites so,
    while each site replies in its own model's dtype."""
    if dtype == want:
        return True
    try:
        kinds = np.dtype(dtype).kind, np.dtype(want).kind
    except TypeError:
        return False
    return sorted(k in "iu" for k in kinds) == [False, True] and all(k in "iuf" for k in kinds)


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def _whole(value: Any) -> int | None:
    """``value`` as an int when it is a finite whole number, else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and (not np.isfinite(value) or not value.is_integer()):
        return None
    return int(value)


def _count_problem(name: str, value: Any, most: int, source: str) -> str | None:
    count = _whole(value)
    if count is None or not 1 <= count <= most:
        return f"{name}={value!r} is outside 1..{most} ({source})"
    return None


def nonfinite(record: ArrayRecord) -> str | None:
    """The first array of ``record`` that cannot be read or holds a NaN or infinity."""
    for key, array in record.items():
        try:
            values = array.numpy()
        except Exception as exc:  # the bytes do not make the array they claim to be
            return f"array {key} cannot be read ({type(exc).__name__})"
        if values.dtype.kind in "fc" and not np.all(np.isfinite(values)):
            return f"array {key} has non-finite values (NaN or infinity)"
    return None


@dataclass(frozen=True)
class Screen:
    """What a strategy refuses in its sites' training replies (see the module's doc).

    ``layout``: the model sent that round (``None``: unknown, not compared);
    ``max_steps``: bound of the ``steps`` metric where a strategy weights by it;
    ``extra``: a strategy's own refusal (FedBN: normalisation entries sent)."""

    book: SiteBook
    max_update_bytes: int
    layout: Layout | None = None
    max_steps: int | None = None
    extra: Callable[[Message], str | None] | None = None
    #: the nodes asked this round (``None``: unknown), the accepted replies the round
    #: needs, its deadline (for the record), and whether sites that fail or miss the
    #: deadline are left out (``tolerant``) instead of failing the round
    asked: tuple[int, ...] | None = None
    minimum: int = 1
    deadline_s: float = 0.0
    tolerant: bool = False

    def refusal(self, msg: Message) -> str | None:
        """Why this (non-error) training reply is refused, or ``None`` to accept it."""
        node = msg.metadata.src_node_id
        if node in self.book.refused:
            return f"its description at discovery was refused ({self.book.refused[node]})"
        if node not in self.book.cases:
            return "the node was not among the sites found at discovery"
        claimed = site_of(msg, self.book)
        if claimed != self.book.name(node):
            return f"the reply calls itself {claimed!r}"
        metrics = metrics_of(msg)
        cases = self.book.cases[node]
        problem = _count_problem(
            "num-examples",
            metrics.get("num-examples"),
            cases,
            "the training cases it reported at discovery",
        )
        if problem is None and self.max_steps is not None:
            problem = _count_problem(
                "steps", metrics.get("steps"), self.max_steps, "the run's local-steps"
            )
        if problem is not None:
            return problem
        record = msg.content.array_records.get("arrays")
        if record is None:
            return "the reply carries no arrays"
        size = sum(len(array.data) for array in record.values())
        if size > self.max_update_bytes:
            return f"its arrays are {size} bytes, over max-update-bytes={self.max_update_bytes}"
        if self.extra is not None and (own := self.extra(msg)) is not None:
            return own
        if self.layout is not None and (mismatch := self.layout.mismatch(record)) is not None:
            return mismatch
        return nonfinite(record)

    def __call__(
        self,
        replies: list[Message],
        what: str,
        *,
        progress: ProgressLog | None = None,
        server_round: int = 0,
    ) -> list[Message]:
        """The replies to aggregate (order kept). A reply that is an error fails the round
        (:func:`~.common.check_replies`) unless dropouts are tolerated (module doc); a
        refused one is dropped, logged and recorded. Raises :class:`FederationError` when
        fewer than ``minimum`` of the sites asked replied, or all replies were refused."""
        dropped: dict[str, str] = {}
        if not self.tolerant:
            check_replies(replies, self.book, what)
        if self.asked is not None:
            replies, dropped = self._dropouts(replies, what)
            if dropped and progress is not None:
                progress.add(
                    server_round, "dropped", {s: {"dropped": r} for s, r in dropped.items()}, None
                )
            if len(replies) < self.minimum:
                raise FederationError(
                    f"{what}: {len(replies)} of the {len(self.asked)} sites asked replied, the "
                    f"round needs {self.minimum}: "
                    + "; ".join(f"{s}: {r}" for s, r in dropped.items())
                )
        accepted: list[Message] = []
        refused: dict[str, str] = {}
        for msg in replies:
            reason = self.refusal(msg)
            if reason is None:
                accepted.append(msg)
                continue
            site = self.book.name(msg.metadata.src_node_id)
            refused[site] = reason
            log(WARNING, "%s: refused the reply of site %s: %s", what, site, reason)
        if refused and progress is not None:
            progress.add(
                server_round, "refused", {s: {"refused": r} for s, r in refused.items()}, None
            )
        if replies and not accepted:
            raise FederationError(
                f"{what}: every reply was refused: "
                + "; ".join(f"{s}: {r}" for s, r in refused.items())
            )
        return accepted

    def _dropouts(self, replies: list[Message], what: str) -> tuple[list[Message], dict[str, str]]:
        """The replies that are not errors, and the sites dropped from the round (errors,
        and sites asked that did not reply by the deadline) with why."""
        assert self.asked is not None
        dropped: dict[str, str] = {}
        kept: list[Message] = []
        late = f"no reply within the round's deadline ({self.deadline_s:g} s)"
        for msg in replies:
            if not msg.has_error():
                kept.append(msg)
            elif msg.error.code == ErrorCode.MESSAGE_UNAVAILABLE:  # expired unanswered
                dropped[self.book.name(msg.metadata.src_node_id)] = late
            else:
                dropped[self.book.name(msg.metadata.src_node_id)] = f"failed: {msg.error.reason}"
        answered = {m.metadata.src_node_id for m in replies}
        for node in self.asked:
            if node not in answered:
                dropped[self.book.name(node)] = late
        for site, reason in dropped.items():
            log(WARNING, "%s: site %s left out: %s", what, site, reason)
        return kept, dropped
