"""The model stages of a job, shared by the worker's jobs (:mod:`appliance.flow.pipeline`)
and ``appliance segment`` (:mod:`appliance.flow.offline`): which model segments a task
(:func:`model_for`), loading it (:func:`load_model`) and running it on the boundary format
(:func:`run_model`: ``models.card_inference.segment_with_card`` with the site's device and
``[limits] max_working_voxels``). A stage that fails raises :class:`StageFailed` naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np

from appliance.config import AppConfig
from appliance.errors import ApplianceError
from appliance.site_models.registry import LoadedModel, NetworkCache
from appliance.store import ModelRecord
from models.card_inference import segment_with_card
from models.errors import InputTooLargeError
from models.inference import SegmentationResult
from models.tasks import TaskSpec, get_task


class StageFailed(ApplianceError):
    """A stage of a job failed: ``reason`` names the stage (or why it could not run),
    ``detail`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")

    @classmethod
    def from_exception(cls, reason: str, exc: BaseException) -> StageFailed:
        return cls(reason, describe_exception(exc))


def describe_exception(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def load_model(networks: NetworkCache, record: ModelRecord) -> tuple[LoadedModel, TaskSpec]:
    """The registered model ``record``, loaded (weights verified), and the task spec its
    card says it was trained with; :class:`StageFailed` ``model_load_failed`` otherwise."""
    try:
        loaded = networks.get(record)
        spec = task_spec_for(record.task, loaded.bundle.card.preprocessing)
    except Exception as exc:
        raise StageFailed.from_exception("model_load_failed", exc) from exc
    return loaded, spec


def run_model(
    loaded: LoadedModel,
    spec: TaskSpec,
    image: np.ndarray,
    affine_lps: np.ndarray,
    config: AppConfig,
) -> SegmentationResult:
    """Segment ``image`` (``(slice, row, column)``, or ``(channel, slice, row, column)`` in
    the task's channel order) on its grid ``affine_lps`` (index -> LPS mm) the way the
    model's card says, post-processing included; :class:`StageFailed` ``input_too_large``
    (``limits.max_working_voxels``), ``inference_failed``, or ``nothing_found`` when a
    two-stage model's first stage found nothing to refine (:mod:`models.cascade`)."""
    try:
        result = segment_with_card(
            loaded.network,
            loaded.bundle.card,
            spec,
            image,
            affine_lps,
            device=loaded.device,
            max_working_voxels=config.limits.max_working_voxels,
        )
    except InputTooLargeError as exc:
        raise StageFailed("input_too_large", f"{exc} (limits.max_working_voxels)") from exc
    except Exception as exc:
        raise StageFailed.from_exception("inference_failed", exc) from exc
    if not result.roi_found:
        card = loaded.bundle.card
        raise StageFailed(
            "nothing_found",
            f"stage 1 of {card.task}/{card.version} found no {spec.labels[0].name.lower()} "
            "in this series, so stage 2 did not run and nothing was segmented or sent",
        )
    return result


def task_spec_for(task: str, card_preprocessing: Mapping[str, Any]) -> TaskSpec:
    """The task spec, with the patch size and spacing the model card records (a model
    imported from elsewhere may have been trained with others)."""
    spec = get_task(task)
    changes: dict[str, Any] = {}
    if "patch_size" in card_preprocessing:
        changes["patch_size"] = tuple(int(v) for v in card_preprocessing["patch_size"])
    if "target_spacing_mm" in card_preprocessing:
        changes["target_spacing_mm"] = tuple(
            float(v) for v in card_preprocessing["target_spacing_mm"]
        )
    return replace(spec, **changes) if changes else spec
