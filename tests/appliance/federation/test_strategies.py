"""Strategy classes on hand-made Flower messages (no SuperLink), settings, and the
hand-off files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import (
    ConfigRecord,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
    RecordDict,
)

from appliance.errors import FederationError
from appliance.federation.outputs import read_result, site_weights, write_result
from appliance.federation.params import from_record, to_record
from appliance.federation.progress import ProgressLog, read_progress
from appliance.federation.settings import (
    RunSettings,
    SiteSettings,
    StrategyName,
    run_config_map,
)
from appliance.federation.site_state import merge_site_norm, run_dir, save_state
from appliance.federation.strategies import (
    FedBN,
    FedGS,
    SiteBook,
    SiteFedAvg,
    WeightTransfer,
    build_strategy,
    train_mode,
)

NORM = frozenset({"norm.weight"})


def _reply(node: int, arrays: dict[str, np.ndarray], metrics: dict[str, float]) -> Message:
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
        message_type=MessageType.TRAIN,
    )
    return Message(content=content, metadata=metadata)


def _book(n: int = 2) -> SiteBook:
    return SiteBook({i: f"site_{i}" for i in range(1, n + 1)}, {i: i for i in range(1, n + 1)})


def test_fedavg_weights_by_cases_and_records_progress(tmp_path: Path) -> None:
    progress = ProgressLog(tmp_path, "7", "fedavg", 1)
    strategy = SiteFedAvg(RunSettings(min_sites=2), _book(), progress)
    replies = [
        _reply(1, {"w": np.asarray([1.0])}, {"num-examples": 3, "steps": 2}),
        _reply(2, {"w": np.asarray([5.0])}, {"num-examples": 1, "steps": 2}),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and np.allclose(from_record(arrays)["w"], 2.0)
    saved = read_progress(tmp_path)
    assert saved is not None and saved["history"][0]["sites"]["site_1"]["num-examples"] == 3


def test_fedbn_keeps_global_norm_entries_and_refuses_sent_ones() -> None:
    strategy = FedBN(RunSettings(min_sites=2), _book(), None, NORM)
    strategy._current = {"w": np.asarray([0.0]), "norm.weight": np.asarray([9.0])}
    replies = [
        _reply(1, {"w": np.asarray([2.0])}, {"num-examples": 1}),
        _reply(2, {"w": np.asarray([4.0])}, {"num-examples": 1}),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    state = from_record(arrays)
    assert np.allclose(state["w"], 3.0) and np.allclose(state["norm.weight"], 9.0)
    leaking = [
        _reply(1, {"w": np.asarray([2.0]), "norm.weight": np.asarray([1.0])}, {"num-examples": 1})
    ]
    with pytest.raises(FederationError, match="normalisation"):
        strategy.aggregate_train(1, leaking)


def test_fedgs_applies_step_weighted_updates() -> None:
    strategy = FedGS(RunSettings(min_sites=2, server_momentum=0.0), _book(), None)
    strategy._current = {"w": np.asarray([1.0])}
    replies = [
        _reply(1, {"w": np.asarray([1.0])}, {"num-examples": 1, "steps": 3}),
        _reply(2, {"w": np.asarray([-3.0])}, {"num-examples": 1, "steps": 1}),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and np.allclose(from_record(arrays)["w"], 1.0 + 0.0)


@pytest.mark.parametrize("name", ["fedavg", "fedbn", "fedgs"])
def test_aggregation_does_not_depend_on_the_order_replies_arrive(name: str) -> None:
    """Sites finish in any order; the aggregate must be bit-identical (float sums are not
    associative), or two runs of one seed drift apart over the rounds."""
    rng = np.random.default_rng(3)
    sizes = [3, 1, 2, 5]
    states = [
        {"w": (rng.normal(size=20000) * 10.0 ** rng.integers(-3, 3)).astype(np.float32)}
        for _ in sizes
    ]

    def aggregate(order: list[int]) -> np.ndarray:
        book = _book(len(sizes))
        run = RunSettings(min_sites=len(sizes))
        strategy: SiteFedAvg | FedBN | FedGS
        if name == "fedavg":
            strategy = SiteFedAvg(run, book, None)
        elif name == "fedbn":
            strategy = FedBN(run, book, None, NORM)
            strategy._current = {"w": np.zeros(20000, np.float32)}
        else:
            strategy = FedGS(run, book, None)
            strategy._current = {"w": np.zeros(20000, np.float32)}
        replies = [
            _reply(i + 1, states[i], {"num-examples": sizes[i], "steps": 7 * sizes[i]})
            for i in order
        ]
        arrays, _ = strategy.aggregate_train(1, replies)
        assert arrays is not None
        return from_record(arrays)["w"]

    first = aggregate([0, 1, 2, 3])
    for order in ([3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]):
        assert np.array_equal(aggregate(order), first)


def test_weight_transfer_order_and_no_averaging() -> None:
    book = _book(3)
    strategy = WeightTransfer(
        RunSettings(min_sites=3, site_order=("site_3", "site_1", "site_2")),
        book,
        None,
        single=False,
    )
    assert strategy.order == ["site_3", "site_1", "site_2"]
    arrays, _ = strategy.aggregate_train(
        1, [_reply(3, {"w": np.asarray([7.0])}, {"num-examples": 1})]
    )
    assert arrays is not None and np.allclose(from_record(arrays)["w"], 7.0)
    with pytest.raises(FederationError, match="site-order"):
        WeightTransfer(RunSettings(site_order=("nowhere",)), book, None, single=True)


def test_build_strategy_by_name_and_modes() -> None:
    book = _book(3)
    for name in StrategyName:
        strategy = build_strategy(RunSettings(strategy=name, min_sites=3), book, None, NORM)
        assert strategy is not None
    assert train_mode(StrategyName.FEDBN) == "fedbn"
    assert train_mode(StrategyName.CWT) == "full"
    wrapped = build_strategy(
        RunSettings(strategy=StrategyName.FEDAVG, dp_clipping_norm=1.0, dp_noise_multiplier=0.1),
        book,
        None,
        NORM,
    )
    assert type(wrapped).__name__ == "DifferentialPrivacyClientSideFixedClipping"


def test_run_settings_round_trip_and_errors_name_the_key() -> None:
    settings = RunSettings(
        strategy=StrategyName.SWT,
        rounds=3,
        net_filters=(4, 8),
        net_res_units=0,
        patch_size=(16, 16, 16),
        target_spacing=(5.0, 5.0, 5.0),
        site_order=("a", "b"),
    )
    assert RunSettings.from_config(run_config_map(settings)) == settings
    assert RunSettings.from_config(run_config_map(RunSettings())) == RunSettings()
    with pytest.raises(FederationError, match="strategy"):
        RunSettings.from_config({"strategy": "fedfoo"})
    with pytest.raises(FederationError, match="num-rounds"):
        RunSettings.from_config({"num-rounds": 0})
    with pytest.raises(FederationError, match="patch-size"):
        RunSettings.from_config({"patch-size": "16,16"})
    with pytest.raises(FederationError, match="dp-clipping-norm"):
        RunSettings.from_config({"strategy": "fedbn", "dp-clipping-norm": 1.0})
    with pytest.raises(FederationError, match="site-name"):
        SiteSettings.from_config({"site-name": "../etc"})
    assert SiteSettings.from_config({"partition-id": 2}).site == "site_2"


def test_result_hand_off_and_site_norm_merge(tmp_path: Path) -> None:
    state = {"w": np.asarray([1.0], np.float32), "norm.weight": np.asarray([0.0], np.float32)}
    result = write_result(
        tmp_path,
        run_id="42",
        strategy="fedbn",
        rounds=2,
        task="glioma_mr",
        network={"name": "unet"},
        task_overrides={},
        sites=["a", "b"],
        state=state,
        global_model=True,
        norm_local=True,
    )
    again = read_result(result.directory)
    assert (again.strategy, again.run_id, again.rounds) == ("fedbn", "42", 2)
    assert np.allclose(again.load_weights()["w"], 1.0)
    merged = merge_site_norm(state, {"norm.weight": np.asarray([5.0])})
    assert np.allclose(merged["norm.weight"], 5.0) and np.allclose(merged["w"], 1.0)
    with pytest.raises(FederationError):
        merge_site_norm(state, {"other": np.asarray([1.0])})
    site_dir = tmp_path / "site"
    write_result(
        site_dir,
        run_id="42",
        strategy="fedbn",
        rounds=2,
        task="glioma_mr",
        network={},
        task_overrides={},
        sites=[],
        state=merged,
        global_model=True,
        norm_local=True,
    )
    assert np.allclose(site_weights(site_dir, "42")["norm.weight"], 5.0)
    save_state(run_dir(site_dir, "42") / "weights.pt", state)  # tampered
    with pytest.raises(FederationError, match="sha256"):
        site_weights(site_dir, "42")
