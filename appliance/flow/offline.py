"""``appliance segment``: a DICOM series folder or a NIfTI file segmented offline through
the clinical path of a job, its output a NIfTI on the input grid.

A DICOM folder goes the way a received series does: its files are recorded in a scratch
store (a temporary folder, deleted afterwards) exactly as the listener records them, and
:func:`appliance.flow.pipeline.prepare_series` routes the series with the site's rules
(or takes the given task), gathers a study's role series for a task of several series
(:mod:`appliance.flow.study`) and builds the volume with ``dicom_bridge``'s geometry checks
and ``[limits]``. A NIfTI file (no DICOM attributes to route on) needs its task, and
:mod:`appliance.flow.nifti_io` turns it into the same boundary format. Either way the
model (the site's active model for the task, or the given version) is loaded and run by
:mod:`appliance.flow.segmenting`, the stages a job runs. The site's store is only read
(for the model): no series, job or case is recorded there.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.config import AppConfig
from appliance.errors import ApplianceError, SegmentError
from appliance.flow import study
from appliance.flow.ingest import to_new_instance
from appliance.flow.nifti_io import is_nifti, read_image, write_mask
from appliance.flow.pipeline import NoJob, Routed, prepare_series
from appliance.flow.segmenting import load_model, run_model
from appliance.routing import route
from appliance.site_models.registry import NetworkCache
from appliance.store import Claim, ModelRecord, Store
from dicom_bridge.errors import DicomBridgeError
from dicom_bridge.instance import describe_spooled_file
from models.errors import SpecError
from models.inference import SegmentationResult
from models.tasks import TASKS, get_task

#: Files of a DICOM folder that are not instances of its series.
_NOT_INSTANCES = frozenset({"DICOMDIR"})


@dataclass(frozen=True, slots=True)
class Segmented:
    """What ``appliance segment`` made: the task, the model that ran, and the mask on the
    input grid (``affine_lps``: index -> LPS mm)."""

    task: str
    model: ModelRecord
    mask: np.ndarray
    affine_lps: np.ndarray
    segmentation: SegmentationResult

    def __post_init__(self) -> None:
        if self.affine_lps.shape != (4, 4):
            raise ValueError("affine_lps must be 4x4")
        if self.mask.ndim not in (3, 4):
            raise ValueError(f"a mask is 3-D or 4-D, not {self.mask.ndim}-D")


def segment_path(
    site: Store,
    config: AppConfig,
    source: Path,
    output: Path,
    *,
    task: str | None = None,
    version: str | None = None,
    networks: NetworkCache | None = None,
) -> Segmented:
    """Segment ``source`` (a DICOM series folder, a study folder for a task of several
    series, or a ``.nii``/``.nii.gz`` file) and write the NIfTI ``output``; raises
    :class:`SegmentError` (or a stage's :class:`~appliance.flow.segmenting.StageFailed`)
    before anything is written."""
    if task is not None:
        check_task(task)
    if not is_nifti(output):
        raise SegmentError(f"--out {output.name}: the output must end in .nii or .nii.gz")
    if output.resolve() == source.resolve():
        raise SegmentError("--out must not be INPUT itself")
    if not output.parent.is_dir():
        raise SegmentError(f"--out: the folder {output.parent} does not exist")
    if source.is_dir():
        task, image, affine = _dicom_input(config, source, task)
    elif source.is_file() and is_nifti(source):
        if task is None:
            raise SegmentError(
                f"a NIfTI file has no DICOM attributes to route on; give --task (one of "
                f"{', '.join(TASKS)})"
            )
        image, affine = read_image(source, len(get_task(task).channels), config.limits.sizes)
    elif source.exists():
        raise SegmentError(
            f"{source.name}: INPUT must be a DICOM series folder or a .nii/.nii.gz file"
        )
    else:
        raise SegmentError(f"INPUT {source} does not exist")
    record = model_for(site, task, version)
    loaded, spec = load_model(networks if networks is not None else NetworkCache(config), record)
    segmentation = run_model(loaded, spec, image, affine, config)
    try:
        write_mask(output, segmentation.mask, affine)
    except OSError as exc:
        raise SegmentError(f"--out: cannot write {output.name} ({exc.strerror or exc})") from None
    return Segmented(task, record, segmentation.mask, affine, segmentation)


def check_task(task: str) -> None:
    try:
        get_task(task)
    except SpecError:
        raise SegmentError(f"--task {task} is not a task; one of {', '.join(TASKS)}") from None


def model_for(site: Store, task: str, version: str | None) -> ModelRecord:
    """The site's active model for ``task``, or its registered ``version``."""
    if version is not None:
        try:
            return site.get_model(task, version)
        except ApplianceError as exc:
            versions = ", ".join(m.version for m in site.list_models(task)) or "none"
            raise SegmentError(f"--version: {exc} (registered: {versions})") from None
    record = site.active_model(task)
    if record is None:
        raise SegmentError(
            f"no active model for {task}; activate one (appliance models list/activate) "
            "or give --version"
        )
    return record


def _dicom_input(
    config: AppConfig, folder: Path, task: str | None
) -> tuple[str, np.ndarray, np.ndarray]:
    """The task, image and affine of a DICOM folder, the way a job gets them."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    files = [p for p in files if p.name.upper() not in _NOT_INSTANCES]
    if not files:
        raise SegmentError(f"{folder} holds no files")
    with tempfile.TemporaryDirectory(prefix="appliance-segment-") as scratch_dir:
        scratch = Store(Path(scratch_dir) / "scratch.sqlite")
        try:
            for index, path in enumerate(files):
                try:
                    scratch.record_instance(to_new_instance(describe_spooled_file(path)))
                except (DicomBridgeError, ApplianceError) as exc:
                    raise SegmentError(
                        f"file {index + 1} ({path.name}) is not a usable DICOM instance: {exc}"
                    ) from None
            scratch.complete_quiet_series(-1.0)
            claim = _claim(scratch, config, task)
            prepared = prepare_series(scratch, claim, config, task=task)
        finally:
            scratch.close()
    if isinstance(prepared, NoJob):
        raise SegmentError(_why_not(prepared))
    return prepared.task, _image_of(prepared), prepared.volume.affine


def _image_of(prepared: Routed) -> np.ndarray:
    inputs = prepared.study_inputs
    return prepared.volume.array if inputs is None else inputs.image


def _claim(scratch: Store, config: AppConfig, task: str | None) -> Claim:
    """The series of the folder to run: its one series, or the reference series of a task
    of several series (every series of the folder belongs to one study)."""
    series = scratch.list_series()
    if len(series) == 1:
        return Claim(series[0].series_uid, series[0].generation)
    references = []
    for record in series:
        decision = route(
            study.facts_of(record, scratch.series_instances(record.series_uid)), config.routing
        )
        roles = study.task_roles(decision.task)
        if roles and decision.role == roles[0] and task in (None, decision.task):
            references.append(record)
    if len(references) == 1 and len({s.study_uid for s in series}) == 1:
        return Claim(references[0].series_uid, references[0].generation)
    several = sorted({str(t) for t in TASKS if study.task_roles(str(t))})
    raise SegmentError(
        f"the folder holds {len(series)} series; "
        "give the folder of one series, or the folder of one study for a task of several "
        f"series ({', '.join(several)}) whose series the routing rules give their roles"
    )


def _why_not(ended: NoJob) -> str:
    """Why a prepared series would get no job, in the words a job's record uses."""
    detail = f": {ended.detail}" if ended.detail else ""
    hint = (
        f"; give --task (one of {', '.join(TASKS)})" if ended.reason == "no_matching_rule" else ""
    )
    return f"not segmented ({ended.reason or ended.state.value}){detail}{hint}"
