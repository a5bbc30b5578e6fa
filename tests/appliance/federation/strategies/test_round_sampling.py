"""Sampling per round for large consortia (``round-sites`` / ``round-fraction``): the
averaging strategies train a fresh seeded draw of sites each round (every site still
evaluates), cwt visits a fresh draw each cycle, swt one draw; gossip refuses it."""

from __future__ import annotations

from typing import cast

import pytest
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from appliance.config import StrategyName
from appliance.errors import FederationError
from appliance.federation.settings import RunSettings, run_config_map
from appliance.federation.strategies import WeightTransfer, build_strategy
from tests.appliance.federation.strategies.replies import FakeGrid, book

NODES = list(range(1, 13))


@pytest.mark.parametrize(
    ("sites", "fraction", "connected", "expected"),
    [(0, 1.0, 12, 12), (4, 1.0, 12, 4), (20, 1.0, 12, 12), (0, 0.25, 12, 3), (0, 0.3, 12, 4),
     (0, 0.01, 12, 1), (0, 0.5, 7, 4)],
)  # fmt: skip
def test_round_sample_size(sites: int, fraction: float, connected: int, expected: int) -> None:
    run = RunSettings(round_sites=sites, round_fraction=fraction)
    assert run.round_sample(connected) == expected
    assert run.samples_rounds == (sites > 0 or fraction < 1)
    assert RunSettings.from_config(run_config_map(run)) == run


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"round-sites": -1}, "round-sites: must be >= 0"),
        ({"round-fraction": 0.0}, r"round-fraction: must be in \(0, 1\]"),
        ({"round-fraction": 1.5}, r"round-fraction: must be in \(0, 1\]"),
        ({"strategy": "gossip", "round-sites": 2}, "gossip pairs every site"),
    ],
)
def test_bad_sampling_settings_name_the_key(config: dict[str, object], message: str) -> None:
    with pytest.raises(FederationError, match=message):
        RunSettings.from_config(config)


def _trained(strategy: object, server_round: int, grid: Grid) -> list[int]:
    configure = strategy.configure_train  # type: ignore[attr-defined]
    return [
        m.metadata.dst_node_id for m in configure(server_round, ArrayRecord(), ConfigRecord(), grid)
    ]


@pytest.mark.usefixtures("flower_task")
@pytest.mark.parametrize("name", [StrategyName.FEDAVG, StrategyName.FEDBN, StrategyName.FEDGS])
def test_averaging_strategies_train_a_fresh_draw_each_round(name: StrategyName) -> None:
    grid = cast(Grid, FakeGrid(NODES))
    run = RunSettings(strategy=name, min_sites=12, round_sites=4, seed=3)
    strategy = build_strategy(run, book(12), None, frozenset({"norm.weight"}))
    draws = [_trained(strategy, r, grid) for r in range(1, 6)]
    assert all(len(d) == 4 == len(set(d)) and set(d) <= set(NODES) for d in draws)
    assert len({frozenset(d) for d in draws}) > 1  # not the same four every round
    # the same seed draws the same sites; every site still evaluates
    again = build_strategy(run, book(12), None, frozenset({"norm.weight"}))
    assert [_trained(again, r, grid) for r in range(1, 6)] == draws
    evaluated = strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid)
    assert sorted(m.metadata.dst_node_id for m in evaluated) == NODES
    # a fraction: a quarter of the twelve connected sites
    quarter = build_strategy(
        RunSettings(strategy=name, min_sites=12, round_fraction=0.25), book(12), None,
        frozenset({"norm.weight"}),
    )  # fmt: skip
    assert len(_trained(quarter, 1, grid)) == 3


def test_cwt_visits_a_fresh_draw_each_cycle_and_swt_one_draw() -> None:
    names = book(8)
    cwt = WeightTransfer(RunSettings(min_sites=8, round_sites=3, seed=2), names, None, single=False)
    cycles = cwt.schedule(4)
    assert len(cycles) == 4 and all(len(c) == 3 == len(set(c)) for c in cycles)
    assert len({tuple(c) for c in cycles}) > 1
    again = WeightTransfer(
        RunSettings(min_sites=8, round_sites=3, seed=2), names, None, single=False
    )
    assert again.schedule(4) == cycles
    # a configured order: each draw is visited in that order
    order = ("site_8", "site_3", "site_5", "site_1", "site_7", "site_2", "site_4", "site_6")
    ordered = WeightTransfer(
        RunSettings(min_sites=8, round_fraction=0.5, site_order=order), names, None, single=False
    )
    for cycle in ordered.schedule(3):
        assert len(cycle) == 4 and cycle == sorted(cycle, key=order.index)
    swt = WeightTransfer(RunSettings(min_sites=8, round_sites=2, seed=2), names, None, single=True)
    visits = swt.schedule(3)  # two sites, three local rounds at each
    assert len(visits) == 6 and len({v[0] for v in visits}) == 2
    assert visits[0] == visits[1] == visits[2] and visits[3] == visits[4] == visits[5]
    # without sampling: every site, the sorted names or the configured order
    everyone = WeightTransfer(RunSettings(min_sites=8), names, None, single=False)
    assert everyone.schedule(2) == [sorted(names.names.values())] * 2
