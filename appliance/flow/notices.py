""" "Not processed" notices: what a radiologist sees in the PACS when a series that was
routed to a model is rejected or its job fails (``destinations[i].outputs`` has
``notice``).

:func:`notice_for` writes the notice (:func:`dicom_bridge.notice.write_notice`: one
Secondary Capture image in the series' study, the words drawn on it) under the series'
result folder and returns the outbox items for the destinations that ask for it; the
pipeline queues them in the transaction that records the series' end, so a series
re-opened meanwhile sends none. :data:`REASONS` puts each rejection and failure reason in
plain words; the technical detail follows (it never holds patient data). No notice is made
for a series no rule routes to a model (a localizer or a dose report would flood the
PACS with them) nor for a superseded job (the newer generation is processed instead).
"""

from __future__ import annotations

import logging
from typing import Final

from pydicom import dcmread

from appliance.config import AppConfig, OutputKind
from appliance.flow.saving import save_dataset
from appliance.store import Claim, Enqueue, Store
from dicom_bridge.notice import NoticeOptions, write_notice
from dicom_bridge.uids import short_ref, validate_uid
from models.tasks import get_task

LOG = logging.getLogger(__name__)

_READ_AS_VOLUME: Final = "its images could not be read as one regular volume"

#: Why a series was not segmented, in a radiologist's words (by rejection or failure reason).
REASONS: Final[dict[str, str]] = {
    "gantry_tilt": "its slices were acquired with gantry tilt, which the model cannot read",
    "missing_slices": "slices are missing from the series (a gap between slice positions)",
    "uneven_spacing": "its slices are not evenly spaced",
    "duplicate_positions": "two or more of its slices are at the same position",
    "inconsistent_positions": _READ_AS_VOLUME,
    "mixed_orientation": "its slices do not all have the same orientation",
    "mixed_dimensions": "its images do not all have the same size",
    "mixed_series": "its instances belong to more than one series",
    "mixed_instances": _READ_AS_VOLUME,
    "single_slice": "it has a single slice; the model needs a stack of slices",
    "localizer": "it is a localizer (scout) series",
    "too_large": "it is larger than this appliance is configured to process",
    "input_too_large": "it is larger than the model may process",
    "unreadable": _READ_AS_VOLUME,
    "unsupported_pixels": "its pixel data are in a form the appliance cannot read",
    "missing_geometry": "its images lack the position and orientation a volume needs",
    "not_a_volume": _READ_AS_VOLUME,
    "no_images": "it holds no CT or MR images",
    "nothing_found": "the model found no organ to segment in it",
    "no_active_model": "no model is active for this task on the appliance",
}
#: Reasons that make no notice.
SILENT: Final = frozenset({"superseded"})


def notice_destinations(config: AppConfig) -> tuple[str, ...]:
    """The output destinations that receive notices."""
    return tuple(
        name
        for name in config.output_destinations
        if OutputKind.NOTICE in config.destination(name).outputs
    )


def notice_text(task: str, reason: str, detail: str | None) -> tuple[str, list[str]]:
    """The notice's title and paragraphs."""
    try:
        what = get_task(task).description
    except Exception:  # an unknown task name still gets a notice
        what = task
    why = REASONS.get(reason, f"processing failed ({reason.replace('_', ' ')})")
    body = [f"No AI segmentation was made for this series: {why}.", f"Model: {what}."]
    if detail:
        body.append(f"Detail: {detail[:240]}")
    return "NOT PROCESSED", body


def notice_for(
    store: Store,
    config: AppConfig,
    claim: Claim,
    task: str,
    reason: str,
    detail: str | None,
) -> tuple[Enqueue, ...]:
    """Write the notice of ``claim``'s series (routed to ``task``, ended for ``reason``)
    and return its outbox items; none when no destination asks for notices, the reason
    is silent, or the notice cannot be made (logged: the series' own end is recorded
    whatever happens here)."""
    destinations = notice_destinations(config)
    if not destinations or reason in SILENT:
        return ()
    ref = short_ref(claim.series_uid)
    try:
        instances = store.series_instances(claim.series_uid)
        if not instances:
            return ()
        source = dcmread(instances[0].path, stop_before_pixels=True)
        title, body = notice_text(task, reason, detail)
        notice = write_notice(
            source, title, body, NoticeOptions(research_only=config.output.research_only)
        )
        folder = (
            config.results_dir
            / validate_uid(claim.series_uid, what="SeriesInstanceUID")
            / f"gen-{int(claim.generation)}"
        )
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "notice.dcm"
        save_dataset(notice, path)
    except Exception as exc:  # the notice is a courtesy; the series' end must be recorded
        LOG.error("series %s: could not make its not-processed notice: %s", ref, type(exc).__name__)
        return ()
    LOG.info("series %s: not-processed notice (%s) for %s", ref, reason, ", ".join(destinations))
    uid = str(notice.SOPInstanceUID)
    return tuple(Enqueue(dest, path, uid) for dest in destinations)
