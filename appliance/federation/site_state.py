"""What a site keeps between messages and runs, under its state dir (``node_config``
``state-dir``; for an appliance ``<storage.root>/federation/site``):

- ``fedbn/<task>.pt``: the site's own normalisation-layer parameters and statistics
  (FedBN). Written after every local round, read before the next, never sent.
- ``runs/<run id>/model.pt``: the site's current model in a gossip run (there is no
  global model; each site's own model travels only to its peers, via the relay).
- ``runs/<run id>/network.json``: the run's network configuration and its entries'
  shapes, written by the ClientApp when it builds the network, so that ``query.final``
  checks the final weights without importing the model stack
  (:data:`appliance.federation.client_app.NETWORK_FILE`).
- ``runs/<run id>/final.pt``: the model this site ends a run with (gossip: its own
  model; fedbn: the final global weights with this site's normalisation entries).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from appliance.errors import FederationError
from appliance.federation.aggregation import State

_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")


def _safe(name: str, what: str) -> str:
    if not _SAFE.match(name) or name in (".", ".."):
        raise FederationError(f"{what} {name!r} cannot name a file")
    return name


def save_state(path: Path, state: Mapping[str, np.ndarray]) -> None:
    """Atomic write of a numpy state as a torch state dict."""
    import torch  # here: a site that only answers a query does not load torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({k: torch.from_numpy(np.array(v, copy=True)) for k, v in state.items()}, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> State:
    import torch

    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise FederationError(f"cannot read weights {path}: {exc}") from exc
    return {str(k): v.detach().cpu().numpy().copy() for k, v in dict(raw).items()}


def norm_path(state_dir: Path, task: str) -> Path:
    return state_dir / "fedbn" / f"{_safe(task, 'task')}.pt"


def run_dir(state_dir: Path, run_id: int | str) -> Path:
    return state_dir / "runs" / _safe(str(run_id), "run id")


def load_site_norm(state_dir: Path, task: str) -> State | None:
    path = norm_path(state_dir, task)
    return load_state(path) if path.is_file() else None


def save_site_norm(state_dir: Path, task: str, norm: Mapping[str, np.ndarray]) -> Path:
    path = norm_path(state_dir, task)
    save_state(path, norm)
    return path


def merge_site_norm(
    global_state: Mapping[str, np.ndarray], site_norm: Mapping[str, np.ndarray]
) -> State:
    """``global_state`` with this site's normalisation entries in place of the global
    ones: the weights a FedBN site runs inference with. Keys and shapes must match."""
    out = {k: np.array(v, copy=True) for k, v in global_state.items()}
    for key, value in site_norm.items():
        if key not in out:
            raise FederationError(f"site normalisation entry {key} is not in the model")
        if np.shape(value) != np.shape(out[key]):
            raise FederationError(
                f"site normalisation entry {key} has shape {np.shape(value)}, "
                f"the model {np.shape(out[key])}"
            )
        out[key] = np.asarray(value).astype(out[key].dtype)
    return out
