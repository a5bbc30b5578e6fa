"""Shared by the flow tests: a real config, a tiny active model, series ingested as the
listener would record them, and a worker pass."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from appliance.config import AppConfig, parse_config
from appliance.errors import StoreError
from appliance.flow.ingest import to_new_instance
from appliance.flow.worker import Worker
from appliance.site_models.registry import import_bundle
from appliance.store import Store
from dicom_bridge.instance import describe_spooled_file
from dicom_bridge.synthetic import SeriesGeometry
from models.lifecycle import ModelState
from models.model_card import labels_for_task, preprocessing_for_task
from models.registry import ModelBundle, ModelRegistry, build_network
from models.tasks import get_task
from tests.appliance.tiny_models import TINY_ARCHITECTURE, make_tiny_bundle

GEOMETRY = SeriesGeometry(slices=24, rows=64, columns=64)
SMALL = SeriesGeometry(slices=12, rows=32, columns=32)


def make_config(
    root: Path,
    other_outputs: list[str] | None = None,
    *,
    other_all_frames: bool = False,
    **output: object,
) -> AppConfig:
    """Two destinations, ``pacs`` and ``other`` (receiving ``other_outputs`` when given,
    with every SEG frame when ``other_all_frames``)."""
    other: dict[str, object] = {"name": "other", "ae_title": "OTHER", "host": "127.0.0.1"}
    other["port"] = 105
    if other_outputs is not None:
        other["outputs"] = other_outputs
    if other_all_frames:
        other["seg_all_frames"] = True
    return parse_config(
        {
            "storage": {"root": str(root / "data"), "fsync": False},
            "models": {"shipped": "", "device": "cpu"},
            "destinations": [
                {"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104},
                other,
            ],
            "output": dict(output),
        }
    )


def activate(store: Store, config: AppConfig, bundle: ModelBundle) -> str:
    """Import ``bundle`` for liver_ct and make it the active model; its version."""
    record = import_bundle(store, config, bundle.path, task="liver_ct")
    assert record.state is ModelState.CANDIDATE
    store.activate("liver_ct", record.version, force=True)
    return record.version


def activate_tiny(store: Store, config: AppConfig, tmp: Path, version: str = "0.0.1-test") -> str:
    return activate(store, config, make_tiny_bundle(tmp / f"src-{version}", version=version))


def make_named_bundle(root: Path, name: str, version: str = "0.0.1-named") -> ModelBundle:
    """Like :func:`make_tiny_bundle` (liver_ct), with the model card name ``name``."""
    spec = get_task("liver_ct")
    architecture = {
        **TINY_ARCHITECTURE,
        "kwargs": {**TINY_ARCHITECTURE["kwargs"], "out_channels": spec.num_classes},
    }
    torch.manual_seed(0)
    preprocessing = preprocessing_for_task(spec)
    preprocessing["patch_size"] = [32, 32, 32]
    preprocessing["target_spacing_mm"] = [3.0, 3.0, 3.0]
    return ModelRegistry(root).add(
        "liver_ct",
        version,
        build_network(architecture).state_dict(),
        name=name,
        labels=labels_for_task(spec),
        architecture=architecture,
        preprocessing=preprocessing,
        intended_use="Tests only: untrained. Not for clinical use.",
        training_data="none",
    )


class FailsAfterTheJobStarted(Store):
    """A real store whose next ``failures`` writes right after ``start_job`` fail (as a
    disk error would); the ones after that succeed."""

    failures = 0

    def set_job_model(self, *args: Any, **kwargs: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreError("database error: disk I/O error")
        super().set_job_model(*args, **kwargs)


def ingest(store: Store, files: list[Path]) -> None:
    """Record ``files`` as received instances, and complete their series at once."""
    for path in files:
        store.record_instance(to_new_instance(describe_spooled_file(path)))
    store.complete_quiet_series(-1.0)


def run_worker(store: Store, config: AppConfig) -> None:
    assert Worker(store, threading.Event(), config).run_once()
