"""The ClientApp every site's SuperNode runs: local training and evaluation on the
site's own cases (Flower Message API: ``@app.train()``, ``@app.evaluate()``,
``@app.query()``).

Messages (``message_type``) and what they carry:

- ``query.info``: reply ``site`` (ConfigRecord: site name) and ``metrics``
  (``cases``, ``held-out``).
- ``train``: ``arrays`` (global weights, or for gossip the peer's model) and ``config``
  (``mode``: ``full`` | ``fedbn`` | ``fedgs`` | ``gossip``, ``server-round`` and per
  strategy keys). Reply ``arrays`` and ``metrics`` (``num-examples`` = training cases,
  ``steps``, ``loss``, ``step-scale-max``, ``step-scale-mean``, ``scaled-steps``):

  - ``full``: the trained weights (fedavg, fedprox, cwt/swt, robust aggregators);
  - ``fedbn``: the trained weights *without* normalisation entries, which the site
    keeps in its state dir and uses instead of the received ones;
  - ``fedgs``: the accumulated step-scaled update (not the weights);
  - ``gossip``: the site's own model (kept in its state dir) after averaging with the
    peer's model it received (weighted by case counts), then training.
- ``train.average`` (gossip, after the last round): average with the received peer
  model, keep, reply the model (the coordinator reports the consensus distance).
- ``evaluate``: Dice of the received weights (fedbn: with the site's normalisation
  entries; gossip: the site's own model) on the held-out cases.
- ``query.final``: the final weights; the site writes its own record of the run
  (:func:`appliance.federation.outputs.site_result`).

A refiner run (``refiner-margin`` set: the run federates a two-stage model's refiner)
trains and evaluates the refiner on the site's cases cut to their truth boxes
(:func:`appliance.federation.site_data.run_training_cases`, ``run_held_out_cases``); a
FedBN site keeps its refiner's normalisation entries apart from a UNet's of the task.

At an appliance site (``case-source = store``) the ClientApp process runs at nice 19 and
local training pauses between steps while the appliance's inference queue has work
(:func:`appliance.federation.schedule.inference_busy` on the store in ``node_config``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod

from appliance.errors import FederationError
from appliance.federation.aggregation import State, gossip_average, state_delta, weights_problem
from appliance.federation.outputs import write_result
from appliance.federation.params import from_record, load_into, model_state, to_record
from appliance.federation.settings import CaseSource, RunSettings, round_seed, simulated_node_config
from appliance.federation.site_data import (
    SiteCases,
    load_site_cases,
    run_held_out_cases,
    run_training_cases,
)
from appliance.federation.site_settings import SiteSettings
from appliance.federation.site_state import (
    load_site_norm,
    load_state,
    merge_site_norm,
    run_dir,
    save_site_norm,
    save_state,
)

#: the key of Flower's client-side DP clipping norm in the train config
_DP_CLIP_KEY = "clipping_norm"
#: what the simulation runtime puts in a virtual SuperNode's node_config
PARTITION_ID = "partition-id"

app = ClientApp()

_PREPARED: dict[tuple[Any, ...], list[Any]] = {}
_PREPARED_SITES = 8


#: what a site keeps of its network in a run's dir (:meth:`_Site.expected_shapes`)
NETWORK_FILE = "network.json"


class _Site:
    """Everything one message needs: settings, network, cases (loaded per message: each
    message runs in a fresh ClientApp process under subprocess isolation).

    The model stack (torch, MONAI, :mod:`models`) is imported only when a message needs
    the network: ``query.info`` counts cases without it, and ``query.final`` checks the
    final weights against the shapes this site recorded when it built the run's network
    (:data:`NETWORK_FILE`), so neither pays the seconds of that import on every site."""

    def __init__(self, context: Context) -> None:
        self.run = RunSettings.from_config(dict(context.run_config))
        node = dict(context.node_config)
        if PARTITION_ID in node:  # a virtual SuperNode of the simulation runtime
            node = {**simulated_node_config(self.run, int(node[PARTITION_ID])), **node}
        self.site = SiteSettings.from_config(node, fallback_site=f"node_{context.node_id}")
        if self.site.source is CaseSource.STORE:
            _lower_priority()  # an appliance's inference comes first (docs/training.md)
        self.run_id = str(context.run_id)
        #: the run's settings as sent: a recorded network counts for this run only
        self.run_digest = hashlib.sha256(
            json.dumps(dict(context.run_config), sort_keys=True, default=str).encode()
        ).hexdigest()
        self.spec = self.run.task_spec()
        # before any network is built or case loaded: run settings over this site's limits
        self.site.limits.refuse(self.run, tuple(self.spec.patch_size))
        self._cases: SiteCases | None = None

    @cached_property
    def network(self) -> Any:
        return self.run.network_config()

    @cached_property
    def model(self) -> Any:
        """The run's network, built once per message; its configuration and shapes are
        recorded in the run's dir for a later ``query.final``."""
        _model_stack()
        import torch

        from models.networks import build_network

        torch.set_num_threads(self.site.threads)
        model = build_network(self.spec, self.network)
        shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
        record = {"run": self.run_digest, "network": self.network.to_dict(), "shapes": shapes}
        path = self.run_dir / NETWORK_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{NETWORK_FILE}.tmp")
        tmp.write_text(json.dumps(record, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
        return model

    @cached_property
    def norm_keys(self) -> frozenset[str]:
        from models.networks import norm_parameter_names

        return frozenset(norm_parameter_names(self.model))

    @cached_property
    def _recorded(self) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]] | None:
        """The network configuration and entry shapes this site recorded when it built the
        run's network, if it did in this run (same run id and settings) and the record
        is intact; otherwise none. Read once per message."""
        try:
            record = json.loads((self.run_dir / NETWORK_FILE).read_text(encoding="utf-8"))
            if not isinstance(record, dict) or record.get("run") != self.run_digest:
                return None
            network, raw = record["network"], record["shapes"]
            if not isinstance(network, dict) or not isinstance(raw, dict):
                return None
            shapes = {str(k): tuple(int(n) for n in v) for k, v in raw.items()}
        except (OSError, ValueError, TypeError, KeyError):
            return None
        return network, shapes

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """The run's network's entries and shapes: recorded, or from the network."""
        record = None if "model" in self.__dict__ else self._recorded
        if record is not None:
            return record[1]
        return {k: tuple(v.shape) for k, v in self.model.state_dict().items()}

    def network_dict(self) -> dict[str, Any]:
        record = self._recorded
        if record is not None:
            return dict(record[0])
        return dict(self.network.to_dict())

    def received(self, msg: Message) -> State:
        """The weights the coordinator sent, refused (:class:`FederationError`) unless
        they are this run's network's entries with its shapes, all finite."""
        state = from_record(msg.content.array_records["arrays"])
        problem = weights_problem(state, self.expected_shapes())
        if problem is not None:
            raise FederationError(f"this site refuses the weights it was sent: {problem}")
        return state

    @property
    def cases(self) -> SiteCases:
        if self._cases is None:
            self._cases = load_site_cases(self.site, self.spec)
        return self._cases

    @property
    def run_dir(self) -> Path:
        return run_dir(self.site.state_dir, self.run_id)

    def own_model_path(self) -> Path:
        return self.run_dir / "model.pt"

    def training_cases(self, server_round: int) -> tuple[Any, ...]:
        """The cases this round trains on (a refiner run: cut to boxes drawn with the
        round's seed of this site)."""
        return run_training_cases(self.run, self.cases.train, self.seed(server_round))

    def held_out_cases(self) -> tuple[Any, ...]:
        return run_held_out_cases(self.run, self.cases.held_out)

    def prepared(self, server_round: int) -> list[Any]:
        """The training cases pre-processed for the sampler, once per process and site
        (the simulation runtime's workers serve many rounds; a refiner run's boxes
        change with the round, so its cases once per round)."""
        boxes = self.seed(server_round) if self.run.stage else None
        key = (self.site, self.spec, self.run.seed, boxes)
        cached = _PREPARED.get(key)
        if cached is None:
            from models.training import prepare_cases

            cases = list(self.training_cases(server_round))
            cached = prepare_cases(self.spec, cases, seed=self.run.seed)
            while len(_PREPARED) >= _PREPARED_SITES:  # a worker may serve every site
                del _PREPARED[next(iter(_PREPARED))]
            _PREPARED[key] = cached
        return cached

    def with_local_norm(self, state: State) -> State:
        norm = load_site_norm(self.site.state_dir, self.run.norm_scope())
        return dict(state) if norm is None else merge_site_norm(state, norm)

    def seed(self, server_round: int) -> int:
        return round_seed(self.run.seed, server_round, self.site.site)


