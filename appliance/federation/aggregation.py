"""The aggregation arithmetic of the federation's own strategies, on plain numpy arrays.

No Flower and no torch here, so the maths is unit-tested without processes. A model is a
``dict[str, np.ndarray]`` (state-dict key -> array). Integer arrays (e.g. batch-norm
``num_batches_tracked``) are averaged in float64 and rounded back to their dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from appliance.errors import FederationError

State = dict[str, np.ndarray]


def _normalised(weights: Sequence[float]) -> np.ndarray:
    w = np.asarray([float(v) for v in weights], dtype=np.float64)
    if w.size == 0 or np.any(w < 0) or not np.all(np.isfinite(w)) or w.sum() <= 0:
        raise FederationError(f"aggregation weights must be >= 0 with a positive sum: {weights}")
    return w / w.sum()


def _cast(value: np.ndarray, like: np.ndarray) -> np.ndarray:
    if np.issubdtype(like.dtype, np.integer):
        return np.rint(value).astype(like.dtype)
    return value.astype(like.dtype, copy=False)


def weighted_average(states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]) -> State:
    """``sum_i w_i * state_i / sum_i w_i`` key by key (FedAvg with ``w_i`` = case counts).
    Every state must have the same keys and shapes."""
    if len(states) != len(weights) or not states:
        raise FederationError("need one weight per state and at least one state")
    factors = _normalised(weights)
    keys = list(states[0].keys())
    for state in states[1:]:
        if set(state.keys()) != set(keys):
            raise FederationError("the states to average do not have the same keys")
    out: State = {}
    for key in keys:
        first = np.asarray(states[0][key])
        acc = np.zeros(first.shape, dtype=np.float64)
        for state, factor in zip(states, factors, strict=True):
            value = np.asarray(state[key])
            if value.shape != first.shape:
                raise FederationError(f"{key}: shapes differ ({value.shape} vs {first.shape})")
            acc += factor * value.astype(np.float64)
        out[key] = _cast(acc, first)
    return out


def weights_problem(
    state: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]]
) -> str | None:
    """Why ``state`` is not a model with the entries and ``shapes`` given (a site's check
    of the weights it receives), or ``None``: names, shapes, and every float value finite."""
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted(set(state) - set(shapes))
    if missing or unexpected:
        return (
            f"entries do not match the network (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    for key, value in state.items():
        array = np.asarray(value)
        if tuple(array.shape) != tuple(shapes[key]):
            return f"{key} has shape {list(array.shape)}, the network's is {list(shapes[key])}"
        if array.dtype.kind in "fc" and not np.all(np.isfinite(array)):
            return f"{key} has non-finite values (NaN or infinity)"
    return None


def merge_kept(aggregate: Mapping[str, np.ndarray], previous: Mapping[str, np.ndarray]) -> State:
    """The full model after a partial aggregation: ``aggregate`` where it has a key, the
    previous global value elsewhere (FedBN: normalisation entries are never aggregated)."""
    out = {k: np.asarray(v) for k, v in previous.items()}
    for key, value in aggregate.items():
        if key not in out:
            raise FederationError(f"aggregate has a key the model does not have: {key}")
        out[key] = _cast(np.asarray(value, dtype=np.float64), out[key])
    return out


def without_keys(state: Mapping[str, np.ndarray], excluded: set[str] | frozenset[str]) -> State:
    return {k: np.asarray(v) for k, v in state.items() if k not in excluded}


def state_delta(new: Mapping[str, np.ndarray], old: Mapping[str, np.ndarray]) -> State:
    """``new - old`` key by key, in float64."""
    return {k: np.asarray(new[k], np.float64) - np.asarray(old[k], np.float64) for k in new}


def fedgs_apply(
    global_state: Mapping[str, np.ndarray],
    updates: Sequence[Mapping[str, np.ndarray]],
    steps: Sequence[float],
    *,
    server_lr: float = 1.0,
    momentum: float = 0.0,
    velocity: Mapping[str, np.ndarray] | None = None,
) -> tuple[State, State]:
    """FedGS server step: ``u = sum_i (tau_i / sum tau) * delta_i`` (``delta_i`` the site's
    accumulated, step-scaled update, ``tau_i`` its local steps), ``v = momentum * v + u``,
    ``w = w + server_lr * v``. Keys absent from the updates keep their global value.
    Returns the new global state and the new velocity."""
    if not math.isfinite(server_lr) or server_lr <= 0:
        raise FederationError("server_lr must be a finite number > 0")
    if not 0.0 <= momentum < 1.0:
        raise FederationError("server momentum must be in [0, 1)")
    mean = weighted_average(
        [{k: np.asarray(v, np.float64) for k, v in u.items()} for u in updates], steps
    )
    new_velocity: State = {}
    out = {k: np.asarray(v) for k, v in global_state.items()}
    for key, value in mean.items():
        if key not in out:
            raise FederationError(f"update has a key the model does not have: {key}")
        previous = velocity.get(key) if velocity is not None else None
        v = value if previous is None else momentum * np.asarray(previous, np.float64) + value
        new_velocity[key] = v
        out[key] = _cast(np.asarray(out[key], np.float64) + server_lr * v, out[key])
    return out, new_velocity


def gossip_peers(count: int, rng: np.random.Generator) -> list[int]:
    """For each of ``count`` sites a random peer index other than itself."""
    if count < 2:
        raise FederationError("gossip needs at least two sites")
    peers: list[int] = []
    for i in range(count):
        j = int(rng.integers(0, count - 1))
        peers.append(j if j < i else j + 1)
    return peers


def gossip_average(
    own: Mapping[str, np.ndarray],
    own_cases: float,
    peer: Mapping[str, np.ndarray],
    peer_cases: float,
) -> State:
    """A site's model after averaging with its peer's, weighted by case counts."""
    return weighted_average([own, peer], [own_cases, peer_cases])


def consensus_distance(states: Sequence[Mapping[str, np.ndarray]]) -> float:
    """``sqrt(mean_i ||w_i - w_mean||^2)`` over all (float) entries: 0 when the sites agree."""
    if not states:
        raise FederationError("no states")
    keys = [k for k in states[0] if np.issubdtype(np.asarray(states[0][k]).dtype, np.floating)]
    total = 0.0
    for key in keys:
        stack = np.stack([np.asarray(s[key], np.float64) for s in states])
        total += float(((stack - stack.mean(axis=0)) ** 2).sum())
    return math.sqrt(total / len(states))


def transfer_schedule(order: Sequence[str], rounds: int, *, single: bool) -> list[list[str]]:
    """Visits per round of cyclic (``single=False``: every round visits all sites in
    ``order``, so ``rounds`` is the number of cycles) or single weight transfer
    (``single=True``: the model meets each site once, in ``order``; ``rounds`` local
    rounds at each site, so round ``r`` is spent at site ``ceil(r / rounds)``)."""
    if not order or rounds < 1:
        raise FederationError("need at least one site and one round")
    if not single:
        return [list(order) for _ in range(rounds)]
    return [[site] for site in order for _ in range(rounds)]
