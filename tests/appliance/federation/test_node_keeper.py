"""The site's SuperNode keeper: an exited SuperNode is started again after a pause that
doubles up to a cap; a run of quick exits ends it with the SuperNode's log."""

from __future__ import annotations

import pytest

from appliance.errors import FederationError
from appliance.federation.node_keeper import KeptNode, RestartPolicy


class _Node:
    """A stand-in SuperNode process that is alive until ``exit()``."""

    def __init__(self, number: int) -> None:
        self.number, self.running, self.stopped = number, True, 0

    @property
    def pid(self) -> int:
        return 1000 + self.number

    def alive(self) -> bool:
        return self.running

    def exit(self) -> None:
        self.running = False

    def stop(self) -> int:
        self.running = False
        self.stopped += 1
        return 305

    def tail(self) -> str:
        return f"log of node {self.number}"


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _keeper(policy: RestartPolicy) -> tuple[KeptNode, list[_Node], _Clock, list[str]]:
    started: list[_Node] = []
    said: list[str] = []
    clock = _Clock()

    def start() -> _Node:
        started.append(_Node(len(started)))
        return started[-1]

    keeper = KeptNode(start, policy, say=said.append, clock=clock)  # type: ignore[arg-type]
    return keeper, started, clock, said


def test_an_exited_supernode_is_started_again_after_a_growing_pause() -> None:
    keeper, started, clock, said = _keeper(RestartPolicy(2, 5, min_uptime_s=60))
    keeper.check()
    assert len(started) == 1  # alive: nothing to do
    for pause in (2.0, 4.0, 5.0, 5.0):  # refused by the coordinator again and again
        keeper.process.exit()  # type: ignore[attr-defined]
        clock.now += 1
        keeper.check()
        assert said[-1] == f"the SuperNode exited (code 305); starting it again in {pause:g} s"
        clock.now += pause - 0.5
        keeper.check()
        assert not keeper.alive()  # not before its pause is over
        clock.now += 0.5
        keeper.check()
        assert keeper.alive() and keeper.pid == 1000 + len(started) - 1
    assert keeper.restarts == 4 and keeper.quick_exits == 4
    assert all(node.stopped >= 1 for node in started[:-1])  # each old one reaped
    # one that worked for a while before it exited starts the count again
    clock.now += 600
    keeper.process.exit()  # type: ignore[attr-defined]
    keeper.check()
    assert keeper.quick_exits == 1 and said[-1].endswith("again in 2 s")


def test_too_many_quick_exits_end_the_keeper_with_the_log() -> None:
    keeper, started, clock, _ = _keeper(RestartPolicy(1, 1, min_uptime_s=60, max_quick_exits=3))
    for _ in range(3):
        keeper.process.exit()  # type: ignore[attr-defined]
        keeper.check()
        clock.now += 1
        keeper.check()
    keeper.process.exit()  # type: ignore[attr-defined]
    with pytest.raises(FederationError, match="exited 4 times in a row") as info:
        keeper.check()
    assert "log of node 3" in str(info.value) and len(started) == 4


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"first_backoff_s": 0}, "first_backoff_s must be > 0"),
        ({"first_backoff_s": 5, "max_backoff_s": 2}, "max_backoff_s must be >= first"),
        ({"min_uptime_s": float("nan")}, "every duration must be finite"),
        ({"max_quick_exits": 0}, "max_quick_exits must be >= 1"),
    ],
)
def test_a_bad_policy_says_what_is_wrong(values: dict[str, float], message: str) -> None:
    with pytest.raises(FederationError, match=message):
        RestartPolicy(**values)  # type: ignore[arg-type]