def _model_stack() -> None:
    """Import the model stack under one module lock (see its docstring): first thing in
    every handler that trains or scores, before anything imports torch or MONAI."""
    import appliance.federation.model_stack  # noqa: F401


def _lower_priority() -> None:
    """Nice 19 for this ClientApp process, before torch starts its threads (they inherit
    it), so local training gets only the CPU that the appliance's inference leaves."""
    current = os.nice(0)
    if current < 19:
        os.nice(19 - current)


@contextmanager
def _inference_pause(site: SiteSettings) -> Iterator[Callable[[], bool] | None]:
    """At an appliance site (``case-source = store``): a ``should_pause`` for training
    that is true while the appliance's inference queue has work (its store database,
    :func:`appliance.federation.schedule.inference_busy`); elsewhere none."""
    if site.source is not CaseSource.STORE or site.database is None:
        yield None
        return
    from appliance.federation.schedule import inference_busy
    from appliance.store import Store

    store = Store(site.database)

    def busy() -> bool:
        try:
            return inference_busy(store)
        except Exception:  # a locked or vanished database must not stop the training
            return False

    try:
        yield busy
    finally:
        store.close()


def _config(msg: Message) -> dict[str, Any]:
    records = msg.content.config_records
    return dict(next(iter(records.values()))) if records else {}


