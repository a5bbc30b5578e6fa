"""Real labelled cases from the shared test data, in the boundary format, for evaluation only.

Issue 3 asks for the shipped models' Dice on the real labelled cases in ``../shared/data``
(see its ``MANIFEST.md``). These cases are **evaluation only: never train on them.** Each
dataset has one small loader that returns :class:`RealCase` values:

- ``image``: float32, axes ``(slice, row, column)``, modality values (HU for CT);
- ``affine``: index ``[slice, row, column, 1]`` -> DICOM patient coordinates (LPS, mm),
  the format that crosses from ``dicom_bridge`` to ``models`` (DESIGN.md);
- ``labels``: uint8 on the image grid, holding the task's label indices (0 elsewhere), for
  the labels named in ``label_names`` only: a case is scored on the labels it has truth for.

How each format becomes that:

- DICOM series: :func:`dicom_bridge.volume.load_series_volume` (the clinical path); a DICOM
  SEG: :func:`dicom_bridge.seg_reader.read_seg_labelmap` (placed on the source grid).
- A series the clinical loader rightly rejects (3D-IRCADb: no Frame of Reference UID,
  IPP ``[0, 0, z]``) is read by :func:`read_lenient_series`, an evaluation-only reader:
  pydicom, slices sorted along the image normal, affine from orientation, pixel spacing
  and the slice positions. It is never used on the clinical path.
- NIfTI (nibabel): array ``[i, j, k]`` with an index -> RAS affine. Reversing the axes
  gives ``(k, j, i)``; the affine's columns are reordered the same way and the world
  side goes RAS -> LPS (negate x and y; :data:`models.geometry.LPS_TO_RAS`).
- NRRD (pynrrd): read in C order, i.e. ``(k, j, i)``; ``space directions`` row ``n`` is the
  step of file axis ``n``, so the affine's columns are rows 2, 1, 0; the ``space`` must be
  stated (LPS is used as is, RAS converted).

A label volume on a grid of its own (TotalSegmentator's NIfTI next to the DICOM series;
the dcmqi NRRD next to its CT) is moved onto the image grid by :func:`align_to_grid`,
which only permutes and flips axes and fails unless the two grids coincide voxel for
voxel: no resampling, so nothing is interpolated.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import numpy as np

from appliance.errors import RealDataError
from models.tasks import TaskName, get_task

__all__ = [
    "DATASETS",
    "RealCase",
    "RealDataError",
    "RealDataset",
    "align_to_grid",
    "default_data_root",
    "nifti_to_boundary",
    "nrrd_to_boundary",
    "read_lenient_series",
]

#: World x and y change sign between LPS and RAS (same matrix both ways); the same as
#: :data:`models.geometry.LPS_TO_RAS`, repeated here so that loading data does not import
#: torch/monai.
_LPS_RAS: Final = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Largest difference, in voxels, between two grids that :func:`align_to_grid` treats as one.
GRID_TOLERANCE_VOXELS: Final = 0.05
#: Largest relative difference between slice steps that :func:`read_lenient_series` accepts.
LENIENT_SPACING_RTOL: Final = 0.01


@dataclass(frozen=True, slots=True, eq=False)
class RealCase:
    """One real labelled case in the boundary format (module docstring).

    ``label_names``: the task labels this case has truth for (only these are scored).
    ``channel``: the kind of input (``CT``, ``T1C``, ``FLAIR``). ``truth``: where the
    labels come from. ``caveat``: what limits the result, in one or two sentences.
    """

    dataset: str
    case: str
    task: TaskName
    image: np.ndarray
    affine: np.ndarray
    labels: np.ndarray
    label_names: tuple[str, ...]
    caveat: str
    truth: str
    channel: str

    def __post_init__(self) -> None:
        task = TaskName(self.task)
        object.__setattr__(self, "task", task)
        spec = get_task(task)
        where = f"{self.dataset}/{self.case}"
        if self.image.ndim != 3 or self.image.dtype != np.float32:
            raise RealDataError(f"{where}: image must be 3-D float32, got {self.image.shape}")
        if self.labels.shape != self.image.shape or self.labels.dtype != np.uint8:
            raise RealDataError(
                f"{where}: labels must be uint8 of the image's shape {self.image.shape}, got "
                f"{self.labels.dtype} {self.labels.shape}"
            )
        _check_affine(self.affine, where)
        known = {label.name: label.index for label in spec.labels}
        unknown = [n for n in self.label_names if n not in known]
        if not self.label_names or unknown:
            raise RealDataError(
                f"{where}: label_names {list(self.label_names)} must be labels of {task} "
                f"({', '.join(known)})"
            )
        allowed = {0, *(known[n] for n in self.label_names)}
        present = {int(v) for v in np.unique(self.labels)}
        if not present <= allowed:
            raise RealDataError(
                f"{where}: labels hold values {sorted(present - allowed)} outside the evaluated "
                f"labels {sorted(allowed - {0})}"
            )

    @property
    def label_indices(self) -> tuple[int, ...]:
        by_name = {label.name: label.index for label in get_task(self.task).labels}
        return tuple(by_name[name] for name in self.label_names)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along ``(slice, row, column)``."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))


def _check_affine(affine: np.ndarray, where: str) -> None:
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise RealDataError(f"{where}: the affine must be a finite 4x4 matrix")
    if not np.allclose(affine[3], (0.0, 0.0, 0.0, 1.0)):
        raise RealDataError(f"{where}: the affine's last row must be (0, 0, 0, 1)")
    if abs(float(np.linalg.det(affine[:3, :3]))) < 1e-9:
        raise RealDataError(f"{where}: the affine is singular")


# -- format conversions ------------------------------------------------------------------------


def nifti_to_boundary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 3-D NIfTI file as ``(array (k, j, i), index -> LPS affine)`` (module docstring).
    The array keeps the file's data type."""
    import nibabel as nib

    try:
        img: Any = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
        affine_ras = np.asarray(img.affine, dtype=np.float64)
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise RealDataError(f"{path.name}: not a readable NIfTI file ({exc})") from exc
    if data.ndim != 3:
        raise RealDataError(f"{path.name}: expected a 3-D NIfTI image, got {data.ndim}-D")
    array = np.ascontiguousarray(data.transpose(2, 1, 0))
    affine = _LPS_RAS @ affine_ras[:, [2, 1, 0, 3]]
    _check_affine(affine, path.name)
    return array, affine + 0.0


