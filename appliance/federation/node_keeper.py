"""A site's SuperNode kept running: started again, with a growing pause, when it exits.

A SuperNode exits when the coordinator refuses to activate it. That is what happens
after a site's machine or SuperNode crashed and came straight back: the SuperLink still
holds the dead node's session as online until it misses two heartbeats (Flower 1.42:
up to 60 s), and refuses the same node (same key, same node id) until then. Restarting
it until the SuperLink lets it in brings the site back into the run from the next round;
giving up instead would leave it out of the rest of the run.

The pause after each exit doubles from ``first_backoff_s`` to ``max_backoff_s``. A
SuperNode that ran for ``min_uptime_s`` or longer before exiting counts as having
worked: the count of quick exits starts again. After ``max_quick_exits`` quick exits in
a row the keeper gives up with the SuperNode's log (a wrong key, a certificate the
coordinator rejects, ... do not heal by retrying).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.errors import FederationError
from appliance.federation.runner import Process

LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """When to start an exited SuperNode again (module doc)."""

    first_backoff_s: float = 2.0
    max_backoff_s: float = 10.0
    min_uptime_s: float = 60.0
    max_quick_exits: int = 30

    def __post_init__(self) -> None:
        values = (self.first_backoff_s, self.max_backoff_s, self.min_uptime_s)
        checks = (
            (all(math.isfinite(v) for v in values), "every duration must be finite"),
            (self.first_backoff_s > 0, "first_backoff_s must be > 0"),
            (
                self.max_backoff_s >= self.first_backoff_s,
                "max_backoff_s must be >= first_backoff_s",
            ),
            (self.min_uptime_s >= 0, "min_uptime_s must be >= 0"),
            (self.max_quick_exits >= 1, "max_quick_exits must be >= 1"),
        )
        for ok, message in checks:
            if not ok:
                raise FederationError(f"restart policy: {message}")

    def backoff(self, quick_exits: int) -> float:
        """The pause after the ``quick_exits``-th quick exit in a row (1-based)."""
        doublings = min(max(quick_exits - 1, 0), 32)
        return float(min(self.first_backoff_s * 2**doublings, self.max_backoff_s))


class KeptNode:
    """A SuperNode started by ``start`` and started again after it exits; call
    :meth:`check` periodically (the site's join loop does)."""

    def __init__(
        self,
        start: Callable[[], Process],
        policy: RestartPolicy | None = None,
        *,
        say: Callable[[str], None] = LOG.warning,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._start, self._say, self._clock = start, say, clock
        self.policy = policy or RestartPolicy()
        self.process = start()
        self._started_at = clock()
        self._due: float | None = None
        self.quick_exits = 0
        self.restarts = 0

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.alive()

    def check(self) -> None:
        """Start the SuperNode again if it has exited and its pause is over. Raises
        :class:`FederationError` (with the SuperNode's log) after too many quick exits."""
        if self.process.alive():
            return
        now = self._clock()
        if self._due is None:  # it has just exited
            code = self.process.stop()
            quick = now - self._started_at < self.policy.min_uptime_s
            self.quick_exits = self.quick_exits + 1 if quick else 1
            if self.quick_exits > self.policy.max_quick_exits:
                raise FederationError(
                    f"the SuperNode exited {self.quick_exits} times in a row, each within "
                    f"{self.policy.min_uptime_s:g} s of starting; its log:\n{self.process.tail()}"
                )
            pause = self.policy.backoff(self.quick_exits)
            self._due = now + pause
            self._say(f"the SuperNode exited (code {code}); starting it again in {pause:g} s")
        if now >= self._due:
            self._due = None
            self.process = self._start()
            self._started_at = self._clock()
            self.restarts += 1

    def stop(self) -> int | None:
        self._due = None
        return self.process.stop()
