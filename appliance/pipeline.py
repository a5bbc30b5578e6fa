"""The readable end-to-end processing of one complete series.

This is also where a volume crosses from ``dicom_bridge`` (DICOM) to the numpy array +
4x4 LPS affine that ``models`` will consume.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.routing import DEFAULT_RULES, RoutingRule, SeriesFacts, route
from appliance.states import SeriesState
from appliance.store import Claim, Store
from dicom_bridge.errors import VolumeError
from dicom_bridge.sop_classes import VOLUME_CLASSES
from dicom_bridge.uids import short_ref
from dicom_bridge.volume import SeriesVolume, load_series_volume

LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    state: SeriesState
    reason: str | None = None
    detail: str | None = None
    result: dict[str, Any] | None = None
    timings: dict[str, float] = field(default_factory=dict)


def volume_summary(volume: SeriesVolume) -> dict[str, Any]:
    """The geometry of a volume as JSON-able values (recorded with the series)."""
    return {
        "shape": [int(v) for v in volume.array.shape],
        "spacing_mm": [round(float(v), 6) for v in volume.spacing],
        "affine_lps": [[float(v) for v in row] for row in volume.affine],
        "modality": volume.modality,
        "frame_of_reference_uid": volume.frame_of_reference_uid,
        "instances": len(volume.sop_instance_uids),
    }


def process_series(
    store: Store, claim: Claim, rules: Sequence[RoutingRule] = DEFAULT_RULES
) -> Outcome:
    """Take one complete series as far as the pipeline goes; never raises for bad input."""
    series = store.get_series(claim.series_uid)
    instances = store.series_instances(claim.series_uid)
    image_paths = [i.path for i in instances if i.sop_class_uid in VOLUME_CLASSES]
    if not image_paths:
        classes = sorted({i.sop_class_uid for i in instances})
        return Outcome(
            SeriesState.SKIPPED,
            "not_an_image_series",
            f"no CT/MR image instances (SOP classes: {', '.join(classes)})",
        )
    facts = SeriesFacts(
        modality=series.modality,
        body_part_examined=series.body_part_examined,
        series_description=series.series_description,
        image_type=series.image_type,
        slices=sum(i.number_of_frames for i in instances if i.sop_class_uid in VOLUME_CLASSES),
    )
    decision = route(facts, rules)
    if decision.task is None:
        return Outcome(SeriesState.SKIPPED, "no_matching_rule", decision.reason)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    try:
        volume = load_series_volume(image_paths)
    except VolumeError as exc:
        return Outcome(SeriesState.REJECTED, exc.reason, exc.detail)
    timings["volume_s"] = round(time.perf_counter() - start, 4)
    result = volume_summary(volume)
    result["task"] = decision.task
    result["routing_rule"] = decision.rule
    result["timings"] = timings
    LOG.info(
        "series %s (%s, %d instances): volume %s in %.2f s",
        short_ref(series.series_uid),
        series.modality,
        len(image_paths),
        "x".join(str(v) for v in result["shape"]),
        timings["volume_s"],
    )
    return Outcome(SeriesState.DONE, result=result, timings=timings)
