"""The hand-off of a finished run: what the ServerApp writes and how a site turns it into
the weights it would use.

The ServerApp writes ``<output dir>/runs/<run id>/`` (and every site writes the same
layout under its own state dir, with the weights *it* should use):

- ``federation.json``: ``run_id``, ``strategy``, ``rounds``, ``task``, ``network``
  (:meth:`models.networks.NetworkConfig.to_dict`), ``task_overrides``, ``sites``,
  ``global_model`` (false for gossip), ``norm_local`` (true for fedbn), ``stage``
  (``"refiner"`` when the run federated a two-stage model's refiner, else ``""``;
  absent in records written before there were such runs), ``weights``
  (file name or null), ``weights_sha256``, ``finished``, ``extra`` (e.g. gossip's
  ``consensus_distance``, the site's name in a site's copy);
- ``weights.pt``: the final global state dict (coordinator; absent for gossip), or the
  site's final weights (site copy).

:func:`read_result` reads it back as a :class:`FederatedResult`; :func:`site_weights`
gives the state dict a site should turn into a candidate model (for fedbn the global
weights with the site's own normalisation entries, for gossip the site's own final
model). The validation gate builds the candidate from that, stamped with
``strategy``/``run_id``/``rounds`` from the result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from appliance.errors import FederationError
from appliance.federation.aggregation import State
from appliance.federation.site_state import (
    load_state,
    run_dir,
    save_state,
)

RESULT_FILE = "federation.json"
WEIGHTS_FILE = "weights.pt"


@dataclass(frozen=True, slots=True)
class FederatedResult:
    directory: Path
    run_id: str
    strategy: str
    rounds: int
    task: str
    network: Mapping[str, Any]
    task_overrides: Mapping[str, Any]
    sites: tuple[str, ...]
    global_model: bool
    norm_local: bool
    weights_sha256: str | None
    finished: str
    extra: Mapping[str, Any]
    #: ``""``: the run trained a whole model; ``"refiner"``: a two-stage model's refiner
    #: (``network`` and ``task_overrides`` then describe the refiner and its grid)
    stage: str = ""

    @property
    def contributors(self) -> tuple[str, ...]:
        """The sites whose updates went into the final model's last round (a run that
        lost sites: fewer than :attr:`sites`); empty when not recorded."""
        value = self.extra.get("contributors")
        if not isinstance(value, list):
            return ()
        return tuple(str(v) for v in value)

    @property
    def weights_path(self) -> Path | None:
        return self.directory / WEIGHTS_FILE if self.weights_sha256 else None

    def load_weights(self) -> State:
        """The weights of this record (sha256-checked)."""
        path = self.weights_path
        if path is None:
            raise FederationError(f"run {self.run_id} ({self.strategy}) left no weights here")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != self.weights_sha256:
            raise FederationError(f"{path} does not match its recorded sha256")
        return load_state(path)


def result_dir(output_dir: Path, run_id: str) -> Path:
    return run_dir(output_dir, run_id)


def write_result(
    output_dir: Path,
    *,
    run_id: str,
    strategy: str,
    rounds: int,
    task: str,
    network: Mapping[str, Any],
    task_overrides: Mapping[str, Any],
    sites: list[str],
    state: Mapping[str, np.ndarray] | None,
    global_model: bool,
    norm_local: bool,
    extra: Mapping[str, Any] | None = None,
    stage: str = "",
) -> FederatedResult:
    directory = result_dir(output_dir, run_id)
    directory.mkdir(parents=True, exist_ok=True)
    digest = None
    if state is not None:
        save_state(directory / WEIGHTS_FILE, state)
        digest = hashlib.sha256((directory / WEIGHTS_FILE).read_bytes()).hexdigest()
    data = {
        "run_id": run_id,
        "strategy": strategy,
        "rounds": rounds,
        "task": task,
        "network": dict(network),
        "task_overrides": dict(task_overrides),
        "sites": list(sites),
        "global_model": global_model,
        "norm_local": norm_local,
        "stage": stage,
        "weights": WEIGHTS_FILE if state is not None else None,
        "weights_sha256": digest,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "extra": dict(extra or {}),
    }
    tmp = directory / f".{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(directory / RESULT_FILE)
    return read_result(directory)


def read_result(directory: Path) -> FederatedResult:
    path = directory / RESULT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return FederatedResult(
            directory=directory,
            run_id=str(data["run_id"]),
            strategy=str(data["strategy"]),
            rounds=int(data["rounds"]),
            task=str(data["task"]),
            network=dict(data["network"]),
            task_overrides=dict(data.get("task_overrides", {})),
            sites=tuple(data["sites"]),
            global_model=bool(data["global_model"]),
            norm_local=bool(data["norm_local"]),
            weights_sha256=data.get("weights_sha256"),
            finished=str(data["finished"]),
            extra=dict(data.get("extra", {})),
            stage=str(data.get("stage", "")),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FederationError(f"cannot read the federated result in {directory}: {exc}") from exc


def site_result(site_state_dir: Path, run_id: str) -> FederatedResult:
    """The site's own record of run ``run_id``: written by the site's ClientApp when the
    ServerApp hands out the final model. Its weights are what this site should turn into
    a candidate model: the final global weights, for fedbn merged with the site's own
    normalisation entries (:func:`~appliance.federation.site_state.merge_site_norm`), for
    gossip the site's own model."""
    return read_result(run_dir(site_state_dir, run_id))


def site_weights(site_state_dir: Path, run_id: str) -> State:
    return site_result(site_state_dir, run_id).load_weights()
