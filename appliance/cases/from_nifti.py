"""A NIfTI label file on a stored series becomes a training case, or a recorded refusal.

``appliance cases import --nifti FILE --series DIR --task TASK [--label-map 5=liver]``:
:func:`case_from_nifti` checks the series against the task (modality, one regular
volume), places the labels on the series grid (:func:`nifti_onto_grid`), maps the file's
values to the task's label indices (:func:`parse_label_map`; without a map the values
must be the task's indices) and records the case (:mod:`appliance.cases.recording`).

The labels go onto the grid of the DICOM series without resampling. NIfTI stores an
index -> RAS millimetre affine; the series grid
(:func:`dicom_bridge.volume.load_series_volume`) is ``(slice, row, column)`` -> LPS. The
voxel map between the two, ``inv(A_lps) @ diag(-1, -1, 1, 1) @ A_nifti``, must be a signed
permutation of the axes with an integer shift that covers the series grid exactly (each
NIfTI voxel centre on a series voxel centre, tolerance 0.05 voxel and 1e-3 in the
rotation); the labels are then transposed and flipped onto the grid. Anything else (a
label file for another series, a resampled or cropped one) is refused as
``geometry_mismatch``: moving labels between grids by interpolation is not an annotation.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from appliance.cases.recording import SegOutcome, record_case, record_refusal
from appliance.config import AppConfig
from appliance.errors import CaseRefused, NotFoundError
from appliance.states import CaseOrigin, Refusal
from appliance.store import Store
from dicom_bridge.errors import VolumeError
from dicom_bridge.seg import SourceSeriesError, read_source_grid
from dicom_bridge.sop_classes import VOLUME_CLASSES
from dicom_bridge.uids import short_ref
from dicom_bridge.volume import load_series_volume
from models.tasks import TASKS, TaskSpec

__all__ = ["case_from_nifti", "nifti_onto_grid", "parse_label_map"]

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_ROTATION_TOLERANCE = 1e-3
_SHIFT_TOLERANCE = 0.05


def nifti_onto_grid(path: Path, affine_lps: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The integer label values of the NIfTI at ``path`` on the series grid (int64)."""
    import nibabel as nib
    from nibabel.spatialimages import SpatialImage

    try:
        image = nib.load(str(path))
        if not isinstance(image, SpatialImage):
            raise TypeError(f"{type(image).__name__} is not a spatial image")
        data = np.asanyarray(image.dataobj)
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for bad input
        raise CaseRefused(
            Refusal.UNREADABLE, f"not a readable NIfTI file ({type(exc).__name__}: {exc})"[:300]
        ) from exc
    data = np.squeeze(data)
    if data.ndim != 3:
        raise CaseRefused(
            Refusal.BAD_LABEL_VALUES, f"the label image has shape {data.shape}, not 3D"
        )
    if not np.issubdtype(data.dtype, np.integer):
        rounded = np.rint(data)
        if not np.array_equal(rounded, data):
            raise CaseRefused(Refusal.BAD_LABEL_VALUES, "the label image holds non-integer values")
        data = rounded
    values = data.astype(np.int64)
    if values.size and int(values.min()) < 0:
        raise CaseRefused(Refusal.BAD_LABEL_VALUES, "the label image holds negative values")
    voxel_map = np.linalg.inv(affine_lps) @ _LPS_FROM_RAS @ affine
    rotation, shift = voxel_map[:3, :3], voxel_map[:3, 3]
    permutation = np.rint(rotation)
    if (
        np.abs(rotation - permutation).max() > _ROTATION_TOLERANCE
        or sorted(np.abs(permutation).sum(axis=0).tolist()) != [1.0, 1.0, 1.0]
        or sorted(np.abs(permutation).sum(axis=1).tolist()) != [1.0, 1.0, 1.0]
    ):
        raise CaseRefused(
            Refusal.GEOMETRY_MISMATCH,
            "the NIfTI voxel axes are not the series' axes (rotated, or a different spacing); "
            "it was not made on this series",
        )
    if np.abs(shift - np.rint(shift)).max() > _SHIFT_TOLERANCE:
        raise CaseRefused(
            Refusal.GEOMETRY_MISMATCH,
            "the NIfTI voxel centres lie between the series' voxel centres",
        )
    # grid index g = P @ n + t. For each grid axis, the NIfTI axis and direction it follows.
    out = values
    axes = [int(np.flatnonzero(permutation[g])[0]) for g in range(3)]
    signs = [int(permutation[g, axes[g]]) for g in range(3)]
    out = np.transpose(out, axes)
    for g in range(3):
        if signs[g] < 0:
            out = np.flip(out, axis=g)
    # After flipping grid axis g, NIfTI index 0 sits at grid index t_g - (n_g - 1).
    origin = [
        int(np.rint(shift[g])) if signs[g] > 0 else int(np.rint(shift[g])) - (out.shape[g] - 1)
        for g in range(3)
    ]
    if tuple(out.shape) != tuple(shape) or any(origin):
        raise CaseRefused(
            Refusal.GEOMETRY_MISMATCH,
            f"the NIfTI grid (shape {tuple(out.shape)}, offset {tuple(origin)} voxels in series "
            f"axes) does not cover the series grid {tuple(shape)} exactly",
        )
    return np.ascontiguousarray(out)


