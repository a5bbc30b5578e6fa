"""The coordinator refuses what a site should not have sent: non-finite arrays, arrays
that are not the global model's, example counts outside 1..the site's cases, oversized
updates. A refused reply is dropped from its round (reason logged and recorded), the
others are aggregated; a round whose replies are all refused fails."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from appliance.config import StrategyName
from appliance.errors import FederationError
from appliance.federation.params import from_record, to_record
from appliance.federation.progress import ProgressLog, read_progress
from appliance.federation.settings import RunSettings
from appliance.federation.strategies import Gossip, WeightTransfer, build_strategy
from tests.appliance.federation.strategies.replies import NORM, FakeGrid, book, reply

W = np.zeros(2, np.float32)
NAN = np.asarray([np.nan, 1.0], np.float32)
#: site node -> (its ``w``, its metrics, what its refusal must say); every site has 3 cases
BAD: dict[int, tuple[np.ndarray, dict[str, float], str]] = {
    2: (NAN, {"num-examples": 1}, r"array w has non-finite values"),
    3: (np.asarray([np.inf, 1.0], np.float32), {"num-examples": 1}, r"non-finite"),
    4: (W, {"num-examples": -1}, r"num-examples=-1 is outside 1\.\.3 \(the training cases"),
    5: (W, {"num-examples": 1e9}, r"num-examples=1000000000(\.0)? is outside 1\.\.3"),
    6: (W, {"num-examples": 2.5}, r"num-examples=2\.5 is outside"),
    7: (np.zeros(3, np.float32), {"num-examples": 1}, r"array w is float32 \[3\], the global"),
    8: (np.zeros(2, np.float64), {"num-examples": 1}, r"array w is float64 \[2\]"),
}
NODES = [1, *BAD]
FAMILIES = [
    StrategyName.FEDAVG,
    StrategyName.FEDPROX,
    StrategyName.FEDMEDIAN,
    StrategyName.FEDTRIMMEDAVG,
    StrategyName.KRUM,
    StrategyName.FEDBN,
    StrategyName.FEDGS,
]


def _run(name: StrategyName = StrategyName.FEDAVG, **options: Any) -> RunSettings:
    return RunSettings(**{"strategy": name, "min_sites": len(NODES), "local_steps": 5, **options})


def _model(name: StrategyName, w: np.ndarray) -> dict[str, np.ndarray]:
    """A reply's arrays: FedBN sites keep their normalisation entries."""
    return {"w": w} if name == StrategyName.FEDBN else {"w": w, "norm.weight": np.ones(2)}


def _strategy(name: StrategyName, progress: ProgressLog | None = None) -> Strategy:
    strategy = build_strategy(_run(name), book(len(NODES), [3] * len(NODES)), progress, NORM)
    # the round's configure_train: the strategy learns the model it sends out
    sent = {"w": W, "norm.weight": np.ones(2)}
    grid = cast(Grid, FakeGrid(NODES))
    list(strategy.configure_train(1, to_record(sent), ConfigRecord({}), grid))
    return strategy


@pytest.mark.usefixtures("flower_task")
def test_bad_replies_are_refused_with_their_reason_and_the_good_ones_aggregated(
    tmp_path: Path,
) -> None:
    progress = ProgressLog(tmp_path, "1", "fedavg", 1)
    strategy = _strategy(StrategyName.FEDAVG, progress)
    name = StrategyName.FEDAVG
    bad = [reply(n, _model(name, w), m) for n, (w, m, _) in BAD.items()]
    good = [reply(1, _model(name, np.ones(2, np.float32)), {"num-examples": 3})]
    arrays, _ = strategy.aggregate_train(1, bad + good)
    assert arrays is not None and np.allclose(from_record(arrays)["w"], 1.0)
    saved = read_progress(tmp_path)
    assert saved is not None
    refused = next(e for e in saved["history"] if e["phase"] == "refused")["sites"]
    assert set(refused) == {f"site_{n}" for n in BAD}
    for node, (_, _, reason) in BAD.items():
        assert re.search(reason, refused[f"site_{node}"]["refused"]), refused[f"site_{node}"]
    trained = next(e for e in saved["history"] if e["phase"] == "train")["sites"]
    assert set(trained) == {"site_1"}


def test_integer_buffers_may_come_back_as_floats_and_back() -> None:
    """FedAvg averages BatchNorm's int64 ``num_batches_tracked`` into a float64: the next
    round sends that, and the sites reply in their model's int64 (a real run's round 2)."""
    from flwr.app import Array

    from appliance.federation.strategies.screening import Layout

    sent = ArrayRecord({"n": Array(np.asarray(3.0)), "w": Array(np.zeros(2, np.float32))})
    layout = Layout.of(sent)
    assert layout is not None
    back = ArrayRecord({"n": Array(np.asarray(4, np.int64)), "w": Array(np.ones(2, np.float32))})
    assert layout.mismatch(back) is None
    wide = ArrayRecord({"n": Array(np.asarray(4.0)), "w": Array(np.ones(2, np.float64))})
    assert "array w is float64 [2]" in (layout.mismatch(wide) or "")
    text = ArrayRecord({"n": Array(np.asarray(["x"])), "w": Array(np.ones(2, np.float32))})
    assert layout.mismatch(text) is not None


@pytest.mark.usefixtures("flower_task")
def test_arrays_that_are_not_the_global_models_names_are_refused() -> None:
    strategy = _strategy(StrategyName.FEDAVG)
    extra = {**_model(StrategyName.FEDAVG, W), "x": W}
    renamed = {"v": W, "norm.weight": np.ones(2)}
    with pytest.raises(FederationError) as info:
        strategy.aggregate_train(
            1, [reply(1, extra, {"num-examples": 1}), reply(2, renamed, {"num-examples": 1})]
        )
    text = str(info.value)
    assert "round 1 training: every reply was refused" in text
    assert "site_1: arrays do not match the global model: unexpected x" in text
    assert "site_2: arrays do not match the global model: missing w, unexpected v" in text


