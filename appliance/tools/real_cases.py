"""Real labelled cases from the shared test data, in the boundary format, for evaluation only.

Issue 3 asks for the shipped models' Dice on the real labelled cases in ``../shared/data``
(see its ``MANIFEST.md``). These cases are **evaluation only: never train on them.** Each
dataset has one small loader that returns :class:`RealCase` values:

- ``image``: float32, axes ``(slice, row, column)``, modality values (HU for CT);
- ``affine``: index ``[slice, row, column, 1]`` -> DICOM patient coordinates (LPS, mm),
  the format that crosses from ``dicom_bridge`` to ``models`` (DESIGN.md);
- ``labels``: uint8 on the image grid, holding the task's label indices (0 elsewhere), for
  the labels named in ``label_names`` only: a case is scored on the labels it has truth for.

DICOM series are read by :func:`dicom_bridge.volume.load_series_volume` (the clinical
path) and a DICOM SEG by :func:`dicom_bridge.seg_reader.read_seg_labelmap` (placed on the
source grid). NIfTI and NRRD files, a series the clinical loader rightly rejects, and
label volumes on a grid of their own go through the evaluation-only readers of
:mod:`appliance.tools.real_readers`, which never resample.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

import numpy as np

from appliance.errors import RealDataError
from appliance.tools.real_readers import (
    align_to_grid,
    check_affine,
    nifti_to_boundary,
    nrrd_to_boundary,
    read_lenient_series,
)
from models.tasks import TaskName, get_task

__all__ = [
    "DATASETS",
    "RealCase",
    "RealDataError",
    "RealDataset",
    "default_data_root",
]


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
        check_affine(self.affine, where)
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
    (non-commercial licence: read in place, never copied). Read leniently
    (:func:`appliance.tools.real_readers.read_lenient_series`)."""
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
