"""After a federated run, at a site: the weights this site should use become a CANDIDATE
model, and (``federation.auto_validate``) the validation gate decides on it.

:func:`hand_off` reads the site's own record of the run
(:func:`appliance.federation.outputs.site_result`: for fedbn the global weights merged
with the site's normalisation entries, for gossip the site's own model), checks that the
run's network is the architecture of the site's ACTIVE model of the task (the parent),
and registers the weights with :func:`appliance.site_models.registry.register_candidate`:

- version :func:`candidate_version`: the parent's next patch with the pre-release
  ``fed.<run id>`` (parent ``0.1.0``, run ``42`` -> ``0.1.1-fed.42``): valid, derived
  only from parent and run, above the parent and below the parent's next release in the
  registry's order; a hand-off repeated for the same run finds the run's candidate by
  its ``fed.<run id>`` tag and registers nothing;
- card ``source`` = ``{"kind": "federated", "strategy", "run_id", "rounds", "site",
  "sites", "last_round_sites"}`` (``last_round_sites``: the sites whose updates went into
  the final model's last round, fewer than ``sites`` when a run lost sites; the
  training-data text then says so), ``federated_round`` = rounds, ``parent_version`` =
  the active model's version.

A two-stage (cascade) parent federates only its refiner (a run with ``stage`` =
``"refiner"``): the run's network must be the parent's refiner architecture, and the
candidate's weights are the parent's ``locator.*`` entries, bit for bit, with the run's
weights as ``refiner.*`` under the parent's cascade card (both stages' architectures
and pre-processing); the gate then judges the whole cascade. A whole-model run cannot
become a candidate of a cascade, nor a refiner run one of a single-stage model.

Then the gate runs on the site's held-out cases (:func:`appliance.site_models.gate.load_held_out`,
the same cases as ``appliance models validate``) and its decision is logged. Used by
``appliance federate join`` and by ``appliance serve``'s scheduled joins. No Flower
import.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from appliance.config import AppConfig
from appliance.errors import HandoffError, ModelImportError
from appliance.federation.outputs import FederatedResult, site_result
from appliance.site_models.gate import GateCase, GateReport, load_held_out, run_gate
from appliance.site_models.registry import register_candidate, registry_for
from appliance.store import ModelRecord, Store
from models.errors import ModelsError
from models.lifecycle import ModelState
from models.model_card import Version, check_version, thaw

LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Handoff:
    """What happened to one run's weights at this site."""

    run_id: str
    result: FederatedResult
    candidate: ModelRecord
    parent_version: str
    #: the candidate was registered by an earlier hand-off of the same run
    existed: bool
    gate: GateReport | None
    #: held-out cases the gate could not load (reasons, no patient data)
    skipped_cases: tuple[str, ...] = ()

    def summary(self) -> str:
        head = (
            f"run {self.run_id} ({self.result.strategy}, {self.result.rounds} round(s)): "
            f"candidate {self.candidate.task}/{self.candidate.version} "
            f"(parent {self.parent_version})"
            + (" already registered" if self.existed else " registered")
        )
        if self.gate is None:
            state = self.candidate.state.value
            return f"{head}; not validated (state {state})"
        return f"{head}\n{self.gate.format_text()}"


_RUN_ID_CHARS = re.compile(r"[^0-9A-Za-z-]+")


def _run_tag(run_id: str) -> str:
    """``fed.<run id>``: the pre-release that names run ``run_id``'s candidates."""
    ident = _RUN_ID_CHARS.sub("-", str(run_id)).strip("-")
    if not ident:
        raise HandoffError(f"run id {run_id!r} cannot name a model version")
    if ident.isdigit():
        ident = str(int(ident))  # semver: no leading zeros in numeric identifiers
    return f"fed.{ident}"


def candidate_version(parent_version: str, run_id: str) -> str:
    """``MAJOR.MINOR.(PATCH+1)-fed.<run id>`` of the parent (see the module docstring)."""
    parent = Version.parse(parent_version)
    tag = _run_tag(run_id)
    try:
        return check_version(f"{parent.major}.{parent.minor}.{parent.patch + 1}-{tag}")
    except ModelsError as exc:
        raise HandoffError(f"run id {run_id!r} cannot name a model version: {exc}") from exc