def _array_bytes(record: ArrayRecord) -> int:
    return sum(len(array.data) for array in record.values())


def _reply(
    msg: Message, arrays: ArrayRecord | None, metrics: Mapping[str, float], site: str
) -> Message:
    """The reply; ``bytes-sent`` / ``bytes-received`` count the tensor payload of this
    exchange (the model weights or update each way), not Flower's framing."""
    values: dict[str, int | float | list[int] | list[float]] = dict(metrics)
    values["bytes-sent"] = _array_bytes(arrays) if arrays is not None else 0
    received = msg.content.array_records.get("arrays")
    values["bytes-received"] = _array_bytes(received) if received is not None else 0
    content = RecordDict({"metrics": MetricRecord(values), "site": ConfigRecord({"site": site})})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content=content, reply_to=msg)


def _train_locally(
    s: _Site, start: State, config: dict[str, Any], *, fedgs: bool
) -> tuple[State, Any]:
    import torch

    from models.training import SmallLesionScaling, TrainConfig, fine_tune

    server_round = int(config.get("server-round", 0))
    prox_mu = float(config.get("proximal-mu", config.get("prox-mu", 0.0)))
    scaling = (
        SmallLesionScaling(threshold=s.run.fedgs_threshold, base=s.run.fedgs_base)
        if fedgs
        else None
    )
    train_config = TrainConfig(
        steps=s.run.local_steps,
        batch_size=s.run.batch_size,
        lr=s.run.lr,
        seed=s.seed(server_round),
        prox_mu=prox_mu,
        small_lesion_scaling=scaling,
    )
    load_into(s.model, start)
    initial = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in start.items()}
    initial = {k: v.to(s.model.state_dict()[k].dtype) for k, v in initial.items()}
    with _inference_pause(s.site) as should_pause:
        report = fine_tune(
            s.model,
            s.spec,
            list(s.training_cases(server_round)),
            train_config,
            initial_state=initial,
            prepared=s.prepared(server_round),
            should_pause=should_pause,
        )
    return model_state(s.model), report


def _train_metrics(s: _Site, report: Any) -> dict[str, float]:
    scales = [float(v) for v in getattr(report, "step_scales", ()) or ()] or [1.0]
    loss = report.final_loss
    return {
        "num-examples": len(s.cases.train),
        "steps": int(report.steps),
        "loss": float(loss) if math.isfinite(loss) else -1.0,
        "step-scale-max": max(scales),
        "step-scale-mean": float(np.mean(scales)),
        "scaled-steps": sum(1 for v in scales if v > 1.0),
        "train-seconds": float(report.seconds),
    }


def _dp_clip_when_asked(msg: Message, context: Context, call_next: Any) -> Message:
    """Flower's ``fixedclipping_mod`` for runs wrapped in client-side DP (the server puts
    the clipping norm in the config); other runs pass straight through."""
    if _DP_CLIP_KEY in _config(msg):
        reply: Message = fixedclipping_mod(msg, context, call_next)
        return reply
    result: Message = call_next(msg, context)
    return result


@app.query("info")
def info(msg: Message, context: Context) -> Message:
    s = _Site(context)
    metrics = {"cases": len(s.cases.train), "held-out": len(s.cases.held_out)}
    return _reply(msg, None, metrics, s.site.site)


