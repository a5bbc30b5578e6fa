"""Where a federated run starts: by default the coordinator's ACTIVE model of the task.

:func:`initial_from_active` takes the active model's bundle from the site registry,
derives the run's network settings from its card's architecture (``net-class``,
``net-filters``, ``net-res-units``, ``net-norm``) and its pre-processing (``patch-size``,
``target-spacing``), checks that the network the sites will build has exactly the
bundle's state-dict entries and shapes, and writes the weights where the ServerApp reads
``initial-weights``. Run settings describe UNets and DynUNets of the layout
:func:`models.networks.network_architecture` gives (no dropout), so an active model of
another kind is refused with a clear message; start such a run from ``--initial-weights``
or ``--fresh``.

A two-stage (cascade) active model federates only its refiner: the run settings describe
the refiner (its network, ``preprocessing.refiner``'s grid as ``patch-size`` /
``target-spacing``, its margin as ``refiner-margin``) and the initial weights are the
bundle's ``refiner.*`` entries; the locator stays as shipped and rejoins the refiner at
the hand-off (:mod:`appliance.federation.handoff`).

Settings and weights come from one derivation, :func:`card_run_config` (card only) and
:func:`trained_state` (with the weights), which the federated benchmark
(``appliance federate simulate`` with a task's ``initial``) shares. No Flower import.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.config import AppConfig
from appliance.errors import FederationError
from appliance.federation.site_state import save_state
from appliance.store import ModelRecord, Store
from models.errors import ModelsError
from models.model_card import ModelCard, thaw
from models.networks import Architecture

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True, slots=True)
class InitialModel:
    """The active model a run starts from, as run settings."""

    record: ModelRecord
    weights: Path
    #: run-config entries (``net-*``, ``patch-size``, ``target-spacing``, ``initial-weights``;
    #: for a cascade also ``refiner-margin``)
    run_config: Mapping[str, Any]

    def describe(self) -> str:
        c = self.run_config
        ref = f"{self.record.task}/{self.record.version}"
        if c.get("net-class") == Architecture.DYNUNET.value:
            network = f"DynUNet filters {c['net-filters']}, {c['net-norm']} norm"
        else:
            network = (
                f"UNet filters {c['net-filters']}, {c['net-res-units']} residual unit(s), "
                f"{c['net-norm']} norm"
            )
        grid = f"patch {c['patch-size']}, spacing {c['target-spacing']} mm"
        if "refiner-margin" in c:
            return (
                f"the refiner of the active two-stage model {ref} ({network}; {grid}, "
                f"margin {c['refiner-margin']:g} mm; its locator is not trained)"
            )
        return f"the active model {ref} ({network}; {grid})"


def _csv(values: Any) -> str:
    return ",".join(f"{float(v):g}" if isinstance(v, float) else str(int(v)) for v in values)


def _norm_name(norm: Any) -> str:
    return str(norm[0] if isinstance(norm, list | tuple) else norm).lower()


def network_settings(architecture: Mapping[str, Any], ref: str) -> dict[str, Any]:
    """The ``net-*`` run settings of a card's (or a cascade stage's) architecture: a UNet
    (:func:`unet_settings`) or a DynUNet (:func:`dynunet_settings`); anything else is
    refused naming what runs can train."""
    network = architecture.get("network")
    if network == "UNet":
        return unet_settings(architecture, ref)
    if network == "DynUNet":
        return dynunet_settings(architecture, ref)
    raise FederationError(
        f"the active model {ref} is a {network}; federated runs train UNets, DynUNets and "
        "two-stage models' refiners (start from --initial-weights or --fresh instead)"
    )


def dynunet_settings(architecture: Mapping[str, Any], ref: str) -> dict[str, Any]:
    """``net-class``/``net-filters``/``net-norm`` for a DynUNet of the layout the sites
    build (:func:`models.networks.network_architecture`: 3x3x3 kernels, stride 1 then 2 at
    every level, no residual blocks, deep supervision or dropout)."""
    kwargs = dict(architecture.get("kwargs", {}))
    filters = [int(f) for f in kwargs.get("filters") or []]
    levels = len(filters)
    if levels < 2:
        raise FederationError(f"the active model {ref} is a DynUNet without its filters")
    strides = [1] + [2] * (levels - 1)
    norm_name = _norm_name(kwargs.get("norm_name", ["INSTANCE", {"affine": True}]))
    expected = {
        "spatial_dims": 3,
        "kernel_size": [3] * levels,
        "strides": strides,
        "upsample_kernel_size": strides[1:],
        "res_block": False,
        "deep_supervision": False,
    }
    defaults = {"res_block": False, "deep_supervision": False}  # MONAI's
    for key, value in expected.items():
        if _plain(kwargs.get(key, defaults.get(key))) != value:
            raise FederationError(
                f"the active model {ref} is a DynUNet with {key}={kwargs.get(key)!r}; "
                f"federated runs build DynUNets with {key}={value!r}"
            )
    if norm_name not in ("instance", "batch"):
        raise FederationError(f"the active model {ref} uses {norm_name} normalisation")
    if float(kwargs.get("dropout", 0.0) or 0.0) != 0.0:
        raise FederationError(f"the active model {ref} uses dropout; run settings have none")
    return {
        "net-class": Architecture.DYNUNET.value,
        "net-filters": _csv(filters),
        "net-norm": norm_name,
    }


def _plain(value: Any) -> Any:
    """JSON-like values compared as lists (a card's tuples and lists alike)."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


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
    norm_name = _norm_name(kwargs.get("norm", ["INSTANCE", {"affine": True}]))
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


def card_run_config(card: ModelCard, ref: str) -> dict[str, Any]:
    """The run settings a run starting from the model of ``card`` (``ref``: how errors name
    it) trains with: ``net-class``/``net-*`` from its architecture and ``patch-size`` /
    ``target-spacing`` from its pre-processing; for a two-stage card its refiner's
    network, grid and ``refiner-margin`` (only the refiner is federated). Card only: no
    weights are read. Refuses an imported bundle that runs its own pre-processing."""
    from models.cascade_spec import CASCADE_NETWORK, REFINER, stage_architectures

    architecture = thaw(card.architecture)
    if "bundle_pipeline" in card.preprocessing:
        raise FederationError(
            f"the active model {ref} is an imported bundle that runs its own pre-processing; "
            "federated runs train and evaluate with the task's, so it cannot start a run"
        )
    pre = thaw(card.preprocessing)
    if architecture.get("network") == CASCADE_NETWORK:
        refiner = card.refiner
        try:
            refiner_arch = stage_architectures(architecture)[1]
        except ModelsError as exc:
            raise FederationError(f"the active model {ref}: {exc}") from exc
        if refiner is None:
            raise FederationError(
                f"the active model {ref} is a two-stage model without preprocessing.refiner"
            )
        entries = network_settings(refiner_arch, f"{ref} ({REFINER})")
        entries["patch-size"] = _csv(refiner.patch_size)
        entries["target-spacing"] = _csv(refiner.target_spacing_mm)
        entries["refiner-margin"] = refiner.margin_mm
        return entries
    entries = network_settings(architecture, ref)
    if pre.get("patch_size"):
        entries["patch-size"] = _csv(pre["patch_size"])
    if pre.get("target_spacing_mm"):
        entries["target-spacing"] = _csv(float(v) for v in pre["target_spacing_mm"])
    return entries


def trained_state(
    card: ModelCard, state: Mapping[str, torch.Tensor], task: str, ref: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(run-config entries, weights)`` of a run starting from the model of ``card`` with
    weights ``state``: :func:`card_run_config` and the weights the run trains (a
    two-stage model's ``refiner.*`` entries without the prefix), checked to have exactly
    the entries and shapes of the network the sites build from those settings."""
    from appliance.federation.handoff import describe_difference, state_signature
    from appliance.federation.settings import RunSettings
    from models.cascade_spec import CASCADE_NETWORK, REFINER
    from models.cascade_training import split_state_dict
    from models.networks import build_network
    from models.registry import build_network as build_from_card

    entries = card_run_config(card, ref)
    architecture = thaw(card.architecture)
    try:
        bundle_net = build_from_card(architecture)
        weights = dict(state)
        if architecture.get("network") == CASCADE_NETWORK:
            weights = split_state_dict(weights)[1]
            bundle_net = bundle_net.get_submodule(REFINER)
        settings = RunSettings.from_config({"task": task, **entries})
        run_net = build_network(settings.task_spec(), settings.network_config())
    except (ModelsError, FederationError) as exc:
        raise FederationError(f"the active model {ref}: {exc}") from exc
    ours, theirs = state_signature(run_net), state_signature(bundle_net)
    if ours != theirs or set(weights) != set(theirs):
        raise FederationError(
            f"the network the sites would build from {ref}'s card differs from the bundle "
            f"({describe_difference(ours, theirs)})"
        )
    return entries, weights


def initial_from_active(
    store: Store, config: AppConfig, task: str, directory: Path
) -> InitialModel | None:
    """The active model of ``task`` as the run's start (``None`` when there is none)."""
    from appliance.site_models.registry import registry_for

    record = store.active_model(task)
    if record is None:
        return None
    ref = f"{task}/{record.version}"
    registry = registry_for(config)
    try:
        bundle = registry.get(task, record.version)
        card_run_config(bundle.card, ref)  # refuse what no run can train before reading weights
        state = registry.load_state_dict(bundle)
    except ModelsError as exc:
        raise FederationError(f"the active model {ref}: {exc}") from exc
    entries, weights = trained_state(bundle.card, state, task, ref)
    path = directory / "initial" / f"{task}-{record.version}.pt"
    save_state(path, {k: v.detach().cpu().numpy() for k, v in weights.items()})
    entries["initial-weights"] = str(path)
    return InitialModel(record, path, entries)