def state_signature(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def describe_difference(
    ours: Mapping[str, tuple[int, ...]], theirs: Mapping[str, tuple[int, ...]]
) -> str:
    missing = sorted(set(theirs) - set(ours))
    extra = sorted(set(ours) - set(theirs))
    shapes = sorted(k for k in set(ours) & set(theirs) if ours[k] != theirs[k])
    parts = []
    if missing:
        parts.append(f"{len(missing)} entries missing (e.g. {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} unexpected entries (e.g. {extra[0]})")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} of other shape (e.g. {k}: {ours[k]} vs {theirs[k]})")
    return "; ".join(parts)


def check_architecture(
    result: FederatedResult, parent_architecture: Mapping[str, Any], parent_ref: str
) -> None:
    """Refuse (:class:`HandoffError`) when the run's network is not the parent's
    architecture (for a two-stage parent: its refiner's): another network class, or other
    state-dict entries or shapes; or when a refiner run meets a single-stage parent or a
    whole-model run a two-stage one."""
    from models.cascade_spec import CASCADE_NETWORK, REFINER, stage_architectures
    from models.networks import Architecture, NetworkConfig, build_network, network_architecture
    from models.registry import build_network as build_from_card
    from models.tasks import get_task

    try:
        config = NetworkConfig.from_dict(dict(result.network))
        spec = get_task(result.task)
        overrides = dict(result.task_overrides)
        if "patch_size" in overrides:
            size = [int(v) for v in overrides["patch_size"]]
            spec = replace(spec, patch_size=(size[0], size[1], size[2]))
        run_arch = network_architecture(spec, config)
        run_net = build_network(spec, config)
    except (ModelsError, KeyError, TypeError, ValueError) as exc:
        raise HandoffError(f"run {result.run_id}: its network cannot be rebuilt: {exc}") from exc
    units = f"{config.num_res_units} residual unit(s), " if config.name is Architecture.UNET else ""
    described = (
        f"{run_arch['network']} filters {','.join(str(f) for f in config.filters)}, "
        f"{units}{config.norm} norm"
    )
    parent_name = str(parent_architecture.get("network", "?"))
    is_cascade = parent_name == CASCADE_NETWORK
    if is_cascade != (result.stage == REFINER):
        if is_cascade:
            raise HandoffError(
                f"run {result.run_id} trained a whole {described}; the active model "
                f"{parent_ref} is a two-stage model, of which only the refiner is federated "
                "(start the run from the active model: appliance federate start then trains "
                "its refiner): the run's weights cannot become a candidate of that model"
            )
        raise HandoffError(
            f"run {result.run_id} trained a two-stage model's refiner ({described}); the "
            f"active model {parent_ref} is a {parent_name} without a refiner: the run's "
            "weights cannot become a candidate of that model"
        )
    target, whose = parent_architecture, f"the active model {parent_ref}"
    if is_cascade:
        try:
            target = stage_architectures(parent_architecture)[1]
        except ModelsError as exc:
            raise HandoffError(f"the active model {parent_ref}: {exc}") from exc
        whose = f"the refiner of the active model {parent_ref}"
        parent_name = str(target.get("network", "?"))
    if parent_name != run_arch["network"]:
        raise HandoffError(
            f"run {result.run_id} trained a {described}; {whose} is a "
            f"{parent_name}: its weights cannot become a candidate of that model"
        )
    try:
        parent_net = build_from_card(thaw(target))
    except ModelsError as exc:
        raise HandoffError(f"the active model {parent_ref} cannot be rebuilt: {exc}") from exc
    ours, theirs = state_signature(run_net), state_signature(parent_net)
    if ours != theirs:
        raise HandoffError(
            f"run {result.run_id} trained a {described}, which is not the architecture of "
            f"{whose} ({describe_difference(ours, theirs)}); start "
            "the run from the active model (appliance federate start uses the coordinator's "
            "active model) or from weights of the same architecture"
        )


