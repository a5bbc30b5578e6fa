"""The federation's aggregation arithmetic and strategy bookkeeping, without processes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from appliance.errors import FederationError
from appliance.federation.aggregation import (
    consensus_distance,
    fedgs_apply,
    gossip_average,
    gossip_peers,
    merge_kept,
    state_delta,
    transfer_schedule,
    weighted_average,
    without_keys,
)


def _state(value: float) -> dict[str, np.ndarray]:
    return {
        "w": np.full((2, 2), value, dtype=np.float32),
        "norm.weight": np.full(3, value, dtype=np.float32),
        "norm.num_batches_tracked": np.asarray(int(value), dtype=np.int64),
    }


def test_weighted_average_is_size_weighted_and_keeps_dtypes() -> None:
    out = weighted_average([_state(1.0), _state(4.0)], [3, 1])
    assert np.allclose(out["w"], 1.75) and out["w"].dtype == np.float32
    assert out["norm.num_batches_tracked"].dtype == np.int64
    assert int(out["norm.num_batches_tracked"]) == 2  # 1.75 rounded


@pytest.mark.parametrize("weights", [[0, 0], [-1, 2], [math.nan, 1]])
def test_weighted_average_rejects_bad_weights(weights: list[float]) -> None:
    with pytest.raises(FederationError):
        weighted_average([_state(1.0), _state(2.0)], weights)


def test_weighted_average_rejects_mismatched_keys() -> None:
    with pytest.raises(FederationError):
        weighted_average([_state(1.0), {"w": np.zeros((2, 2))}], [1, 1])


def test_fedbn_merge_leaves_norm_entries_untouched() -> None:
    previous = _state(0.0)
    norm = {"norm.weight", "norm.num_batches_tracked"}
    sent = [without_keys(_state(2.0), norm), without_keys(_state(4.0), norm)]
    merged = merge_kept(weighted_average(sent, [1, 1]), previous)
    assert np.allclose(merged["w"], 3.0)
    assert np.array_equal(merged["norm.weight"], previous["norm.weight"])
    assert set(merged) == set(previous)


def test_fedgs_weights_updates_by_share_of_steps_and_applies_momentum() -> None:
    glob = {"w": np.zeros(2, dtype=np.float32)}
    updates = [{"w": np.asarray([1.0, 1.0])}, {"w": np.asarray([4.0, 4.0])}]
    new, velocity = fedgs_apply(glob, updates, [30, 10])
    assert np.allclose(new["w"], 1.75)  # (30*1 + 10*4) / 40
    again, velocity2 = fedgs_apply(new, updates, [30, 10], momentum=0.5, velocity=velocity)
    assert np.allclose(velocity2["w"], 0.5 * 1.75 + 1.75)
    assert np.allclose(again["w"], 1.75 + 2.625)
    half, _ = fedgs_apply(glob, updates, [1, 1], server_lr=0.5)
    assert np.allclose(half["w"], 1.25)


def test_fedgs_rejects_bad_server_settings() -> None:
    glob = {"w": np.zeros(2)}
    with pytest.raises(FederationError):
        fedgs_apply(glob, [{"w": np.ones(2)}], [1], momentum=1.0)
    with pytest.raises(FederationError):
        fedgs_apply(glob, [{"w": np.ones(2)}], [1], server_lr=0.0)


def test_gossip_peers_never_pair_a_site_with_itself() -> None:
    rng = np.random.default_rng(0)
    for count in (2, 3, 5):
        for _ in range(50):
            peers = gossip_peers(count, rng)
            assert len(peers) == count
            assert all(p != i and 0 <= p < count for i, p in enumerate(peers))
    with pytest.raises(FederationError):
        gossip_peers(1, rng)


def test_gossip_average_weights_by_cases_and_consensus_shrinks() -> None:
    a, b = {"w": np.asarray([0.0, 0.0])}, {"w": np.asarray([3.0, 6.0])}
    merged = gossip_average(a, 2, b, 1)
    assert np.allclose(merged["w"], [1.0, 2.0])
    before = consensus_distance([a, b])
    after = consensus_distance([merged, gossip_average(b, 1, a, 2)])
    assert before > 0 and after == pytest.approx(0.0)
    assert consensus_distance([a, a]) == 0.0


def test_transfer_schedules() -> None:
    assert transfer_schedule(["a", "b", "c"], 2, single=False) == [["a", "b", "c"]] * 2
    assert transfer_schedule(["a", "b"], 2, single=True) == [["a"], ["a"], ["b"], ["b"]]
    with pytest.raises(FederationError):
        transfer_schedule([], 1, single=False)


def test_state_delta() -> None:
    delta = state_delta({"w": np.asarray([3.0])}, {"w": np.asarray([1.0])})
    assert np.allclose(delta["w"], [2.0])
