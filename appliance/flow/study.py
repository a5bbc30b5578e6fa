"""Tasks of several series of one study, by role (e.g. glioma_brats: T1c, T1, T2, FLAIR).

A routing rule with a ``role`` says which task channel a series fills. The task's first
channel is the *reference* role: its series is the only one that ever runs the study's
job (a series is claimed by one worker at a time, so two workers never both run it).
When a role series is claimed, the study's other series (same StudyInstanceUID, routed
with the same rules) decide what happens:

- all roles present and ready (not RECEIVING), and the claimed series is the reference:
  one job on it; every role's volume is loaded, must share the reference's Frame of
  Reference (no registration is attempted), is resampled onto the reference grid where
  the grids differ, and the channels are stacked in the task's order (:func:`load_inputs`);
- the claimed series is not the reference: it ends SKIPPED ``study_input``; when all roles
  are ready and the reference is waiting, the reference is put back to COMPLETE;
- a role missing or still arriving, for the reference: SKIPPED ``waiting_for_roles``;
  :func:`sweep_waiting_studies` (the scheduler) re-queues it once its roles are there, or
  gives up after ``routing.study_wait_minutes`` (``missing_roles``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.config import AppConfig
from appliance.routing import RouteDecision, SeriesFacts, route
from appliance.states import SeriesState, StudyReason
from appliance.store import Claim, InstanceRecord, SeriesRecord, Store
from dicom_bridge.errors import VolumeError
from dicom_bridge.sop_classes import VOLUME_CLASSES
from dicom_bridge.uids import short_ref
from dicom_bridge.volume import SeriesVolume, load_series_volume
from models.errors import SpecError
from models.geometry import resample_to_grid, same_grid
from models.tasks import get_task

LOG = logging.getLogger(__name__)

_WAITING = (StudyReason.WAITING_FOR_ROLES.value, StudyReason.MISSING_ROLES.value)


@dataclass(frozen=True, slots=True)
class NotRun:
    """Why a claimed role series gets no job (now): its state, reason and detail."""

    state: SeriesState
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Member:
    """One role series of a study: its record and its image files."""

    role: str
    series: SeriesRecord
    paths: tuple[Path, ...]

    @property
    def ready(self) -> bool:  # its instances have stopped arriving
        return self.series.state is not SeriesState.RECEIVING


@dataclass(frozen=True, slots=True)
class StudyRoles:
    """The role series chosen for a study's job (every role present and ready)."""

    task: str
    members: tuple[Member, ...]  # in the task's channel order; the first is the reference


@dataclass(frozen=True, slots=True)
class StudyInputs:
    """A study job's input: the channels on the reference grid, and what they came from."""

    image: np.ndarray  # (channels, slice, row, column) float32
    inputs: dict[str, str]  # role -> SeriesInstanceUID
    others: tuple[Claim, ...]  # the other role series (and generations) used
    other_paths: tuple[tuple[Path, ...], ...]


def facts_of(series: SeriesRecord, instances: Sequence[InstanceRecord]) -> SeriesFacts:
    return SeriesFacts(
        modality=series.modality,
        body_part_examined=series.body_part_examined,
        series_description=series.series_description,
        image_type=series.image_type,
        contrast_bolus_agent=series.contrast_bolus_agent,
        scanning_sequence=series.scanning_sequence,
        echo_time_ms=series.echo_time_ms,
        repetition_time_ms=series.repetition_time_ms,
        inversion_time_ms=series.inversion_time_ms,
        slices=sum(i.number_of_frames for i in instances if i.sop_class_uid in VOLUME_CLASSES),
    )


def task_roles(task: str | None) -> tuple[str, ...]:
    """The channel names of a task that takes several series; () for any other task."""
    try:
        channels = tuple(c.name for c in get_task(task or "").channels)
    except SpecError:
        return ()
    return channels if len(channels) > 1 else ()


def gather(
    store: Store, claim: Claim, decision: RouteDecision, config: AppConfig
) -> NotRun | StudyRoles:
    """The claimed series (routed to a role of a study task): its study's job, or why not."""
    task = decision.task or ""
    roles = task_roles(task)
    series = store.get_series(claim.series_uid)
    chosen = _chosen(store, series, task, roles, config)
    reference = chosen.get(roles[0])
    missing = [r for r in roles if r not in chosen or not chosen[r].ready]
    if reference is None or reference.series.series_uid != claim.series_uid:
        if reference is None:
            detail = f"input of a {task} study; waiting for its {roles[0]} series"
        else:
            detail = f"input of the {task} job on series {short_ref(reference.series.series_uid)}"
            if not missing:
                _requeue_if_waiting(store, reference.series)
        return NotRun(SeriesState.SKIPPED, StudyReason.STUDY_INPUT, detail)
    if missing:
        return NotRun(
            SeriesState.SKIPPED,
            StudyReason.WAITING_FOR_ROLES,
            f"{task} needs {', '.join(missing)}; waiting up to {config.study_wait_minutes:g} min",
        )
    return StudyRoles(task, tuple(chosen[r] for r in roles))