def _tensors(state: Mapping[str, np.ndarray], like: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        tensor = torch.from_numpy(np.array(value, copy=True))
        out[key] = tensor.to(like[key].dtype) if key in like else tensor
    return out


def _candidate_weights(
    result: FederatedResult, parent: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The candidate's state dict: the run's weights in the parent's dtypes; for a refiner
    run the parent's locator entries as they are plus the run's weights as the refiner."""
    from models.cascade_training import cascade_state_dict, split_state_dict

    if not result.stage:
        return _tensors(result.load_weights(), parent)
    try:
        locator, refiner = split_state_dict(parent)
    except ModelsError as exc:
        raise HandoffError(f"the active model is not a two-stage model: {exc}") from exc
    return cascade_state_dict(locator, _tensors(result.load_weights(), refiner))


def hand_off(
    store: Store,
    config: AppConfig,
    site_state_dir: Path,
    run_id: str,
    *,
    validate: bool | None = None,
    cases: Sequence[GateCase] | None = None,
) -> Handoff:
    """Register run ``run_id``'s weights at this site as a candidate of the active model
    of the run's task and, when ``validate`` (default ``federation.auto_validate``), run
    the gate on ``cases`` (default: the site's held-out cases)."""
    result = site_result(site_state_dir, run_id)
    site = str(result.extra.get("site", config.federation.site_name or ""))
    parent = store.active_model(result.task)
    if parent is None:
        raise HandoffError(
            f"run {run_id}: no active {result.task} model at this site to make a candidate "
            "of (appliance models list)"
        )
    registry = registry_for(config)
    try:
        parent_bundle = registry.get(parent.task, parent.version)
    except ModelsError as exc:
        raise HandoffError(f"the active model {parent.task}/{parent.version}: {exc}") from exc
    parent_ref = f"{parent.task}/{parent.version}"
    check_architecture(result, parent_bundle.card.architecture, parent_ref)
    version = candidate_version(parent.version, result.run_id)
    tag = f"-{_run_tag(result.run_id)}"
    # this run's candidate, if an earlier hand-off made one (it may be active by now)
    earlier = [r for r in store.list_models(result.task) if r.version.endswith(tag)]
    existed = bool(earlier)
    if earlier:
        record = earlier[0]
        version = record.version
        try:
            parent_version = registry.get(record.task, version).card.parent_version
        except ModelsError:
            parent_version = None
        LOG.info("run %s: candidate %s/%s is already registered", run_id, parent.task, version)
    else:
        parent_version = parent.version
        try:
            like = registry.load_state_dict(parent_bundle)
        except ModelsError as exc:
            raise HandoffError(f"the active model {parent_ref}: {exc}") from exc
        weights = _candidate_weights(result, like)
        source = {
            "kind": "federated",
            "strategy": result.strategy,
            "run_id": result.run_id,
            "rounds": result.rounds,
            "site": site,
            "sites": list(result.sites),
            "last_round_sites": list(result.contributors),
        }
        what = "the refiner (stage 2) of " if result.stage else ""
        training_data = (
            f"Federated fine-tuning of {what}{parent.version}: run {result.run_id}, strategy "
            f"{result.strategy}, {result.rounds} round(s), with this site ({site or 'unnamed'}) "
            "and the other sites of the run, each on its own annotated cases (training split; "
            "the held-out split was never trained on)."
        )
        if result.contributors and set(result.contributors) != set(result.sites):
            training_data += (
                f" Its last round had updates from {', '.join(result.contributors)} only "
                f"(of {', '.join(result.sites)})."
            )
        try:
            record = register_candidate(
                store,
                config,
                parent=parent,
                version=version,
                state_dict=weights,
                training_data=training_data,
                source=source,
                federated_round=result.rounds,
            )
        except ModelImportError as exc:
            raise HandoffError(str(exc)) from exc
    do_validate = config.federation.auto_validate if validate is None else validate
    report: GateReport | None = None
    skipped: tuple[str, ...] = ()
    if do_validate and record.state is ModelState.CANDIDATE:
        if cases is None:
            held_out = load_held_out(store, result.task)
            cases, skipped = held_out.cases, held_out.skipped
        for reason in skipped:
            LOG.warning("gate of %s/%s: skipped a held-out case: %s", parent.task, version, reason)
        report = run_gate(store, config, result.task, version, cases)
        record = store.get_model(result.task, version)
    LOG.info(
        "federated run %s (%s, %d round(s)) at site %s: candidate %s/%s, %s",
        result.run_id,
        result.strategy,
        result.rounds,
        site or "-",
        parent.task,
        version,
        report.decision if report is not None else f"not validated ({record.state})",
    )
    return Handoff(
        run_id=result.run_id,
        result=result,
        candidate=record,
        parent_version=parent_version or parent.version,
        existed=existed,
        gate=report,
        skipped_cases=skipped,
    )