_NRRD_SPACES: Final[Mapping[str, bool]] = MappingProxyType(
    {"left-posterior-superior": True, "lps": True, "right-anterior-superior": False, "ras": False}
)


def nrrd_to_boundary(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 3-D NRRD file with ``space``, ``space directions`` and ``space origin`` as
    ``(array (k, j, i), index -> LPS affine)``. The array keeps the file's data type."""
    import nrrd

    try:
        data, header = nrrd.read(str(path), index_order="C")
    except Exception as exc:  # pynrrd raises NRRDError, OSError, ValueError
        raise RealDataError(f"{path.name}: not a readable NRRD file ({exc})") from exc
    space = str(header.get("space", "")).lower()
    if data.ndim != 3 or space not in _NRRD_SPACES:
        raise RealDataError(
            f"{path.name}: need a 3-D NRRD with space LPS or RAS, got {data.ndim}-D, "
            f"space {space or 'missing'}"
        )
    try:
        directions = np.asarray(header["space directions"], dtype=np.float64)
        origin = np.asarray(header["space origin"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise RealDataError(f"{path.name}: space directions/origin missing or invalid") from exc
    if directions.shape != (3, 3) or origin.shape != (3,):
        raise RealDataError(f"{path.name}: space directions must be 3x3 and the origin 3 values")
    affine = np.eye(4)
    affine[:3, 0] = directions[2]
    affine[:3, 1] = directions[1]
    affine[:3, 2] = directions[0]
    affine[:3, 3] = origin
    if not _NRRD_SPACES[space]:
        affine = _LPS_RAS @ affine
    _check_affine(affine, path.name)
    return np.ascontiguousarray(data), affine + 0.0


def align_to_grid(
    array: np.ndarray,
    affine: np.ndarray,
    target_shape: Sequence[int],
    target_affine: np.ndarray,
    *,
    what: str = "labels",
) -> np.ndarray:
    """``array`` (on the grid of ``affine``) on the grid ``target_shape``/``target_affine``.

    Only axis permutations and flips are allowed: every target voxel centre must be a source
    voxel centre (within :data:`GRID_TOLERANCE_VOXELS`) and the grids must cover the same
    voxels. Otherwise :class:`RealDataError` says how they differ; nothing is resampled.
    """
    shape = tuple(int(n) for n in target_shape)
    if array.ndim != 3 or len(shape) != 3:
        raise RealDataError(f"{what}: need 3-D grids")
    # target index -> source index
    mapping = np.linalg.inv(affine) @ np.asarray(target_affine, dtype=np.float64)
    linear = mapping[:3, :3]
    rounded = np.rint(linear)
    if not np.allclose(linear, rounded, atol=GRID_TOLERANCE_VOXELS / max(shape)) or not (
        np.array_equal(np.abs(rounded).sum(axis=0), np.ones(3))
        and np.array_equal(np.abs(rounded).sum(axis=1), np.ones(3))
    ):
        raise RealDataError(
            f"{what}: the voxel axes differ from the image's beyond a permutation/flip "
            f"(index mapping {np.round(linear, 3).tolist()}); resampling is not done here"
        )
    perm = [int(np.flatnonzero(rounded[:, a])[0]) for a in range(3)]  # source axis per target
    signs = [int(rounded[perm[a], a]) for a in range(3)]
    for a in range(3):
        b = perm[a]
        if array.shape[b] != shape[a]:
            raise RealDataError(
                f"{what}: {array.shape[b]} voxels along axis {b}, the image has {shape[a]} "
                f"along axis {a}"
            )
        expected = 0.0 if signs[a] > 0 else float(shape[a] - 1)
        if abs(mapping[b, 3] - expected) > GRID_TOLERANCE_VOXELS:
            raise RealDataError(
                f"{what}: the grid is shifted by {mapping[b, 3] - expected:.3f} voxels along "
                f"axis {b} against the image"
            )
    out = np.transpose(array, perm)
    for a in range(3):
        if signs[a] < 0:
            out = np.flip(out, axis=a)
    return np.ascontiguousarray(out)


@dataclass(frozen=True, slots=True, eq=False)
class LenientSeries:
    """What :func:`read_lenient_series` returns: the volume and the sorted slice positions."""

    array: np.ndarray
    affine: np.ndarray
    positions: np.ndarray  # (n, 3) Image Position (Patient) in slice order


def _floats(ds: Any, keyword: str, count: int, name: str) -> np.ndarray:
    value = ds.get(keyword)
    try:
        out = np.array([float(str(v).strip().strip("\x00")) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise RealDataError(f"{name}: {keyword} is missing or not numeric") from exc
    if out.shape != (count,) or not np.all(np.isfinite(out)):
        raise RealDataError(f"{name}: {keyword} must hold {count} finite numbers")
    return out


def read_lenient_series(paths: Sequence[Path]) -> LenientSeries:
    """EVALUATION ONLY: read single-frame images that the clinical loader rejects for
    missing DICOM geometry identifiers (no Frame of Reference UID) but whose Image
    Orientation/Position (Patient) and Pixel Spacing are present and consistent.

    Slices are sorted along the normal ``row_direction x column_direction`` (the convention
    of :func:`dicom_bridge.volume.load_series_volume`); the affine is built from the
    orientation, the pixel spacing and the first slice's position, with the slice step the
    mean step between sorted positions. Rescale Slope/Intercept are applied. Mixed
    orientation, pixel spacing or matrix size, duplicate positions, in-plane shifts and
    uneven slice steps raise :class:`RealDataError`. Files are named by their position in
    ``paths``, never by name.
    """
    import pydicom

    if len(paths) < 2:
        raise RealDataError("a volume needs at least two slices")
    datasets = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # over-long DS values, trailing NULs
        for index, path in enumerate(paths):
            try:
                datasets.append(pydicom.dcmread(path, force=True))
            except Exception as exc:  # pydicom signals corrupt input with many types
                raise RealDataError(f"paths[{index}] is not readable DICOM") from exc
    names = [f"paths[{i}]" for i in range(len(paths))]
    orientation = _floats(datasets[0], "ImageOrientationPatient", 6, names[0])
    spacing = _floats(datasets[0], "PixelSpacing", 2, names[0])
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    positions = []
    for ds, name in zip(datasets, names, strict=True):
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, name), orientation, atol=1e-4):
            raise RealDataError(f"{name}: Image Orientation (Patient) differs from paths[0]")
        if not np.allclose(_floats(ds, "PixelSpacing", 2, name), spacing, atol=1e-4):
            raise RealDataError(f"{name}: Pixel Spacing differs from paths[0]")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise RealDataError(f"{name}: matrix size differs from paths[0]")
        positions.append(_floats(ds, "ImagePositionPatient", 3, name))
    along_row, along_column = orientation[:3], orientation[3:]
    normal = np.cross(along_row, along_column)
    pos = np.array(positions)
    order = np.argsort(pos @ normal, kind="stable")
    pos = pos[order]
    distances = pos @ normal
    steps = np.diff(distances)
    if np.any(steps < 1e-3):
        raise RealDataError("two slices share one position along the normal")
    step = float(steps.mean())
    if np.any(np.abs(steps - step) > LENIENT_SPACING_RTOL * step):
        raise RealDataError(f"uneven slice steps: {np.round(steps, 3).tolist()} mm")
    in_plane = (pos - pos[0]) - np.outer(distances - distances[0], normal)
    if np.abs(in_plane).max() > 0.1 * float(spacing.min()):
        raise RealDataError("slice positions move within the image plane (tilt or shift)")
    slices = []
    for k in order:
        ds = datasets[int(k)]
        try:
            pixels = ds.pixel_array.astype(np.float32)
        except Exception as exc:
            raise RealDataError(f"{names[int(k)]}: pixel data cannot be decoded") from exc
        slope = float(str(ds.get("RescaleSlope", 1) or 1).strip("\x00 "))
        intercept = float(str(ds.get("RescaleIntercept", 0) or 0).strip("\x00 "))
        slices.append(pixels * np.float32(slope) + np.float32(intercept))
    affine = np.eye(4)
    affine[:3, 0] = normal * step
    affine[:3, 1] = along_column * spacing[0]
    affine[:3, 2] = along_row * spacing[1]
    affine[:3, 3] = pos[0]
    return LenientSeries(np.stack(slices).astype(np.float32), affine + 0.0, pos)


# -- the datasets -------------------------------------------------------------------------------

_TOTALSEG_LIVER: Final = 5  # TotalSegmentator's multilabel index for the liver


def _dicom_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise RealDataError(f"{folder.name}: no files")
    return files


def _require(path: Path) -> Path:
    if not path.exists():
        raise RealDataError(f"missing: {path}")
    return path


def _series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return _series_from(_dicom_files(_require(folder)))


def load_totalseg_j2k(root: Path) -> tuple[RealCase, ...]:
    """Real J2K abdominal CT (20 slices) with TotalSegmentator's liver (label 5)."""
    folder = root / "ct_abdomen_totalseg_j2k"
    image, affine = _series(folder / "dicom_uids_repaired")
    raw, raw_affine = nifti_to_boundary(
        _require(folder / "labels_totalsegmentator_multilabel.nii.gz")
    )
    aligned = align_to_grid(raw, raw_affine, image.shape, affine, what="TotalSegmentator labels")
    labels = np.where(aligned == _TOTALSEG_LIVER, 1, 0).astype(np.uint8)
    return (
        RealCase(
            dataset="ct_totalseg_j2k",
            case="abdomen_20slices",
            task=TaskName.LIVER_CT,
            image=image,
            affine=affine,
            labels=labels,
            label_names=("Liver",),
            caveat=(
                "Truth is TotalSegmentator model output, not expert annotation; only 20 "
                "slices (40 mm) of the liver; no tumour truth."
            ),
            truth="TotalSegmentator output (label 5 = liver)",
            channel="CT",
        ),
    )


def load_dcmqi_3slice(root: Path) -> tuple[RealCase, ...]:
    """Real GE abdominal CT, 3 slices, with dcmqi's liver DICOM SEG."""
    from dicom_bridge.errors import DicomBridgeError
    from dicom_bridge.seg_reader import read_seg_labelmap

    folder = _require(root / "ct_abdomen_dcmqi_3slice")
    sources = sorted(folder.glob("0*.dcm"))
    image, affine = _series_from(sources)
    try:
        seg = read_seg_labelmap(_require(folder / "liver_SEG_dcmqi.dcm"), sources)
    except DicomBridgeError as exc:
        raise RealDataError(f"dcmqi liver SEG: {exc}") from exc
    livers = [s.number for s in seg.segments if s.label.strip().lower() == "liver"]
    if len(livers) != 1:
        raise RealDataError(f"dcmqi liver SEG: expected one 'Liver' segment, got {len(livers)}")
    labels = np.where(seg.labelmap == livers[0], 1, 0).astype(np.uint8)
    return (
        RealCase(
            dataset="ct_dcmqi_3slice",
            case="abdomen_3slices",
            task=TaskName.LIVER_CT,
            image=image,
            affine=affine,
            labels=labels,
            label_names=("Liver",),
            caveat=(
                "Only 3 contiguous 1 mm slices: far less context than the network's 64-slice "
                "patch; HD95 is dominated by in-plane error. No tumour truth."
            ),
            truth="dcmqi DICOM SEG 'Liver' (manual, QIICR test data)",
            channel="CT",
        ),
    )


def _series_from(paths: Sequence[Path]) -> tuple[np.ndarray, np.ndarray]:
    from dicom_bridge.errors import DicomBridgeError
    from dicom_bridge.volume import load_series_volume

    try:
        volume = load_series_volume(list(paths))
    except DicomBridgeError as exc:
        raise RealDataError(f"DICOM series: {exc}") from exc
    return volume.array, volume.affine


def load_ircadb17(root: Path) -> tuple[RealCase, ...]:
    """3D-IRCADb-01 patient 17, slices 91-100: contrast CT with liver and two tumours
    (non-commercial licence: read in place, never copied). Read leniently (module doc)."""
    folder = _require(root / "noncommercial" / "ct_liver_tumor_3dircadb17")
    ct = read_lenient_series(_dicom_files(_require(folder / "PATIENT_DICOM")))
    masks: dict[str, np.ndarray] = {}
    for name in ("liver", "livertumor1", "livertumor2"):
        mask = read_lenient_series(_dicom_files(_require(folder / "MASKS_DICOM" / name)))
        if mask.array.shape != ct.array.shape or not np.allclose(mask.affine, ct.affine, atol=1e-3):
            raise RealDataError(f"3D-IRCADb mask {name}: its grid differs from the CT's")
        masks[name] = mask.array > 0
    labels = np.zeros(ct.array.shape, dtype=np.uint8)
    labels[masks["liver"]] = 1
    labels[masks["livertumor1"] | masks["livertumor2"]] = 2
    return (
        RealCase(
            dataset="ct_3dircadb17",
            case="slices_91-100",
            task=TaskName.LIVER_CT,
            image=ct.array,
            affine=ct.affine,
            labels=labels,
            label_names=("Liver", "Liver tumour"),
            caveat=(
                "10 of 119 slices (16 mm); sloppy DICOM (no Frame of Reference, IPP [0,0,z]) "
                "read by the evaluation-only lenient loader, so the grid's origin is "
                "arbitrary; tumour = livertumor1 | livertumor2."
            ),
            truth="3D-IRCADb-01 expert masks (liver, livertumor1, livertumor2)",
            channel="CT",
        ),
    )


def load_tcga_gbm(root: Path) -> tuple[RealCase, ...]:
    """pyradiomics' TCGA-GBM T1-Gd brains (NRRD, LPS) with binary tumour labels."""
    folder = _require(root / "mr_glioma" / "pyradiomics_tcga_gbm")
    cases = []
    for name in ("brain1", "brain2"):
        image, affine = nrrd_to_boundary(_require(folder / f"{name}_image.nrrd"))
        label, label_affine = nrrd_to_boundary(_require(folder / f"{name}_label.nrrd"))
        if label.shape != image.shape or not np.allclose(label_affine, affine, atol=1e-4):
            raise RealDataError(f"{name}: the label's grid differs from the image's")
        cases.append(
            RealCase(
                dataset="mr_tcga_gbm",
                case=name,
                task=TaskName.GLIOMA_MR,
                image=image.astype(np.float32),
                affine=affine,
                labels=(label > 0).astype(np.uint8),
                label_names=("Glioma",),
                caveat=(
                    "6.5 mm slices (the model works at 2 mm); the label is the pyradiomics "
                    "example ROI, whose extent (enhancing tumour vs. whole tumour) is not "
                    "documented; brain2's source is undocumented."
                ),
                truth="pyradiomics example label (TCGA-GBM)",
                channel="T1C",
            )
        )
    return tuple(cases)


def load_tcia_progression(root: Path) -> tuple[RealCase, ...]:
    """TCIA Brain-Tumor-Progression patient 01, pre/post T1 with tumour masks (NIfTI whose
    geometry was lost by resizing: 1 mm identity spacing)."""
    folder = _require(root / "mr_glioma" / "tcia_brain_tumor_progression_01")
    cases = []
    for when in ("Pre", "Post"):
        image, affine = nifti_to_boundary(_require(folder / f"{when}_Scan_T1.nii.gz"))
        mask, mask_affine = nifti_to_boundary(_require(folder / f"{when}_Mask.nii.gz"))
        if mask.shape != image.shape or not np.allclose(mask_affine, affine, atol=1e-4):
            raise RealDataError(f"{when}: the mask's grid differs from the image's")
        cases.append(
            RealCase(
                dataset="mr_tcia_progression",
                case=when.lower(),
                task=TaskName.GLIOMA_MR,
                image=image.astype(np.float32),
                affine=affine,
                labels=(mask > 0.5).astype(np.uint8),
                label_names=("Glioma",),
                caveat=(
                    "Geometry lost by the repository author's resize (256x256x24, 1 mm "
                    "identity spacing): the true voxel size is unknown, so the model sees "
                    "wrongly scaled anatomy and HD95 is in fake mm."
                ),
                truth="TCIA Brain-Tumor-Progression tumour mask",
                channel="T1C",
            )
        )
    return tuple(cases)


def load_brats2013(root: Path) -> tuple[RealCase, ...]:
    """BraTS 2013 patient 0001 (via DeepMedic; non-commercial licence): T1c and FLAIR,
    whole tumour = OTMultiClass > 0."""
    folder = _require(root / "noncommercial" / "mr_glioma_brats2013_pat0001")
    truth, truth_affine = nifti_to_boundary(_require(folder / "OTMultiClass.nii.gz"))
    labels = (truth > 0.5).astype(np.uint8)
    cases = []
    for channel, file in (
        ("T1C", "T1c_subtrMeanDivStd.nii.gz"),
        ("FLAIR", "Flair_subtrMeanDivStd.nii.gz"),
    ):
        image, affine = nifti_to_boundary(_require(folder / file))
        if image.shape != truth.shape or not np.allclose(affine, truth_affine, atol=1e-4):
            raise RealDataError(f"BraTS {channel}: the image's grid differs from the labels'")
        cases.append(
            RealCase(
                dataset="mr_brats2013",
                case=f"pat0001_{channel.lower()}",
                task=TaskName.GLIOMA_MR,
                image=image.astype(np.float32),
                affine=affine,
                labels=labels,
                label_names=("Glioma",),
                caveat=(
                    "Skull-stripped and z-score normalised by DeepMedic (background is a "
                    "constant negative value, the brain centred on 0), unlike the raw scanner "
                    "values the task's own z-score expects; whole tumour = labels 1-4."
                ),
                truth="BraTS 2013 expert labels (OTMultiClass > 0 = whole tumour)",
                channel=channel,
            )
        )
    return tuple(cases)


@dataclass(frozen=True, slots=True)
class RealDataset:
    """One dataset of the shared data: its key (for ``--only``), where it lives under the
    data root, its task, its loader and a line about its source and licence."""

    key: str
    folder: str
    task: TaskName
    loader: Callable[[Path], tuple[RealCase, ...]]
    source: str

    def present(self, root: Path) -> bool:
        return (root / self.folder).is_dir()

    def load(self, root: Path) -> tuple[RealCase, ...]:
        if not self.present(root):
            raise RealDataError(f"dataset {self.key}: {root / self.folder} does not exist")
        return self.loader(root)


DATASETS: Mapping[str, RealDataset] = MappingProxyType(
    {
        d.key: d
        for d in (
            RealDataset(
                "ct_totalseg_j2k",
                "ct_abdomen_totalseg_j2k",
                TaskName.LIVER_CT,
                load_totalseg_j2k,
                "TotalSegmentator test data (Apache-2.0), J2K CT + model-output labels",
            ),
            RealDataset(
                "ct_dcmqi_3slice",
                "ct_abdomen_dcmqi_3slice",
                TaskName.LIVER_CT,
                load_dcmqi_3slice,
                "dcmqi test data (BSD-3-Clause), CT + liver DICOM SEG",
            ),
            RealDataset(
                "ct_3dircadb17",
                "noncommercial/ct_liver_tumor_3dircadb17",
                TaskName.LIVER_CT,
                load_ircadb17,
                "3D-IRCADb-01 patient 17 (IRCAD, CC BY-NC-ND 3.0; internal testing only)",
            ),
            RealDataset(
                "mr_tcga_gbm",
                "mr_glioma/pyradiomics_tcga_gbm",
                TaskName.GLIOMA_MR,
                load_tcga_gbm,
                "pyradiomics test data (BSD-3-Clause), TCGA-GBM T1-Gd (TCIA terms)",
            ),
            RealDataset(
                "mr_tcia_progression",
                "mr_glioma/tcia_brain_tumor_progression_01",
                TaskName.GLIOMA_MR,
                load_tcia_progression,
                "TCIA Brain-Tumor-Progression patient 01 (CC BY 3.0)",
            ),
            RealDataset(
                "mr_brats2013",
                "noncommercial/mr_glioma_brats2013_pat0001",
                TaskName.GLIOMA_MR,
                load_brats2013,
                "BraTS 2013 patient 0001 via DeepMedic (CC BY-NC-SA 3.0 CH; internal testing only)",
            ),
        )
    }
)


def default_data_root() -> Path:
    """``shared/data`` beside the repository checkout (``<repo>/../shared/data``)."""
    return Path(__file__).resolve().parents[3] / "shared" / "data"
