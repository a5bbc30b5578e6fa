"""Where a federated run starts: by default the coordinator's ACTIVE model of the task.

:func:`initial_from_active` takes the active model's bundle from the site registry,
derives the run's network settings from its card's architecture (``net-filters``,
``net-res-units``, ``net-norm``) and its pre-processing (``patch-size``,
``target-spacing``), checks that the network the sites will build has exactly the
bundle's state-dict entries and shapes, and writes the weights where the ServerApp reads
``initial-weights``. Run settings are UNet-only (they name no network class and no
dropout), so an active model of another kind is refused with a clear message; start such
a run from ``--initial-weights`` or ``--fresh``. No Flower import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.config import AppConfig
from appliance.errors import FederationError
from appliance.federation.site_state import save_state
from appliance.store import ModelRecord, Store
from models.errors import ModelsError
from models.model_card import thaw


@dataclass(frozen=True, slots=True)
class InitialModel:
    """The active model a run starts from, as run settings."""

    record: ModelRecord
    weights: Path
    #: run-config entries (``net-*``, ``patch-size``, ``target-spacing``, ``initial-weights``)
    run_config: Mapping[str, Any]

    def describe(self) -> str:
        c = self.run_config
        return (
            f"the active model {self.record.task}/{self.record.version} "
            f"(UNet filters {c['net-filters']}, {c['net-res-units']} residual unit(s), "
            f"{c['net-norm']} norm; patch {c['patch-size']}, spacing {c['target-spacing']} mm)"
        )


def _csv(values: Any) -> str:
    return ",".join(f"{float(v):g}" if isinstance(v, float) else str(int(v)) for v in values)


def unet_settings(architecture: Mapping[str, Any], ref: str) -> dict[str, Any]:
    """``net-filters``/``net-res-units``/``net-norm`` for a card's UNet architecture."""
    if architecture.get("network") != "UNet":
        raise FederationError(
            f"the active model {ref} is a {architecture.get('network')}; federated runs "
            "train UNets (start from --initial-weights or --fresh instead)"
        )
    kwargs = dict(architecture.get("kwargs", {}))
    channels = [int(c) for c in kwargs.get("channels", [])]
    strides = kwargs.get("strides", [])
    norm = kwargs.get("norm", ["INSTANCE", {"affine": True}])
    norm_name = str(norm[0] if isinstance(norm, list | tuple) else norm).lower()
    if kwargs.get("spatial_dims", 3) != 3 or list(strides) != [2] * (len(channels) - 1):
        raise FederationError(
            f"the active model {ref} is a UNet with strides {strides}; federated runs "
            "downsample by 2 at every level"
        )
    if norm_name not in ("instance", "batch"):
        raise FederationError(f"the active model {ref} uses {norm_name} normalisation")
    if float(kwargs.get("dropout", 0.0) or 0.0) != 0.0:
        raise FederationError(f"the active model {ref} uses dropout; run settings have none")
    return {
        "net-filters": _csv(channels),
        "net-res-units": int(kwargs.get("num_res_units", 0)),
        "net-norm": norm_name,
    }


def initial_from_active(
    store: Store, config: AppConfig, task: str, directory: Path
) -> InitialModel | None:
    """The active model of ``task`` as the run's start (``None`` when there is none)."""
    from appliance.federation.handoff import describe_difference, state_signature
    from appliance.federation.settings import RunSettings
    from appliance.site_models.registry import registry_for
    from models.networks import build_network
    from models.registry import build_network as build_from_card

    record = store.active_model(task)
    if record is None:
        return None
    ref = f"{task}/{record.version}"
    registry = registry_for(config)
    try:
        bundle = registry.get(task, record.version)
        architecture = thaw(bundle.card.architecture)
        state = registry.load_state_dict(bundle)
        bundle_net = build_from_card(architecture)
    except ModelsError as exc:
        raise FederationError(f"the active model {ref}: {exc}") from exc
    if "bundle_pipeline" in bundle.card.preprocessing:
        raise FederationError(
            f"the active model {ref} is an imported bundle that runs its own pre-processing; "
            "federated runs train and evaluate with the task's, so it cannot start a run"
        )
    entries = unet_settings(architecture, ref)
    pre = thaw(bundle.card.preprocessing)
    if pre.get("patch_size"):
        entries["patch-size"] = _csv(pre["patch_size"])
    if pre.get("target_spacing_mm"):
        entries["target-spacing"] = _csv(float(v) for v in pre["target_spacing_mm"])
    settings = RunSettings.from_config({"task": task, **entries})
    try:
        run_net = build_network(settings.task_spec(), settings.network_config())
    except ModelsError as exc:
        raise FederationError(f"the active model {ref}: {exc}") from exc
    ours, theirs = state_signature(run_net), state_signature(bundle_net)
    if ours != theirs or set(state) != set(theirs):
        raise FederationError(
            f"the network the sites would build from {ref}'s card differs from the bundle "
            f"({describe_difference(ours, theirs)})"
        )
    weights = directory / "initial" / f"{task}-{record.version}.pt"
    save_state(weights, {k: v.detach().cpu().numpy() for k, v in state.items()})
    entries["initial-weights"] = str(weights)
    return InitialModel(record, weights, entries)