def load_inputs(
    study: StudyRoles, reference: SeriesVolume, config: AppConfig
) -> NotRun | StudyInputs:
    """Every role's volume on the reference grid, stacked in channel order; or the
    recorded refusal (an unreadable series, another Frame of Reference)."""
    channels = [reference.array.astype(np.float32)]
    for member in study.members[1:]:
        ref = short_ref(member.series.series_uid)
        try:
            volume = load_series_volume(member.paths, config.limits.sizes)
        except VolumeError as exc:
            return NotRun(
                SeriesState.REJECTED, exc.reason, f"{member.role} series {ref}: {exc.detail}"
            )
        if volume.frame_of_reference_uid != reference.frame_of_reference_uid:
            return NotRun(
                SeriesState.REJECTED,
                "frame_of_reference_mismatch",
                f"{member.role} series {ref}: different frame of reference; "
                "no registration is attempted",
            )
        shape = reference.array.shape
        if same_grid(volume.array.shape, volume.affine, shape, reference.affine):
            channels.append(volume.array.astype(np.float32))
        else:
            channels.append(resample_to_grid(volume.array, volume.affine, shape, reference.affine))
    others = study.members[1:]
    return StudyInputs(
        image=np.stack(channels),
        inputs={m.role: m.series.series_uid for m in study.members},
        others=tuple(Claim(m.series.series_uid, m.series.generation) for m in others),
        other_paths=tuple(m.paths for m in others),
    )


def mark_inputs(
    store: Store, inputs: StudyInputs, task: str, job_id: int, reference_uid: str
) -> None:
    """After the study's job: its other series end ``study_input``, naming the job."""
    detail = f"input of the {task} job {job_id} on series {short_ref(reference_uid)}"
    store.mark_study_inputs(inputs.others, detail)


def sweep_waiting_studies(store: Store, config: AppConfig) -> None:
    """Reference series waiting for roles: re-queued once every role is there; after
    ``routing.study_wait_minutes``, given up on (``missing_roles``, naming them)."""
    wait = config.study_wait_minutes
    due = {s.series_uid for s in store.waiting_references(wait * 60.0)}
    for series in store.waiting_references(0.0):
        instances = store.series_instances(series.series_uid)
        decision = route(facts_of(series, instances), config.routing)
        roles = task_roles(decision.task)
        if not roles or decision.role != roles[0]:
            continue
        chosen = _chosen(store, series, decision.task or "", roles, config)
        missing = [r for r in roles if r not in chosen or not chosen[r].ready]
        if not missing:
            _requeue_if_waiting(store, series)
        elif series.series_uid in due:
            names = ", ".join(m.upper() for m in missing)
            detail = f"no {names} series after {wait:g} minutes"
            if store.give_up_waiting(Claim(series.series_uid, series.generation), detail):
                LOG.info("series %s not processed: %s", short_ref(series.series_uid), detail)


def _chosen(
    store: Store, series: SeriesRecord, task: str, roles: tuple[str, ...], config: AppConfig
) -> dict[str, Member]:
    """The series of each role present in the study: per role the ready one received
    last (a series given again replaces the older one)."""
    found: dict[str, list[Member]] = {}
    for other in store.study_series(series.study_uid):
        instances = store.series_instances(other.series_uid)
        paths = tuple(i.path for i in instances if i.sop_class_uid in VOLUME_CLASSES)
        if not paths:
            continue
        decision = route(facts_of(other, instances), config.routing)
        if decision.task == task and decision.role in roles:
            role = decision.role or ""
            found.setdefault(role, []).append(Member(role, other, paths))
    return {
        role: max(members, key=lambda m: (m.ready, m.series.last_instance_at, m.series.series_uid))
        for role, members in found.items()
    }


def _requeue_if_waiting(store: Store, reference: SeriesRecord) -> None:
    waiting = reference.state is SeriesState.SKIPPED and reference.reason in _WAITING
    if waiting and store.requeue_study_reference(reference.series_uid):
        LOG.info(
            "series %s: its study's roles are all there; re-queued",
            short_ref(reference.series_uid),
        )
