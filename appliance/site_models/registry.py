"""Models at this site: the registry on disk (``models.registry``) plus lifecycle in the store.

- :func:`import_bundle`: a MONAI-bundle-style folder (``configs/metadata.json``,
  ``configs/inference.json``, ``models/model.pt``) or a registry bundle folder
  (``model_card.json`` + weights) becomes ``<models.root>/<task>/<version>`` and a
  CANDIDATE in the store.
- :func:`register_shipped`: on first start, every task with no registered model gets the
  bundles shipped with the software (``models.shipped``), copied into the registry; the
  highest version becomes ACTIVE (logged).
- :class:`NetworkCache`: loaded networks per (task, version), weights sha256-verified at
  load by the registry.

Imports torch (through ``models.registry``): the CLI imports this module inside commands.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from appliance.config import AppConfig
from appliance.errors import ModelImportError, ModelLoadError, NotFoundError
from appliance.store import ModelRecord, Store
from models.bundle_config import config_path
from models.bundle_import import METADATA_FILE, import_monai_bundle
from models.errors import ModelsError
from models.inference import resolve_device
from models.lifecycle import ModelState
from models.model_card import (
    ModelCard,
    ModelCardError,
    check_task_name,
    check_version,
    thaw,
)
from models.probe import probe_bundle
from models.registry import CARD_FILE, ModelBundle, ModelRegistry, build_network

LOG = logging.getLogger(__name__)


def registry_for(config: AppConfig) -> ModelRegistry:
    return ModelRegistry(config.models_root)


def _record(
    store: Store, bundle: ModelBundle, origin: str, state: ModelState = ModelState.CANDIDATE
) -> ModelRecord:
    return store.register_model(
        task=bundle.task,
        version=bundle.version,
        name=bundle.card.name,
        weights_sha256=bundle.card.weights_sha256,
        federated_round=bundle.card.federated_round,
        path=bundle.path,
        origin=origin,
        state=state,
    )


def import_bundle(
    store: Store,
    config: AppConfig,
    src: Path,
    *,
    task: str,
    version: str | None = None,
    label_map: Mapping[int, str] | None = None,
) -> ModelRecord:
    """Import ``src`` (MONAI bundle or registry bundle folder) as a CANDIDATE of ``task``.

    ``label_map`` (output channel -> label name or index, see
    :func:`models.channel_map.parse_label_map`) overrides how a MONAI bundle's channels
    map to the task's labels; it is refused for a registry bundle, whose card already
    says."""
    src = Path(src)
    if not src.is_dir():
        raise ModelImportError(f"{src} is not a folder")
    registry = registry_for(config)
    try:
        check_task_name(task)
        if version is not None:
            check_version(version)
        if config_path(src, "metadata") is not None:
            bundle = import_monai_bundle(
                src, registry, task=task, version=version, label_map=label_map
            )
            origin = "monai_bundle"
        elif label_map:
            raise ModelImportError(
                f"{src.name}: --label-map applies to MONAI bundles only; a registry bundle's "
                "card already maps its channels"
            )
        elif (src / CARD_FILE).is_file():
            bundle = _copy_registry_bundle(registry, src, task=task, version=version)
            origin = "registry_bundle"
        else:
            raise ModelImportError(
                f"{src} is neither a MONAI bundle ({METADATA_FILE}) nor a registry bundle "
                f"({CARD_FILE} + weights)"
            )
        registry.verify(bundle)
    except ModelsError as exc:
        raise ModelImportError(str(exc)) from exc
    try:  # the weights must load into the card's network and run before they are accepted
        probe_bundle(registry, bundle)
    except ModelsError as exc:
        shutil.rmtree(bundle.path, ignore_errors=True)
        raise ModelImportError(f"refused {src.name} ({task}/{bundle.version}): {exc}") from exc
    record = _record(store, bundle, origin)
    LOG.info("imported model %s as a candidate (%s)", bundle.ref, origin)
    return record


def check_loadable(record: ModelRecord) -> None:
    """Test-load ``record``'s bundle as :func:`import_bundle` does (card sha256 against the
    registered one, weights into the card's network, one forward pass on the CPU);
    :class:`ModelLoadError` naming the model and why when it does not load or run."""
    try:
        bundle = ModelRegistry(record.path.parent.parent).get(record.task, record.version)
        if bundle.card.weights_sha256 != record.weights_sha256:
            raise ModelLoadError(
                f"model {bundle.ref}: its card's sha256 differs from the one registered at import"
            )
        probe_bundle(ModelRegistry(record.path.parent.parent), bundle)
    except ModelsError as exc:
        raise ModelLoadError(f"model {record.task}/{record.version} does not load: {exc}") from exc


def register_candidate(
    store: Store,
    config: AppConfig,
    *,
    parent: ModelRecord,
    version: str,
    state_dict: Mapping[str, torch.Tensor],
    training_data: str,
    source: Mapping[str, Any],
    federated_round: int | None = None,
    metrics: Mapping[str, float] | None = None,
) -> ModelRecord:
    """New weights for ``parent``'s task and architecture (e.g. the result of a federated
    run) become bundle ``task/version`` in the site registry and a CANDIDATE in the store.

    The card copies the parent's labels, architecture, pre-processing and intended use,
    records ``parent_version``, ``federated_round`` and ``source`` (for a federated run:
    ``kind``, ``strategy``, ``run_id``, ``rounds``). Nothing is active until the
    validation gate (:mod:`appliance.site_models.gate`) promotes it."""
    registry = registry_for(config)
    try:
        check_version(version)
        base = registry.get(parent.task, parent.version).card
        try:  # the weights must fit the parent's architecture before anything is written
            build_network(thaw(base.architecture)).load_state_dict(dict(state_dict), strict=True)
        except RuntimeError as exc:
            raise ModelImportError(
                f"candidate {parent.task}/{version}: the weights do not fit "
                f"{parent.version}'s architecture: {exc}"
            ) from exc
        bundle = registry.add(
            parent.task,
            version,
            state_dict,
            name=base.name,
            labels=base.labels,
            architecture=thaw(base.architecture),
            preprocessing=thaw(base.preprocessing),
            intended_use=base.intended_use,
            training_data=training_data,
            metrics=metrics,
            federated_round=federated_round,
            parent_version=parent.version,
            source=source,
        )
    except ModelsError as exc:
        raise ModelImportError(f"candidate {parent.task}/{version}: {exc}") from exc
    record = _record(store, bundle, str(source.get("kind", "candidate")))
    LOG.info(
        "registered candidate %s (parent %s, round %s)", bundle.ref, parent.version, federated_round
    )
    return record


def _copy_registry_bundle(
    registry: ModelRegistry, src: Path, *, task: str, version: str | None
) -> ModelBundle:
    try:
        card = ModelCard.from_json((src / CARD_FILE).read_bytes())
    except (OSError, ModelCardError) as exc:
        raise ModelImportError(f"{src / CARD_FILE}: {exc}") from exc
    if card.task != task:
        raise ModelImportError(f"the model card is for task {card.task!r}, not {task!r}")
    if version is not None and version != card.version:
        raise ModelImportError(
            f"the model card says version {card.version}; a registry bundle keeps its "
            "card's version (omit --version)"
        )
    bundle = ModelBundle(src, card)
    _verify_loose(bundle)
    _copy_into(registry, bundle)
    return registry.get(task, card.version)


def _verify_loose(bundle: ModelBundle) -> None:
    try:
        data = bundle.weights_path.read_bytes()
    except OSError as exc:
        raise ModelImportError(f"model {bundle.ref}: cannot read its weights: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != bundle.card.weights_sha256:
        raise ModelImportError(
            f"model {bundle.ref}: the weights do not match the sha256 of the model card"
        )


def _copy_into(registry: ModelRegistry, bundle: ModelBundle) -> None:
    final = registry.bundle_path(bundle.task, bundle.version)
    if final.exists():
        raise ModelImportError(f"model {bundle.ref} already exists in {registry.root}")
    tmp = final.parent / f".tmp-{bundle.version}-import"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        shutil.copy2(bundle.card_path, tmp / CARD_FILE)
        shutil.copy2(bundle.weights_path, tmp / bundle.card.weights_file)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def register_shipped(store: Store, config: AppConfig) -> list[ModelRecord]:
    """For each task with no model in the store, register the shipped bundles (copied into
    the registry) and activate the highest version. Returns the records it added."""
    shipped_root = config.models.shipped
    if shipped_root is None or not shipped_root.is_dir():
        return []
    shipped = ModelRegistry(shipped_root)
    registry = registry_for(config)
    added: list[ModelRecord] = []
    by_task: dict[str, list[ModelBundle]] = {}
    for bundle in shipped.list():
        by_task.setdefault(bundle.task, []).append(bundle)
    for task, bundles in sorted(by_task.items()):
        if store.list_models(task):
            continue
        for i, bundle in enumerate(bundles):  # oldest first; the last is the newest
            try:
                shipped.verify(bundle)
                if not registry.bundle_path(task, bundle.version).exists():
                    _copy_into(registry, bundle)
                local = registry.get(task, bundle.version)
            except (ModelsError, ModelImportError, OSError) as exc:
                LOG.error("shipped model %s could not be registered: %s", bundle.ref, exc)
                continue
            if i == len(bundles) - 1:
                record = _record(store, local, "shipped", ModelState.ACTIVE)
                LOG.info("registered shipped model %s and made it active (first start)", local.ref)
            else:
                record = _record(store, local, "shipped", ModelState.VALIDATED)
                LOG.info("registered shipped model %s (validated, not active)", local.ref)
            added.append(record)
    return added


@dataclass(frozen=True, slots=True)
class LoadedModel:
    bundle: ModelBundle
    network: torch.nn.Module
    device: torch.device


class NetworkCache:
    """Networks loaded from the registry, one per (task, version, sha256), kept on their
    device. Loading verifies the weights' sha256 (``ModelRegistry.load_network``)."""

    def __init__(self, config: AppConfig, *, max_entries: int = 4) -> None:
        self.config = config
        self.registry = registry_for(config)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str, str], LoadedModel] = {}

    def is_loaded(self, record: ModelRecord) -> bool:
        with self._lock:
            return (record.task, record.version, record.weights_sha256) in self._cache

    def device(self) -> torch.device:
        wanted = self.config.models.device
        return resolve_device(None if wanted == "auto" else wanted)

    def get(self, record: ModelRecord) -> LoadedModel:
        key = (record.task, record.version, record.weights_sha256)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            bundle = ModelRegistry(record.path.parent.parent).get(record.task, record.version)
            if bundle.card.weights_sha256 != record.weights_sha256:
                raise NotFoundError(
                    f"model {bundle.ref}: its card's sha256 differs from the one registered"
                )
            device = self.device()
            network = self.registry.load_network(bundle, device)
            while len(self._cache) >= self.max_entries:
                self._cache.pop(next(iter(self._cache)))
            loaded = LoadedModel(bundle, network, device)
            self._cache[key] = loaded
            LOG.info("loaded model %s on %s", bundle.ref, device)
            return loaded
