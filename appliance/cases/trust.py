"""Annotations are trusted explicitly: who may submit them, and which need review.

A SEG received over DICOM becomes a case only when its calling AE title is one of
``cases.annotation_callers``; from any other caller it is stored as received but refused
as a case (reason ``caller_not_trusted``, recorded with the caller). The caller is the
``calling_ae`` of the SEG's stored instance row. ``appliance cases import`` is an admin's
action and needs no listed caller.

A new case is ``pending`` (used neither for training nor by the validation gate until an
admin accepts it: ``appliance cases review|accept|reject``) when any of these holds; each
reason is recorded on the case and in its ``case_added`` audit entry:

- ``caller_needs_review``: its caller is not in ``cases.trusted_callers``;
- ``label_fraction``: more than ``cases.max_label_fraction`` of the volume is labelled;
- ``outside_body``: on a CT, more than ``cases.max_outside_body_fraction`` of the labelled
  voxels lie on air-like intensities (below ``cases.outside_body_hu``, default -500 HU).
  MR intensities have no absolute scale, so this check is skipped for MR;
- ``prediction_ratio``: where a job of this appliance segmented the series for the same
  task, the labelled voxels (all labels together) against the model's are outside
  ``cases.prediction_ratio`` (default 0.2x to 5x);
- ``conflicts_with_case N``: the series already has an active case of the task from
  another caller (decided by the store, :meth:`appliance.store.CaseStore.add_case`): a
  case never silently replaces another caller's.

The checks apply to every case, the trusted caller's and the admin's import too.
"""

from __future__ import annotations

import numpy as np

from appliance.config import AppConfig
from appliance.states import CaseOrigin
from appliance.store import Store

__all__ = ["caller_allowed", "plausibility_review", "review_reasons"]


def caller_allowed(config: AppConfig, origin: CaseOrigin, calling_ae: str | None) -> bool:
    """Whether an annotation from ``calling_ae`` may become a case at all."""
    if origin is CaseOrigin.CLI:
        return True
    return calling_ae is not None and calling_ae.strip() in config.cases.annotation_callers


def plausibility_review(
    store: Store,
    config: AppConfig,
    *,
    task: str,
    series_uid: str,
    modality: str,
    labels: np.ndarray,
    image: np.ndarray | None,
) -> list[str]:
    """The reasons a label map is implausible (empty when it is not)."""
    cases = config.cases
    reasons: list[str] = []
    labelled = labels > 0
    n_labelled = int(np.count_nonzero(labelled))
    if labels.size and n_labelled / labels.size > cases.max_label_fraction:
        reasons.append(
            f"label_fraction: {n_labelled / labels.size:.2f} of the volume is labelled "
            f"(more than cases.max_label_fraction {cases.max_label_fraction:g})"
        )
    if (
        image is not None
        and modality.upper() == "CT"
        and n_labelled
        and image.shape == labels.shape
    ):
        air = int(np.count_nonzero(image[labelled] < cases.outside_body_hu))
        if air / n_labelled > cases.max_outside_body_fraction:
            reasons.append(
                f"outside_body: {air / n_labelled:.2f} of the labelled voxels are below "
                f"{cases.outside_body_hu:g} HU (more than cases.max_outside_body_fraction "
                f"{cases.max_outside_body_fraction:g})"
            )
    predicted = store.prediction_voxels(series_uid, task)
    if predicted is not None:
        model = sum(predicted.values())
        low, high = cases.prediction_ratio
        if model > 0 and not low <= n_labelled / model <= high:
            reasons.append(
                f"prediction_ratio: {n_labelled} labelled voxels against the model's "
                f"{model} ({n_labelled / model:.2f}x, outside {low:g}x to {high:g}x)"
            )
    return reasons


def review_reasons(config: AppConfig, origin: CaseOrigin, calling_ae: str | None) -> list[str]:
    """The reasons of trust (not of plausibility) a new case needs review."""
    if origin is CaseOrigin.CLI or (
        calling_ae is not None and calling_ae.strip() in config.cases.trusted_callers
    ):
        return []
    return [f"caller_needs_review: {calling_ae or '?'} is not in cases.trusted_callers"]