def parse_label_map(text: str, spec: TaskSpec) -> dict[int, int]:
    """``"5=liver,6=liver tumour"`` -> ``{5: 1, 6: 2}`` (file value -> task label index).

    A label is named by its name (case, spaces, '_' and '-' ignored) or its index."""
    by_name = {_norm(label.name): label.index for label in spec.labels}
    mapping: dict[int, int] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        value_text, sep, label_text = part.partition("=")
        if not sep:
            raise ValueError(f"{part!r} is not VALUE=LABEL")
        try:
            value = int(value_text.strip())
        except ValueError as exc:
            raise ValueError(f"{value_text.strip()!r} in {part!r} is not an integer") from exc
        if not 1 <= value <= 65535:
            raise ValueError(f"file value {value} must be in 1..65535")
        name = _norm(label_text)
        if name.isdigit() and int(name) in by_name.values():
            index = int(name)
        elif name in by_name:
            index = by_name[name]
        else:
            known = ", ".join(f"{lb.index}={lb.name}" for lb in spec.labels)
            raise ValueError(f"{label_text.strip()!r} is not a label of {spec.name} ({known})")
        if value in mapping:
            raise ValueError(f"file value {value} is mapped twice")
        mapping[value] = index
    if not mapping:
        raise ValueError("the label map is empty")
    return mapping


def _norm(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def case_from_nifti(
    store: Store,
    config: AppConfig,
    nifti_path: Path,
    series_uid: str,
    task: str,
    label_map: Mapping[int, int] | None,
) -> SegOutcome:
    """Make a NIfTI label file on a stored series a case, or record why not.

    ``label_map``: file value -> task label index; None means the file's values are the
    task's label indices. Values the map does not name become background."""
    spec = TASKS[next(t for t in TASKS if str(t) == task)]
    data = Path(nifti_path).read_bytes()
    identity = json.dumps([task, series_uid, sorted((label_map or {}).items())])
    annotation_ref = "nifti:" + hashlib.sha256(data + identity.encode()).hexdigest()
    existing = store.case_by_annotation(annotation_ref)
    if existing is not None:
        return SegOutcome(case=existing, existing=True)
    try:
        series = store.get_series(series_uid)
    except NotFoundError:
        return SegOutcome(
            refusal=record_refusal(
                store,
                CaseOrigin.CLI,
                Refusal.SOURCE_NOT_STORED,
                f"series ref {short_ref(series_uid)} is not stored here",
                None,
                annotation_ref=annotation_ref,
            )
        )

    def refuse(reason: Refusal, detail: str) -> SegOutcome:
        return SegOutcome(
            refusal=record_refusal(
                store,
                CaseOrigin.CLI,
                reason,
                detail,
                None,
                source=series_uid,
                annotation_ref=annotation_ref,
                study_uid=series.study_uid,
            )
        )

    if series.modality != spec.modality:
        return refuse(
            Refusal.MODALITY_MISMATCH,
            f"task {task} is for {spec.modality}, the series is {series.modality or '(none)'}",
        )
    paths = [
        i.path for i in store.series_instances(series_uid) if i.sop_class_uid in VOLUME_CLASSES
    ]
    try:
        grid = read_source_grid(paths)  # headers only: the cheap checks come first
    except SourceSeriesError as exc:
        return refuse(Refusal.SOURCE_NOT_A_VOLUME, str(exc))
    try:
        values = nifti_onto_grid(nifti_path, grid.affine, grid.shape)
    except CaseRefused as exc:
        return refuse(exc.reason, exc.detail)
    present = sorted(int(v) for v in np.unique(values) if v != 0)
    if label_map is None:
        known = {label.index for label in spec.labels}
        unknown = [v for v in present if v not in known]
        if unknown:
            return refuse(
                Refusal.BAD_LABEL_VALUES,
                f"values {unknown[:10]} are not labels of {task} "
                f"({', '.join(f'{lb.index}={lb.name}' for lb in spec.labels)}); give a label map "
                "such as --label-map '5=liver'",
            )
        label_map = {v: v for v in known}
    try:
        volume = load_series_volume(paths)  # trainers will load it: it must be a volume
    except VolumeError as exc:
        return refuse(Refusal.SOURCE_NOT_A_VOLUME, f"{exc.reason}: {exc.detail}")
    if volume.shape != grid.shape or not np.allclose(volume.affine, grid.affine, atol=1e-3):
        return refuse(
            Refusal.GEOMETRY_MISMATCH, "the source volume's grid differs from its headers' grid"
        )
    lookup = np.zeros(max(int(values.max(initial=0)), max(label_map)) + 1, dtype=np.uint8)
    for value, index in label_map.items():
        lookup[value] = index
    labels = lookup[values]
    segments = [
        {
            "value": value,
            "label": spec.label(label_map[value]).name if value in label_map else None,
            "label_index": label_map.get(value),
        }
        for value in present
    ]
    try:
        case, superseded = record_case(
            store,
            config,
            task=task,
            series=series,
            labels=labels,
            affine=volume.affine,
            annotation_ref=annotation_ref,
            seg_sop_uid=None,
            origin=CaseOrigin.CLI,
            segments=segments,
            image=volume.array,
        )
    except CaseRefused as exc:
        return refuse(exc.reason, exc.detail)
    shutil.copyfile(nifti_path, case.labels_path.parent / "labels_source.nii.gz")
    return SegOutcome(case=case, superseded=superseded)
