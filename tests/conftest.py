from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.peers import ApplianceProcess, free_port, write_config


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every interop test runs apart from the unit tests (``serial``: make test's second
    pass, two at a time) unless it is marked ``unhurried``: real services beside the unit
    tests miss start-up waits, stop deadlines and Flower's heartbeats. Tests marked
    ``alone`` (they time themselves) run one at a time, in the third pass. Files with slow
    tests are collected first."""
    for item in items:
        interop = item.get_closest_marker("interop")
        if item.get_closest_marker("alone") or (
            interop and not item.get_closest_marker("unhurried")
        ):
            item.add_marker(pytest.mark.serial)
    # Files with slow tests first, each file's tests kept together and in order: the
    # parallel pass hands out whole files, and the long ones started last would run only
    # beside each other at the end instead of beside the quick ones.
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)


@pytest.fixture
def appliance_factory(tmp_path: Path) -> Iterator[Callable[..., ApplianceProcess]]:
    """Start real ``appliance serve`` processes; all are stopped by PID at teardown."""
    started: list[ApplianceProcess] = []

    def make(
        *,
        quiet: float = 1.0,
        allowed_callers: tuple[Any, ...] = (),
        destinations: tuple[dict[str, Any], ...] = (),
        name: str = "app",
        start: bool = True,
        extra: str = "",
    ) -> ApplianceProcess:
        port = free_port()
        root = tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        config = write_config(
            root / "appliance.toml",
            port=port,
            root=root / "data",
            quiet=quiet,
            allowed_callers=allowed_callers,
            destinations=destinations,
            extra=extra,
        )
        app = ApplianceProcess(config, port, root / "data", root / "appliance.log")
        started.append(app)
        return app.start() if start else app

    yield make
    for app in started:
        app.stop()
