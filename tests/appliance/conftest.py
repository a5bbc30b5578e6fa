from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.store import Store


class Clock:
    """A settable clock for the store: time only moves when a test says so."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.t = [start]

    def __call__(self) -> float:
        return self.t[0]

    def advance(self, seconds: float) -> None:
        self.t[0] += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[Store]:
    s = Store(tmp_path / "db" / "appliance.sqlite3", clock=clock)
    yield s
    s.close()