@pytest.mark.usefixtures("flower_task")
@pytest.mark.parametrize("name", FAMILIES)
def test_every_fedavg_family_strategy_refuses_before_aggregating(name: StrategyName) -> None:
    strategy = _strategy(name)
    metrics = {"num-examples": 3, "steps": 5}
    replies = [
        reply(1, _model(name, np.full(2, 2.0, np.float32)), metrics),
        reply(2, _model(name, NAN), metrics),
        reply(3, _model(name, np.full(2, 7.0, np.float32)), {"num-examples": 3, "steps": 6}),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    # only site_1 is left (site_3's 6 steps are over local-steps = 5 where they weigh:
    # fedgs; elsewhere site_3 is averaged in)
    state = from_record(arrays)
    expected = 2.0 if name in (StrategyName.FEDGS, StrategyName.KRUM) else 4.5
    assert np.allclose(state["w"], expected)
    with pytest.raises(FederationError, match="every reply was refused: site_2: array w"):
        strategy.aggregate_train(2, [reply(2, _model(name, NAN), metrics)])


@pytest.mark.usefixtures("flower_task")
def test_fedgs_refuses_steps_over_the_runs_local_steps() -> None:
    strategy = _strategy(StrategyName.FEDGS)
    over = reply(1, _model(StrategyName.FEDGS, W), {"num-examples": 3, "steps": 6})
    with pytest.raises(FederationError, match=r"steps=6 is outside 1\.\.5 \(the run's local"):
        strategy.aggregate_train(1, [over])


@pytest.mark.usefixtures("flower_task")
def test_an_update_over_max_update_bytes_is_refused() -> None:
    run = _run(max_update_bytes=200)
    strategy = build_strategy(run, book(2, [3, 3]), None, NORM)
    big = {"w": np.zeros(100, np.float32)}
    with pytest.raises(FederationError, match=r"bytes, over max-update-bytes=200"):
        strategy.aggregate_train(1, [reply(1, big, {"num-examples": 1})])


def test_a_site_refused_at_discovery_or_posing_as_another_is_refused() -> None:
    sites = book(2, [3, 3])
    sites.refused[1] = "cases=1e9 is outside 0..1000000 (max-site-cases)"
    strategy = build_strategy(_run(min_sites=2), sites, None, NORM)
    impostor = reply(2, {"w": W}, {"num-examples": 1})
    impostor.content["site"] = ConfigRecord({"site": "site_1"})
    with pytest.raises(FederationError) as info:
        strategy.aggregate_train(1, [reply(1, {"w": W}, {"num-examples": 1}), impostor])
    assert "site_1: its description at discovery was refused (cases=1e9" in str(info.value)
    assert "site_2: the reply calls itself 'site_1'" in str(info.value)


@pytest.mark.usefixtures("flower_task")
def test_weight_transfer_fails_the_visit_on_a_refused_reply() -> None:
    strategy = WeightTransfer(_run(), book(2, [3, 3]), None, single=False)
    strategy._next_site = "site_1"
    grid = cast(Grid, FakeGrid([1, 2]))
    list(strategy.configure_train(1, to_record({"w": W}), ConfigRecord({}), grid))
    with pytest.raises(FederationError, match="site_1: array w has non-finite"):
        strategy.aggregate_train(1, [reply(1, {"w": NAN}, {"num-examples": 3})])
    arrays, _ = strategy.aggregate_train(1, [reply(1, {"w": W + 1}, {"num-examples": 3})])
    assert arrays is not None and np.allclose(from_record(arrays)["w"], 1.0)


@pytest.mark.usefixtures("flower_task")
def test_gossip_relays_no_refused_model_and_finishes(tmp_path: Path) -> None:
    def answer(msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        config: Any = msg.content["config"]
        w = NAN if node == 2 and config["server-round"] == 1 else np.full(2, node, np.float32)
        return reply(node, {"w": w}, {"num-examples": 1}, msg.metadata.message_type)

    progress = ProgressLog(tmp_path, "1", "gossip", 2)
    strategy = Gossip(_run(StrategyName.GOSSIP, evaluate=False), book(4), progress)
    grid = FakeGrid([1, 2, 3, 4], answer)
    strategy.start(cast(Grid, grid), to_record({"w": W}), num_rounds=2)
    round_two = [
        m
        for m in grid.sent
        if m.metadata.message_type == "train"
        and cast(Any, m.content["config"])["server-round"] == 2
    ]
    for msg in round_two:
        arrays = from_record(cast(ArrayRecord, msg.content["arrays"]))
        assert np.all(np.isfinite(arrays["w"]))
    # the refused site is paired with nobody; the others re-pair among themselves
    assert set(strategy.pairings[0]) == {"site_1", "site_3", "site_4"}
    assert "site_2" not in strategy.pairings[0].values()
    has_peer = {
        m.metadata.dst_node_id: cast(Any, m.content["config"])["has-peer"] for m in round_two
    }
    assert has_peer == {1: True, 2: False, 3: True, 4: True}
    saved = read_progress(tmp_path)
    assert saved is not None
    refused = [e for e in saved["history"] if e["phase"] == "refused"]
    assert refused[0]["round"] == 1 and "non-finite" in refused[0]["sites"]["site_2"]["refused"]
    assert strategy.consensus is not None and np.isfinite(strategy.consensus)