@app.train(mods=[_dp_clip_when_asked])
def train(msg: Message, context: Context) -> Message:
    _model_stack()
    s = _Site(context)
    config = _config(msg)
    mode = str(config.get("mode", "full"))
    received = s.received(msg)
    if mode == "gossip":
        own_path = s.own_model_path()
        if bool(config.get("has-peer", False)):
            own = load_state(own_path)
            start = gossip_average(
                own, len(s.cases.train), received, float(config.get("peer-cases", 1))
            )
        else:
            start = load_state(own_path) if own_path.is_file() else received
        new, report = _train_locally(s, start, config, fedgs=False)
        save_state(own_path, new)
        return _reply(msg, to_record(new), _train_metrics(s, report), s.site.site)
    if mode == "fedbn":
        start = s.with_local_norm(received)
        new, report = _train_locally(s, start, config, fedgs=False)
        save_site_norm(s.site.state_dir, s.run.norm_scope(), {k: new[k] for k in s.norm_keys})
        metrics = _train_metrics(s, report)
        metrics["norm-entries-kept"] = len(s.norm_keys)
        return _reply(msg, to_record(new, exclude=s.norm_keys), metrics, s.site.site)
    if mode == "fedgs":
        new, report = _train_locally(s, received, config, fedgs=True)
        update = state_delta(new, received)
        scaled = getattr(report, "scaled_update", None) or {}
        for key, value in scaled.items():
            update[key] = value.detach().cpu().numpy().astype(np.float64)
        # On the wire in each entry's own dtype (float32 weights: half the bytes of float64);
        # the server averages in float64 either way.
        wire = {k: v.astype(np.asarray(received[k]).dtype) for k, v in update.items()}
        return _reply(msg, to_record(wire), _train_metrics(s, report), s.site.site)
    new, report = _train_locally(s, received, config, fedgs=False)
    return _reply(msg, to_record(new), _train_metrics(s, report), s.site.site)


@app.train("average")
def average(msg: Message, context: Context) -> Message:
    """Gossip, after the final round: average with the peer's model and keep it."""
    _model_stack()
    s = _Site(context)
    config = _config(msg)
    own = load_state(s.own_model_path())
    merged = gossip_average(own, len(s.cases.train), s.received(msg), float(config["peer-cases"]))
    save_state(s.own_model_path(), merged)
    return _reply(msg, to_record(merged), {"num-examples": len(s.cases.train)}, s.site.site)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    _model_stack()
    s = _Site(context)
    config = _config(msg)
    mode = str(config.get("mode", "full"))
    if mode == "gossip":
        state = load_state(s.own_model_path())
    else:
        state = s.received(msg)
        if mode == "fedbn":
            state = s.with_local_norm(state)
    load_into(s.model, state)
    held_out = s.held_out_cases()
    from appliance.federation.scoring import mean_dice

    metrics = {"num-examples": len(held_out), "dice": mean_dice(s.model, s.spec, held_out)}
    return _reply(msg, None, metrics, s.site.site)


def _names(value: object) -> list[str]:
    """A list of site names from the coordinator's config (anything else: none)."""
    if not isinstance(value, list):
        return []
    return [str(v) for v in value if isinstance(v, str)]


@app.query("final")
def final(msg: Message, context: Context) -> Message:
    """The run is over: keep this site's record and weights of it."""
    s = _Site(context)
    config = _config(msg)
    mode = str(config.get("mode", "full"))
    if mode == "gossip":
        state = load_state(s.own_model_path())
    else:
        state = s.received(msg)
        if mode == "fedbn":
            state = s.with_local_norm(state)
    result = write_result(
        s.site.state_dir,
        run_id=s.run_id,
        strategy=str(config.get("strategy", s.run.strategy.value)),
        rounds=int(config.get("rounds", s.run.rounds)),
        task=s.run.task,
        network=s.network_dict(),
        task_overrides=s.run.task_overrides(),
        sites=_names(config.get("sites")),
        state=state,
        global_model=mode != "gossip",
        norm_local=mode == "fedbn",
        extra={"site": s.site.site}
        | ({"contributors": _names(config.get("contributors"))} if mode != "gossip" else {}),
        stage=s.run.stage,
    )
    return (
        _reply(msg, None, {"written": 1}, s.site.site)
        if result
        else _reply(msg, None, {"written": 0}, s.site.site)
    )
