from __future__ import annotations

import pytest
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture
def flower_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lets a test make instruction messages (``configure_train``, ...) outside a Flower
    ServerApp process: Flower stamps them with the process's run, node and task ids."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
