"""Synthetic CT and MR studies with known truth, parameterised by site and scanner.

Two generators, both plain vectorised numpy:

- :func:`abdominal_ct_phantom` - an abdomen in HU: body, subcutaneous fat, muscle wall,
  lung bases, spine, ribs, bowel, stomach, aorta, IVC, kidneys, spleen, liver with its
  vessels, gallbladder and liver tumours. Labels: 0 background, 1 liver, 2 liver tumour.
- :func:`brain_mr_phantom` - a head for a T1 post-contrast or FLAIR sequence: scalp,
  skull, CSF, grey and white matter, deep grey nuclei, ventricles and a glioma (necrotic
  core, enhancing rim, oedema). Label 1 is the whole tumour; the sub-regions are kept
  as separate masks for multi-sequence tasks.
- :func:`brats_mr_study` - the same head imaged as T1 post-contrast, T1, T2 and FLAIR on
  one grid, skull-stripped like BraTS data, with the glioma's tissue classes as labels
  (1 necrotic/non-enhancing core, 2 oedema, 3 enhancing) for the ``glioma_brats`` task.

Geometry (the convention of ``dicom_bridge``, restated here, not imported): arrays have
axes ``(slice, row, column)``; the 4x4 ``affine_lps`` maps ``[slice, row, column, 1]`` to
DICOM patient coordinates (LPS, millimetres: +x patient Left, +y Posterior, +z Superior).
Column index ``c`` moves along the row direction cosine, row index ``r`` along the column
direction cosine, and slice index increases along their cross product
``row_direction x column_direction`` (feet to head for an axial series).

The anatomy is defined in patient space, as signed-distance shapes in millimetres, and
sampled at the voxel centres through the affine. A profile with another orientation or
spacing therefore images the same patient on another grid. All random draws that shape
the anatomy come first and never depend on the grid, the contrast phase or the MR
sequence; only the noise, drawn last, does. So one seed gives one patient: the same
anatomy at every site grid, in every CT phase and in every MR sequence.

Two profile fields, off by default (and then drawing nothing), make the phantoms look
more like patients: ``variation`` (:mod:`models.phantom_variation`: per-case tissue
intensities, bias field, blur, smooth deformation, noise level, slice profile; drawn
after the anatomy, before the noise, never depending on the grid) and
``detailed_anatomy`` (:mod:`models.phantom_anatomy`: liver vessel tree and textured
lesions; scalp fat, skull marrow, dura and vessels). Named profiles that use them are in
:mod:`models.phantom_profiles`.

Intensities are in phantom units before a profile's scanner calibration: HU for CT, and
for MR units in which normal white matter is about 1000 on T1C. The stored int16 image
is, clipped to CT -1024..3071 or MR 0..32767:

- CT: ``round(HU * intensity_scale + intensity_offset + noise)``, the noise Gaussian with
  ``noise_sigma`` HU and correlated within the image plane like reconstructed CT noise;
- MR: ``round(|signal * bias + complex noise| * intensity_scale + intensity_offset)``,
  i.e. Rician noise of ``noise_sigma`` phantom units before the scanner's scaling.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import Final

import numpy as np

from .phantom_variation import NO_VARIATION, Variation, VariationDraw

__all__ = [
    "AXIAL",
    "BRATS_CHANNELS",
    "BRATS_TISSUE_LABELS",
    "CORONAL",
    "CT_DEFAULT",
    "CT_LABELS",
    "MR_BRATS",
    "MR_DEFAULT",
    "MR_LABELS",
    "MR_SUBREGIONS",
    "SAGITTAL",
    "SITE_PRESETS",
    "ContrastPhase",
    "Hospital",
    "Lesion",
    "LesionDistribution",
    "LesionKind",
    "MRSequence",
    "Orientation",
    "Phantom",
    "PhantomKind",
    "SiteProfile",
    "Tissue",
    "Vec3",
    "abdominal_ct_phantom",
    "brain_mr_phantom",
    "brats_mr_study",
    "generate_phantom",
    "oblique",
    "rotation_matrix",
]

Vec3 = tuple[float, float, float]
#: Row direction cosine then column direction cosine, as DICOM ImageOrientationPatient.
Orientation = tuple[float, float, float, float, float, float]
Points = tuple[np.ndarray, np.ndarray, np.ndarray]
_Vector = Sequence[float] | np.ndarray

AXIAL: Final[Orientation] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # slices feet -> head
CORONAL: Final[Orientation] = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)  # slices anterior -> posterior
SAGITTAL: Final[Orientation] = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # slices left -> right

CT_LABELS: Final[Mapping[int, str]] = MappingProxyType({1: "liver", 2: "liver tumour"})
MR_LABELS: Final[Mapping[int, str]] = MappingProxyType({1: "glioma"})
#: Glioma sub-region masks in :attr:`Phantom.masks` (plus ``"brain"``).
MR_SUBREGIONS: Final = ("oedema", "enhancing", "necrotic")
#: Training labels of :func:`brats_mr_study`: the glioma's disjoint tissue classes (the
#: BraTS label convention, with enhancing tumour as 3 instead of 4).
BRATS_TISSUE_LABELS: Final[Mapping[int, str]] = MappingProxyType(
    {1: "necrotic", 2: "oedema", 3: "enhancing"}
)

_CT_RANGE: Final = (-1024.0, 3071.0)
_MR_RANGE: Final = (0.0, 32767.0)


class ContrastPhase(StrEnum):
    """Phase of a CT acquisition after intravenous contrast."""

    NATIVE = "native"
    ARTERIAL = "arterial"
    PORTAL_VENOUS = "portal_venous"


class MRSequence(StrEnum):
    """MR sequences the brain phantom can produce."""

    T1C = "T1C"  # T1-weighted after gadolinium
    FLAIR = "FLAIR"
    T1 = "T1"  # T1-weighted, native
    T2 = "T2"  # T2-weighted


class LesionKind(StrEnum):
    HYPOVASCULAR = "hypovascular"  # metastasis-like: dark in portal venous, rim in arterial
    HYPERVASCULAR = "hypervascular"  # HCC-like: bright in arterial, washout in portal venous
    GLIOMA = "glioma"


class PhantomKind(StrEnum):
    """What :func:`generate_phantom` makes."""

    CT_ABDOMEN = "ct_abdomen"
    MR_T1C = "mr_t1c"
    MR_FLAIR = "mr_flair"
    MR_BRATS = "mr_brats"  # four sequences on one grid (:func:`brats_mr_study`)


class Tissue(IntEnum):
    """Tissue classes of :attr:`Phantom.tissues` (the last tissue drawn at a voxel centre)."""

    AIR = 0
    FAT = 1
    MUSCLE = 2
    VISCERA = 3  # mesenteric fat and small bowel background
    BOWEL = 4
    GAS = 5
    STOMACH = 6
    LUNG = 7
    BONE = 8
    MARROW = 9  # also the skull's diploe in the detailed MR head
    DISC = 10
    CANAL = 11
    KIDNEY_CORTEX = 12
    KIDNEY_MEDULLA = 13
    RENAL_SINUS = 14
    AORTA = 15
    IVC = 16
    SPLEEN = 17
    LIVER = 18
    HEPATIC_VESSEL = 19  # part of the liver label
    GALLBLADDER = 20
    TUMOUR = 21
    TUMOUR_NECROSIS = 22  # part of the liver tumour label
    CALCIFICATION = 23  # in a liver tumour (detailed anatomy); part of its label
    SCALP = 30
    SKULL = 31
    CSF = 32
    GREY_MATTER = 33
    WHITE_MATTER = 34
    DEEP_GREY = 35
    VENTRICLE = 36
    OEDEMA = 37
    ENHANCING = 38
    NECROTIC = 39
    SCALP_FAT = 40  # detailed anatomy: subcutaneous fat of the scalp
    DURA = 41  # detailed anatomy: enhancing on T1C
    VESSEL = 42  # detailed anatomy: scalp vessels and the dural sinus (MR)


_LIVER_TISSUES: Final = frozenset({Tissue.LIVER, Tissue.HEPATIC_VESSEL})
_LIVER_TUMOUR_TISSUES: Final = frozenset(
    {Tissue.TUMOUR, Tissue.TUMOUR_NECROSIS, Tissue.CALCIFICATION}
)
_PARENCHYMA: Final = frozenset({Tissue.GREY_MATTER, Tissue.WHITE_MATTER, Tissue.DEEP_GREY})
_GLIOMA_TISSUES: Final = frozenset({Tissue.OEDEMA, Tissue.ENHANCING, Tissue.NECROTIC})
_BRAIN_TISSUES: Final = _PARENCHYMA | _GLIOMA_TISSUES | {Tissue.VENTRICLE}


# --- orientation helpers ------------------------------------------------------------------


def rotation_matrix(
    about_lr_deg: float = 0.0, about_ap_deg: float = 0.0, about_si_deg: float = 0.0
) -> np.ndarray:
    """3x3 rotation about the patient x (L), then y (P), then z (S) axis, in degrees."""
    ax, ay, az = (math.radians(a) for a in (about_lr_deg, about_ap_deg, about_si_deg))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique(
    base: Orientation = AXIAL,
    *,
    about_lr_deg: float = 0.0,
    about_ap_deg: float = 0.0,
    about_si_deg: float = 0.0,
) -> Orientation:
    """``base`` with both direction cosines rotated in patient space (see rotation_matrix)."""
    rot = rotation_matrix(about_lr_deg, about_ap_deg, about_si_deg)
    row = rot @ np.asarray(base[:3], dtype=float)
    col = rot @ np.asarray(base[3:], dtype=float)
    row /= np.linalg.norm(row)
    col -= (col @ row) * row
    col /= np.linalg.norm(col)
    return (*_vec3(row), *_vec3(col))


def _vec3(values: Sequence[float] | np.ndarray) -> Vec3:
    return (float(values[0]), float(values[1]), float(values[2]))


# --- site and scanner profiles ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LesionDistribution:
    """Lesion count (uniform integer) and diameter (log-uniform, mm) of one phantom.

    For the CT phantom these are liver tumours; for the MR phantom the glioma's tumour
    core (enhancing rim plus necrosis; oedema extends beyond it). Lesions that cannot be
    placed inside their organ after many tries are left out and not listed as truth.
    ``isodense_fraction`` (CT) is the chance that a liver lesion is near-isodense: within
    a few HU of the liver (:data:`models.phantom_anatomy.ISODENSE_DELTA_HU`).
    """

    min_diameter_mm: float = 5.0
    max_diameter_mm: float = 40.0
    min_count: int = 1
    max_count: int = 4
    isodense_fraction: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.min_diameter_mm <= self.max_diameter_mm:
            raise ValueError("need 0 < min_diameter_mm <= max_diameter_mm")
        if not 0 <= self.min_count <= self.max_count:
            raise ValueError("need 0 <= min_count <= max_count")
        if not 0 <= self.isodense_fraction <= 1:
            raise ValueError("isodense_fraction must be in [0, 1]")

    def draw_count(self, rng: np.random.Generator) -> int:
        return int(rng.integers(self.min_count, self.max_count + 1))

    def draw_diameter(self, rng: np.random.Generator) -> float:
        lo, hi = math.log(self.min_diameter_mm), math.log(self.max_diameter_mm)
        return float(math.exp(rng.uniform(lo, hi)))


@dataclass(frozen=True, slots=True)
class SiteProfile:
    """One scanner protocol at one site: the grid, the calibration and the case mix.

    - ``spacing_mm`` is ``(slice, row, column)``: the slice spacing, then the spacing
      between rows and between columns (DICOM PixelSpacing order).
    - ``matrix`` is ``(slices, rows, columns)``; the grid is centred on the patient's
      anatomical centre plus ``centre_offset_mm`` (LPS).
    - ``orientation`` is the row then column direction cosine (ImageOrientationPatient);
      see :data:`AXIAL`, :data:`CORONAL`, :data:`SAGITTAL` and :func:`oblique`.
    - ``reverse_slice_order``: the scanner numbers its instances head to feet (against the
      normal). It changes only how the series is written, never the array or the affine.
    - ``intensity_scale``/``intensity_offset``: scanner calibration, applied to phantom
      units (HU for CT); ``noise_sigma``: CT noise in HU, MR Rician noise in phantom
      units before the scaling (see the module docstring).
    - ``contrast_phase`` (CT) and ``bias_field`` (MR, in [0, 1): a smooth multiplicative
      field within ``exp(+-bias_field)``) apply to one modality each.
    - ``anatomy_scale`` scales the patient (1 is an adult).
    - ``seed`` seeds :meth:`rng`; case ``k`` of a site is ``profile.rng(k)``.
    - ``detailed_anatomy`` adds the anatomy of :mod:`models.phantom_anatomy` (CT: liver
      vessel tree, textured lesions; MR: scalp fat, skull marrow, dura, vessels).
    - ``variation`` randomises each case (:class:`models.phantom_variation.Variation`:
      tissue intensities, bias field, blur, deformation, noise; slice profile).

    The defaults of the last two change nothing and draw nothing, so a profile without
    them makes the same phantoms as before they existed.
    """

    name: str = "default"
    spacing_mm: Vec3 = (2.5, 2.5, 2.5)
    matrix: tuple[int, int, int] = (96, 160, 160)
    orientation: Orientation = AXIAL
    reverse_slice_order: bool = False
    intensity_scale: float = 1.0
    intensity_offset: float = 0.0
    noise_sigma: float = 12.0
    contrast_phase: ContrastPhase = ContrastPhase.PORTAL_VENOUS
    lesions: LesionDistribution = field(default_factory=LesionDistribution)
    bias_field: float = 0.0
    centre_offset_mm: Vec3 = (0.0, 0.0, 0.0)
    anatomy_scale: float = 1.0
    seed: int = 0
    detailed_anatomy: bool = False
    variation: Variation = NO_VARIATION

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "contrast_phase", ContrastPhase(self.contrast_phase))
        set_(self, "spacing_mm", _vec3(self.spacing_mm))
        set_(self, "centre_offset_mm", _vec3(self.centre_offset_mm))
        set_(self, "matrix", tuple(int(n) for n in self.matrix))
        set_(self, "orientation", tuple(float(v) for v in self.orientation))
        if len(self.matrix) != 3 or self.matrix[0] < 2 or min(self.matrix) < 1:
            raise ValueError(f"matrix must be (slices>=2, rows, columns), not {self.matrix}")
        if min(self.spacing_mm) <= 0:
            raise ValueError("spacings must be positive")
        if len(self.orientation) != 6:
            raise ValueError("orientation needs six direction cosines")
        row, col = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])
        if abs(np.linalg.norm(row) - 1) > 1e-6 or abs(np.linalg.norm(col) - 1) > 1e-6:
            raise ValueError("direction cosines must be unit vectors")
        if abs(float(row @ col)) > 1e-6:
            raise ValueError("row and column directions must be orthogonal")
        if self.intensity_scale <= 0:
            raise ValueError("intensity_scale must be positive")
        if self.noise_sigma < 0:
            raise ValueError("noise_sigma must not be negative")
        if not 0 <= self.bias_field < 1:
            raise ValueError("bias_field must be in [0, 1)")
        if self.anatomy_scale <= 0:
            raise ValueError("anatomy_scale must be positive")
        if not isinstance(self.variation, Variation):
            raise ValueError("variation must be a models.phantom_variation.Variation")

    @property
    def normal(self) -> np.ndarray:
        """Unit vector along which the slice index increases (row x column direction)."""
        return np.cross(np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:]))

    def affine(self) -> np.ndarray:
        """4x4 ``[slice, row, column, 1]`` -> LPS mm; the grid centre is at the offset."""
        out = np.eye(4)
        out[:3, 0] = self.normal * self.spacing_mm[0]
        out[:3, 1] = np.asarray(self.orientation[3:]) * self.spacing_mm[1]
        out[:3, 2] = np.asarray(self.orientation[:3]) * self.spacing_mm[2]
        centre_index = (np.asarray(self.matrix, dtype=float) - 1.0) / 2.0
        out[:3, 3] = np.asarray(self.centre_offset_mm) - out[:3, :3] @ centre_index
        return out

    def rng(self, case: int = 0) -> np.random.Generator:
        """The generator for case ``case`` of this site: reproducible, independent per case."""
        return np.random.default_rng([int(self.seed), int(case)])


#: A demonstration-sized adult abdominal CT (portal venous) and brain MR protocol.
CT_DEFAULT: Final = SiteProfile(name="ct_default")
#: The same abdomen on the liver model's own grid (2 mm slices, 1.5 mm pixels) instead of
#: 2.5 mm voxels: a 5 mm lesion spans three pixels rather than two, as on a clinical
#: portal-venous liver CT, which is at least this fine.
CT_FINE: Final = SiteProfile(name="ct_fine", spacing_mm=(2.0, 1.5, 1.5), matrix=(120, 267, 267))
MR_DEFAULT: Final = SiteProfile(
    name="mr_default",
    spacing_mm=(2.0, 1.5, 1.5),
    matrix=(96, 160, 160),
    noise_sigma=15.0,
    lesions=LesionDistribution(15.0, 45.0, 1, 1),
    bias_field=0.15,
)
#: The four-sequence brain study of ``glioma_brats``, on the model's own 2 mm isotropic
#: grid (BraTS data is resampled to 1 mm isotropic; 2 mm keeps CPU training short).
MR_BRATS: Final = SiteProfile(
    name="mr_brats",
    spacing_mm=(2.0, 2.0, 2.0),
    matrix=(80, 112, 96),
    noise_sigma=15.0,
    lesions=LesionDistribution(15.0, 45.0, 1, 1),
    bias_field=0.15,
)

#: The channel order of :func:`brats_mr_study` (the MONAI ``brats_mri_segmentation``
#: bundle's and the ``glioma_brats`` task's).
BRATS_CHANNELS: Final = ("T1C", "T1", "T2", "FLAIR")


@dataclass(frozen=True, slots=True)
class Hospital:
    """A simulated site: its CT and MR protocols and a suggested number of local cases
    (see :data:`SITE_PRESETS`)."""

    name: str
    description: str
    ct: SiteProfile
    mr: SiteProfile
    cases: int

    def __post_init__(self) -> None:
        if self.cases < 1:
            raise ValueError("a site needs at least one case")


def _hospital(
    name: str, description: str, cases: int, ct: dict[str, object], mr: dict[str, object]
) -> Hospital:
    return Hospital(
        name=name,
        description=description,
        ct=SiteProfile(name=f"{name}_ct", **ct),  # type: ignore[arg-type]
        mr=SiteProfile(name=f"{name}_mr", **mr),  # type: ignore[arg-type]
        cases=cases,
    )


#: Four hospitals with different scanners and case mixes, for federation benchmarks.
SITE_PRESETS: Final[Mapping[str, Hospital]] = MappingProxyType(
    {
        h.name: h
        for h in (
            _hospital(
                "site_a",
                "reference site: axial 2.5 mm CT in portal venous phase; 1.5 mm MR",
                24,
                ct={"seed": 101},
                mr={
                    "spacing_mm": (2.0, 1.5, 1.5),
                    "noise_sigma": 15.0,
                    "lesions": LesionDistribution(15.0, 45.0, 1, 1),
                    "bias_field": 0.15,
                    "seed": 201,
                },
            ),
            _hospital(
                "site_b",
                "older scanners: 5 mm thick CT slices, arterial phase, +30 HU offset, "
                "noisy, slices numbered head to feet; 3 mm MR with strong bias field",
                24,
                ct={
                    "spacing_mm": (5.0, 2.2, 2.2),
                    "matrix": (48, 176, 176),
                    "contrast_phase": ContrastPhase.ARTERIAL,
                    "intensity_scale": 1.04,
                    "intensity_offset": 30.0,
                    "noise_sigma": 22.0,
                    "reverse_slice_order": True,
                    "seed": 102,
                },
                mr={
                    "spacing_mm": (3.0, 1.8, 1.8),
                    "matrix": (64, 136, 136),
                    "intensity_scale": 2.5,
                    "noise_sigma": 25.0,
                    "bias_field": 0.35,
                    "reverse_slice_order": True,
                    "lesions": LesionDistribution(20.0, 50.0, 1, 1),
                    "seed": 202,
                },
            ),
            _hospital(
                "site_c",
                "screening centre: many small liver lesions (5-15 mm), low-noise CT in an "
                "oblique stack, -20 HU offset; oblique MR",
                20,
                ct={
                    "spacing_mm": (2.0, 2.5, 2.5),
                    "matrix": (120, 160, 160),
                    "orientation": oblique(AXIAL, about_lr_deg=12.0, about_si_deg=6.0),
                    "intensity_scale": 0.97,
                    "intensity_offset": -20.0,
                    "noise_sigma": 8.0,
                    "lesions": LesionDistribution(5.0, 15.0, 2, 6),
                    "seed": 103,
                },
                mr={
                    "spacing_mm": (2.0, 1.5, 1.5),
                    "orientation": oblique(AXIAL, about_lr_deg=-15.0, about_ap_deg=5.0),
                    "intensity_scale": 0.6,
                    "noise_sigma": 12.0,
                    "bias_field": 0.2,
                    "lesions": LesionDistribution(10.0, 30.0, 1, 1),
                    "seed": 203,
                },
            ),
            _hospital(
                "site_d",
                "small hospital, few cases: native (non-contrast) CT, coronal MR with large "
                "tumours",
                6,
                ct={
                    "spacing_mm": (3.0, 2.5, 2.5),
                    "matrix": (80, 160, 160),
                    "contrast_phase": ContrastPhase.NATIVE,
                    "noise_sigma": 15.0,
                    "lesions": LesionDistribution(10.0, 40.0, 1, 3),
                    "seed": 104,
                },
                mr={
                    "spacing_mm": (2.0, 1.5, 1.5),
                    "matrix": (112, 160, 128),
                    "orientation": CORONAL,
                    "intensity_scale": 1.3,
                    "intensity_offset": 50.0,
                    "noise_sigma": 20.0,
                    "bias_field": 0.25,
                    "lesions": LesionDistribution(25.0, 55.0, 1, 1),
                    "seed": 204,
                },
            ),
        )
    }
)


# --- results ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lesion:
    """Truth for one lesion.

    ``diameter_mm`` is the nominal diameter drawn from the profile's distribution (the
    equivalent-sphere diameter of the unperturbed ellipsoid; for a glioma, of its tumour
    core). ``axes_mm`` are the ellipsoid's full axis lengths. ``voxels`` counts the voxels
    of this lesion in :attr:`Phantom.labels` (for a glioma: the whole tumour, oedema
    included), which may be fewer than the ellipsoid's volume where it meets its organ's
    edge, or zero for a lesion smaller than a voxel.
    """

    kind: LesionKind
    centre_lps: Vec3
    diameter_mm: float
    axes_mm: Vec3
    voxels: int
    volume_ml: float
    #: a near-isodense liver lesion (see ``LesionDistribution.isodense_fraction``)
    isodense: bool = False

    @property
    def equivalent_diameter_mm(self) -> float:
        """Diameter of the sphere with the lesion's labelled volume."""
        return float((6.0 * self.volume_ml * 1000.0 / math.pi) ** (1.0 / 3.0))


@dataclass(frozen=True, slots=True, eq=False)
class Phantom:
    """A generated study with its truth; arrays have axes (slice, row, column).

    ``image`` is int16 (HU for CT); ``labels`` uint8 (CT: :data:`CT_LABELS`; MR:
    :data:`MR_LABELS`); ``tissues`` uint8 :class:`Tissue` values; ``masks`` extra boolean
    truth (MR: ``brain`` and the :data:`MR_SUBREGIONS`; CT: ``body``); ``lesion_map``
    uint8, ``k`` where ``lesions[k - 1]`` is (its tumour label voxels), 0 elsewhere -
    the truth for per-lesion metrics such as small-lesion Dice.
    """

    image: np.ndarray
    labels: np.ndarray
    affine_lps: np.ndarray
    modality: str
    tissues: np.ndarray
    lesions: tuple[Lesion, ...]
    masks: Mapping[str, np.ndarray]
    lesion_map: np.ndarray
    profile: SiteProfile
    series_description: str
    body_part: str
    label_names: Mapping[int, str]

    @property
    def spacing_mm(self) -> Vec3:
        return _vec3(np.linalg.norm(self.affine_lps[:3, :3], axis=0))

    @property
    def voxel_volume_ml(self) -> float:
        return float(abs(np.linalg.det(self.affine_lps[:3, :3])) / 1000.0)

    def volume_ml(self, label: int) -> float:
        return float(np.count_nonzero(self.labels == label)) * self.voxel_volume_ml


# --- signed-distance shapes (millimetres, phantom-local frame) -------------------------------

_BIG: Final = 1.0e4


class _Shape(ABC):
    """Approximate signed distance in mm: negative inside, zero on the surface."""

    @abstractmethod
    def sdf(self, p: Points) -> np.ndarray:
        """Signed distance of each point (mm)."""

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.full(3, -_BIG), np.full(3, _BIG)


def _local(p: Points, centre: list[float], rotation: list[list[float]] | None) -> Points:
    # Python floats throughout: a numpy float64 scalar would promote float32 arrays.
    dx, dy, dz = p[0] - centre[0], p[1] - centre[1], p[2] - centre[2]
    if rotation is None:
        return dx, dy, dz
    r = rotation  # columns are the shape's axes: q = R^T d
    return (
        r[0][0] * dx + r[1][0] * dy + r[2][0] * dz,
        r[0][1] * dx + r[1][1] * dy + r[2][1] * dz,
        r[0][2] * dx + r[1][2] * dy + r[2][2] * dz,
    )


def _rotated_half_extent(radii: np.ndarray, rotation: np.ndarray | None) -> np.ndarray:
    if rotation is None:
        return radii
    return np.sqrt((rotation**2) @ (radii**2))


class _Ellipsoid(_Shape):
    def __init__(self, centre: _Vector, radii: _Vector, rotation: np.ndarray | None = None) -> None:
        self.centre = np.asarray(centre, dtype=float)
        self.radii = np.asarray(radii, dtype=float)
        self.rotation = rotation
        self._centre: list[float] = self.centre.tolist()
        self._rotation: list[list[float]] | None = None if rotation is None else rotation.tolist()

    def sdf(self, p: Points) -> np.ndarray:
        q = _local(p, self._centre, self._rotation)
        a, b, c = (float(v) for v in self.radii)
        k0 = np.sqrt((q[0] / a) ** 2 + (q[1] / b) ** 2 + (q[2] / c) ** 2)
        k1 = np.sqrt((q[0] / (a * a)) ** 2 + (q[1] / (b * b)) ** 2 + (q[2] / (c * c)) ** 2)
        return k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        half = _rotated_half_extent(self.radii, self.rotation)
        return self.centre - half, self.centre + half


class _Cylinder(_Shape):
    """Elliptic cylinder along the local z axis, capped at ``z_range``."""

    def __init__(
        self,
        centre_xy: Sequence[float],
        radii_xy: Sequence[float],
        z_range: tuple[float, float] = (-_BIG, _BIG),
    ) -> None:
        self.cx, self.cy = float(centre_xy[0]), float(centre_xy[1])
        self.a, self.b = float(radii_xy[0]), float(radii_xy[1])
        self.z_range = z_range

    def sdf(self, p: Points) -> np.ndarray:
        x, y = p[0] - self.cx, p[1] - self.cy
        k0 = np.sqrt((x / self.a) ** 2 + (y / self.b) ** 2)
        k1 = np.sqrt((x / self.a**2) ** 2 + (y / self.b**2) ** 2)
        f = k0 * (k0 - 1.0) / np.maximum(k1, 1e-6)
        lo, hi = self.z_range
        if lo > -_BIG:
            f = np.maximum(f, lo - p[2])
        if hi < _BIG:
            f = np.maximum(f, p[2] - hi)
        return f

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo = np.array([self.cx - self.a, self.cy - self.b, self.z_range[0]])
        hi = np.array([self.cx + self.a, self.cy + self.b, self.z_range[1]])
        return lo, hi


class _Capsule(_Shape):
    """A tube between two points with radius ``r0`` at ``a`` tapering to ``r1`` at ``b``."""

    def __init__(self, a: _Vector, b: _Vector, r0: float, r1: float) -> None:
        self.a, self.b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        self.r0, self.r1 = r0, r1

    def sdf(self, p: Points) -> np.ndarray:
        a = self.a.tolist()
        ba = (self.b - self.a).tolist()
        length2 = ba[0] ** 2 + ba[1] ** 2 + ba[2] ** 2
        pa = (p[0] - a[0], p[1] - a[1], p[2] - a[2])
        h = np.clip((pa[0] * ba[0] + pa[1] * ba[1] + pa[2] * ba[2]) * (1.0 / length2), 0.0, 1.0)
        d = np.sqrt((pa[0] - ba[0] * h) ** 2 + (pa[1] - ba[1] * h) ** 2 + (pa[2] - ba[2] * h) ** 2)
        return d - (self.r0 + (self.r1 - self.r0) * h)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        r = max(self.r0, self.r1)
        return np.minimum(self.a, self.b) - r, np.maximum(self.a, self.b) + r


class _HalfSpace(_Shape):
    """Inside where ``normal . p < offset``."""

    def __init__(self, normal: Sequence[float], offset: float) -> None:
        n = np.asarray(normal, dtype=float)
        self.normal, self.offset = n / np.linalg.norm(n), offset

    def sdf(self, p: Points) -> np.ndarray:
        n = self.normal.tolist()
        return n[0] * p[0] + n[1] * p[1] + n[2] * p[2] - self.offset

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.full(3, -_BIG), np.full(3, _BIG)
        axis = int(np.argmax(np.abs(self.normal)))
        if np.isclose(abs(self.normal[axis]), 1.0):  # axis-aligned: one finite side
            if self.normal[axis] > 0:
                hi[axis] = self.offset
            else:
                lo[axis] = -self.offset
        return lo, hi


class _Bands(_Shape):
    """Parallel slabs of half-thickness ``half`` repeating every ``period`` along ``normal``."""

    def __init__(self, normal: Sequence[float], period: float, phase: float, half: float) -> None:
        n = np.asarray(normal, dtype=float)
        self.normal, self.period, self.phase, self.half = n / np.linalg.norm(n), period, phase, half

    def sdf(self, p: Points) -> np.ndarray:
        n = self.normal.tolist()
        t = n[0] * p[0] + n[1] * p[1] + n[2] * p[2] - self.phase
        t = t - self.period * np.round(t / self.period)
        return np.abs(t) - self.half


class _AbsSlab(_Shape):
    """Inside where ``|p[axis]| < half``."""

    def __init__(self, axis: int, half: float) -> None:
        self.axis, self.half = axis, half

    def sdf(self, p: Points) -> np.ndarray:
        return np.abs(p[self.axis]) - self.half


class _Union(_Shape):
    def __init__(self, shapes: Sequence[_Shape], smooth_mm: float = 0.0) -> None:
        self.shapes, self.k = list(shapes), smooth_mm

    def sdf(self, p: Points) -> np.ndarray:
        f = self.shapes[0].sdf(p)
        for shape in self.shapes[1:]:
            g = shape.sdf(p)
            if self.k > 0:
                h = np.maximum(self.k - np.abs(f - g), 0.0) / self.k
                f = np.minimum(f, g) - h * h * (self.k / 4.0)
            else:
                f = np.minimum(f, g)
        return f

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        boxes = [s.bounds() for s in self.shapes]
        return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)


class _Intersection(_Shape):
    def __init__(self, shapes: Sequence[_Shape], smooth_mm: float = 0.0) -> None:
        self.shapes, self.k = list(shapes), smooth_mm

    def sdf(self, p: Points) -> np.ndarray:
        f = self.shapes[0].sdf(p)
        for shape in self.shapes[1:]:
            g = shape.sdf(p)
            if self.k > 0:
                h = np.maximum(self.k - np.abs(f - g), 0.0) / self.k
                f = np.maximum(f, g) + h * h * (self.k / 4.0)
            else:
                f = np.maximum(f, g)
        return f

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        boxes = [s.bounds() for s in self.shapes]
        return np.max([b[0] for b in boxes], axis=0), np.min([b[1] for b in boxes], axis=0)


class _Difference(_Shape):
    """``base`` minus each of ``holes``."""

    def __init__(self, base: _Shape, holes: Sequence[_Shape]) -> None:
        self.base, self.holes = base, list(holes)

    def sdf(self, p: Points) -> np.ndarray:
        f = self.base.sdf(p)
        for hole in self.holes:
            f = np.maximum(f, -hole.sdf(p))
        return f

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.base.bounds()


class _Offset(_Shape):
    """Grown by ``mm`` (negative: shrunk)."""

    def __init__(self, base: _Shape, mm: float) -> None:
        self.base, self.mm = base, mm

    def sdf(self, p: Points) -> np.ndarray:
        return self.base.sdf(p) - self.mm

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.base.bounds()
        grow = max(self.mm, 0.0)
        return lo - grow, hi + grow


def _random_waves(
    rng: np.random.Generator, count: int, wavelength_mm: tuple[float, float]
) -> np.ndarray:
    """``count`` plane waves as rows ``[kx, ky, kz, phase]`` (random directions)."""
    direction = rng.normal(size=(count, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    wavelength = rng.uniform(*wavelength_mm, size=(count, 1))
    phase = rng.uniform(0.0, 2.0 * math.pi, size=(count, 1))
    return np.hstack([direction * (2.0 * math.pi / wavelength), phase])


def _wave_sum(p: Points, waves: np.ndarray) -> np.ndarray:
    """Mean of the waves' sines: within [-1, 1]."""
    total: np.ndarray | None = None
    for kx, ky, kz, phase in waves.tolist():
        term = np.sin(kx * p[0] + ky * p[1] + kz * p[2] + phase)
        total = term if total is None else total + term
    assert total is not None
    return total / len(waves)


class _Wavy(_Shape):
    """``base`` with its surface displaced by up to ``amplitude_mm`` (smooth, random)."""

    def __init__(self, base: _Shape, amplitude_mm: float, waves: np.ndarray) -> None:
        self.base, self.amplitude, self.waves = base, amplitude_mm, waves

    def sdf(self, p: Points) -> np.ndarray:
        return self.base.sdf(p) + self.amplitude * _wave_sum(p, self.waves)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.base.bounds()
        return lo - self.amplitude, hi + self.amplitude


class _Scaled(_Shape):
    """``base`` (defined for a nominal patient) stretched by ``scale`` per axis."""

    def __init__(self, base: _Shape, scale: np.ndarray) -> None:
        self.base, self.scale = base, np.asarray(scale, dtype=float)
        self.distance_factor = float(self.scale.min())

    def sdf(self, p: Points) -> np.ndarray:
        sx, sy, sz = (1.0 / v for v in self.scale.tolist())
        return self.base.sdf((p[0] * sx, p[1] * sy, p[2] * sz)) * self.distance_factor

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.base.bounds()
        return lo * self.scale, hi * self.scale


# --- painting -----------------------------------------------------------------------------

#: Intensity per condition (CT phase or MR sequence value).
Values = Mapping[str, float]


@dataclass(frozen=True, slots=True)
class _Texture:
    """Smooth random intensity variation with standard deviation about ``std``."""

    std: float
    waves: np.ndarray

    def __call__(self, p: Points) -> np.ndarray:
        return (self.std * math.sqrt(2.0 * len(self.waves))) * _wave_sum(p, self.waves)


@dataclass(frozen=True, slots=True, eq=False)
class _Layer:
    """One shape drawn with one tissue, over the tissues in ``allowed`` (None: any)."""

    shape: _Shape
    tissue: Tissue
    values: Values
    texture: _Texture | None = None
    allowed: frozenset[Tissue] | None = None
    lesion: int | None = None  # index into the lesion specs: mark its voxels


@dataclass(frozen=True, slots=True)
class _LesionSpec:
    kind: LesionKind
    centre_local: np.ndarray
    diameter_mm: float
    axes_mm: Vec3
    extent_mm: float  # no part of the lesion lies farther than this from its centre
    isodense: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class _Anatomy:
    """Everything random about one patient, independent of grid, phase and sequence."""

    to_lps: np.ndarray  # 4x4: phantom-local mm -> LPS mm (the patient's pose)
    layers: tuple[_Layer, ...]
    lesions: tuple[_LesionSpec, ...]
    bias: np.ndarray  # MR bias field coefficients (linear 3, quadratic 3)


class _Canvas:
    """The voxel grid: local coordinates of every voxel centre, image and tissue map."""

    def __init__(self, profile: SiteProfile, to_lps: np.ndarray, background: float) -> None:
        self.shape = profile.matrix
        self.affine = profile.affine()
        to_local = np.linalg.inv(to_lps)
        self.index_to_local = to_local @ self.affine
        self.local_to_index = np.linalg.inv(self.index_to_local)
        s, r, c = (np.arange(n, dtype=np.float32) for n in self.shape)
        m = self.index_to_local.astype(np.float32)
        x, y, z = (
            (m[i, 0] * s)[:, None, None]
            + (m[i, 1] * r)[None, :, None]
            + ((m[i, 2] * c) + m[i, 3])[None, None, :]
            for i in range(3)
        )
        self.coords: Points = (x, y, z)
        self.image = np.full(self.shape, background, dtype=np.float32)
        self.tissues = np.zeros(self.shape, dtype=np.uint8)
        self.lesion_map = np.zeros(self.shape, dtype=np.uint8)  # lesion index + 1
        self.inv_edge = np.float32(1.0 / float(np.prod(profile.spacing_mm) ** (1.0 / 3.0)))
        self.margin_mm = 0.0  # how far a deformation may move a shape from its bounds

    def block(self, shape: _Shape) -> tuple[slice, slice, slice] | None:
        lo, hi = shape.bounds()
        if self.margin_mm > 0:
            lo, hi = lo - self.margin_mm, hi + self.margin_mm
        lo, hi = np.clip(lo, -_BIG, _BIG), np.clip(hi, -_BIG, _BIG)
        corners = np.array(
            [[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
        )
        index = (self.local_to_index @ corners.T)[:3]
        first = np.maximum(np.floor(index.min(axis=1)) - 1, 0).astype(int)
        last = np.minimum(np.ceil(index.max(axis=1)) + 2, self.shape).astype(int)
        if np.any(first >= last):
            return None
        return (slice(first[0], last[0]), slice(first[1], last[1]), slice(first[2], last[2]))

    def paint(self, layer: _Layer, value: float) -> None:
        """Draw ``layer`` with partial-volume edges; its tissue owns the voxel centres inside."""
        where = self.block(layer.shape)
        if where is None:
            return
        p: Points = (self.coords[0][where], self.coords[1][where], self.coords[2][where])
        f = layer.shape.sdf(p)
        inside = f < 0
        alpha = np.clip(0.5 - f * self.inv_edge, 0.0, 1.0)
        tissues = self.tissues[where]
        if layer.allowed is not None:
            lut = np.zeros(256, dtype=bool)
            lut[[int(t) for t in layer.allowed]] = True
            ok = lut[tissues]
            inside &= ok
            alpha *= ok
        if not alpha.any():
            return
        target: np.ndarray | float = value
        if layer.texture is not None:
            target = value + layer.texture(p)
        image = self.image[where]
        image += alpha * (target - image)
        np.copyto(tissues, np.uint8(layer.tissue), where=inside)
        if layer.lesion is not None:
            np.copyto(self.lesion_map[where], np.uint8(layer.lesion + 1), where=inside)


def _paint_all(
    canvas: _Canvas,
    anatomy: _Anatomy,
    condition: str,
    draw: VariationDraw | None = None,
    *,
    additive: bool = True,
) -> None:
    if len(anatomy.lesions) > 254:
        raise ValueError("at most 254 lesions per phantom")
    for layer in anatomy.layers:
        value = float(layer.values[condition])
        if draw is not None:
            value = draw.value(int(layer.tissue), condition, value, additive=additive)
        canvas.paint(layer, value)


def _render(
    profile: SiteProfile,
    anatomy: _Anatomy,
    condition: str,
    draw: VariationDraw | None,
    *,
    background: float,
    additive: bool,
) -> _Canvas:
    """Paint the anatomy on the profile's grid: deformed, averaged over the slice profile
    and blurred as ``draw`` and ``profile.variation`` say (the truth stays sharp)."""

    def canvas_at(fraction: float) -> _Canvas:
        canvas = _Canvas(profile, anatomy.to_lps, background)
        index_to_local = canvas.index_to_local.copy()
        if fraction != 0.0:
            step = canvas.index_to_local[:3, 0] * fraction
            index_to_local[:3, 3] += step
            for axis in range(3):
                canvas.coords[axis][...] += np.float32(step[axis])
        if draw is not None:
            draw.displace(canvas.coords, index_to_local)
            canvas.margin_mm = draw.deform_mm
        _paint_all(canvas, anatomy, condition, draw, additive=additive)
        return canvas

    canvas = canvas_at(0.0)
    samples = profile.variation.slice_samples
    if samples > 1:
        total = canvas.image.copy()
        for k in range(samples):
            fraction = (k + 0.5) / samples - 0.5
            if k != samples // 2:
                total += canvas_at(fraction).image
        canvas.image = total * np.float32(1.0 / samples)
    if draw is not None:
        canvas.image = draw.blur(canvas.image, profile.spacing_mm)
    return canvas


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _pose(rng: np.random.Generator, angles_deg: Vec3, shift_mm: Vec3) -> np.ndarray:
    """Local -> LPS: the patient lies a little rotated and off-centre on the table."""
    out = np.eye(4)
    out[:3, :3] = rotation_matrix(*(rng.uniform(-a, a) for a in angles_deg))
    out[:3, 3] = [rng.uniform(-s, s) for s in shift_mm]
    return out


def _lesion_ratios(rng: np.random.Generator) -> np.ndarray:
    """Axis ratios of an ellipsoid with the volume of a sphere (their product is 1)."""
    ratios = rng.uniform(0.8, 1.25, size=3)
    return ratios / np.prod(ratios) ** (1.0 / 3.0)


#: Surface waves displace a lesion's surface by up to this fraction of its diameter.
_LESION_WAVINESS: Final = 0.08


def _fits(shape: _Shape, centre: np.ndarray, radius: float) -> bool:
    """The centre and 26 points at ``radius`` around it are all inside ``shape``."""
    offsets = np.array(
        [
            (i, j, k)
            for i in (-1, 0, 1)
            for j in (-1, 0, 1)
            for k in (-1, 0, 1)
            if (i, j, k) != (0,) * 3
        ],
        dtype=float,
    )
    offsets = np.vstack([np.zeros(3), offsets / np.linalg.norm(offsets, axis=1, keepdims=True)])
    pts = centre + radius * offsets
    return bool(np.all(shape.sdf((pts[:, 0], pts[:, 1], pts[:, 2])) < 0))


# --- CT: abdomen --------------------------------------------------------------------------

_N, _A, _P = (
    ContrastPhase.NATIVE.value,
    ContrastPhase.ARTERIAL.value,
    ContrastPhase.PORTAL_VENOUS.value,
)


def _phases(native: float, arterial: float | None = None, portal: float | None = None) -> Values:
    return {
        _N: native,
        _A: native if arterial is None else arterial,
        _P: native if portal is None else portal,
    }


_CT_HU: Final[Mapping[Tissue, Values]] = MappingProxyType(
    {
        Tissue.FAT: _phases(-100),
        Tissue.MUSCLE: _phases(50, 58, 62),
        Tissue.VISCERA: _phases(-55),
        Tissue.BOWEL: _phases(30, 45, 55),
        Tissue.GAS: _phases(-900),
        Tissue.STOMACH: _phases(15),
        Tissue.LUNG: _phases(-850),
        Tissue.BONE: _phases(750),
        Tissue.MARROW: _phases(220),
        Tissue.DISC: _phases(85),
        Tissue.CANAL: _phases(25),
        Tissue.KIDNEY_CORTEX: _phases(32, 190, 170),
        Tissue.KIDNEY_MEDULLA: _phases(30, 90, 150),
        Tissue.RENAL_SINUS: _phases(-70),
        Tissue.AORTA: _phases(42, 320, 160),
        Tissue.IVC: _phases(40, 75, 140),
        Tissue.SPLEEN: _phases(45, 125, 120),
        Tissue.LIVER: _phases(60, 78, 112),
        Tissue.GALLBLADDER: _phases(10),
    }
)
_PORTAL_VEIN: Final = _phases(40, 110, 175)
_HEPATIC_VEIN: Final = _phases(40, 55, 165)
_RIB: Final = _phases(550)
# tumour (outer shell, interior) per kind; necrosis is the same in every phase
_TUMOUR_HU: Final[Mapping[LesionKind, tuple[Values, Values]]] = MappingProxyType(
    {
        LesionKind.HYPOVASCULAR: (_phases(42, 100, 85), _phases(38, 55, 58)),
        LesionKind.HYPERVASCULAR: (_phases(45, 145, 88), _phases(45, 135, 85)),
    }
)
_NECROSIS: Final = _phases(18)


def _enhanced(values: Values, factor: float, shift: float = 0.0) -> Values:
    """Scale each phase's enhancement over native by ``factor`` (patient circulation)."""
    native = values[_N]
    return {k: native + factor * (v - native) + shift for k, v in values.items()}


def _abdomen(rng: np.random.Generator, profile: SiteProfile) -> _Anatomy:
    to_lps = _pose(rng, (3.0, 3.0, 6.0), (8.0, 8.0, 10.0))
    scale = rng.uniform([0.9, 0.88, 0.93], [1.1, 1.12, 1.07]) * profile.anatomy_scale
    fat_mm = float(rng.uniform(12.0, 30.0))
    wall_mm = float(rng.uniform(8.0, 14.0))
    enhancement = float(rng.uniform(0.8, 1.2))
    layers: list[_Layer] = []

    def hu(tissue: Tissue) -> Values:
        return _enhanced(_CT_HU[tissue], enhancement)

    def tex(std: float, wavelength: tuple[float, float] = (12.0, 40.0)) -> _Texture:
        return _Texture(std, _random_waves(rng, 3, wavelength))

    def add(
        shape: _Shape,
        tissue: Tissue,
        *,
        values: Values | None = None,
        texture: _Texture | None = None,
        allowed: frozenset[Tissue] | None = None,
        lesion: int | None = None,
        scaled: bool = True,
    ) -> None:
        if scaled:
            shape = _Scaled(shape, scale)
        layers.append(
            _Layer(
                shape,
                tissue,
                values if values is not None else hu(tissue),
                texture,
                allowed,
                lesion,
            )
        )

    # body wall: subcutaneous fat, muscle, then the abdominal cavity
    body = _Cylinder((0.0, 0.0), (165.0, 115.0))
    wall = _Offset(body, -fat_mm)
    cavity = _Offset(body, -(fat_mm + wall_mm))
    add(body, Tissue.FAT, texture=tex(6.0))
    add(wall, Tissue.MUSCLE, texture=tex(4.0))
    add(cavity, Tissue.VISCERA, texture=_Texture(14.0, _random_waves(rng, 8, (6.0, 25.0))))
    # ribs in the muscle of the upper abdominal wall, descending anteriorly
    ribs = _Intersection(
        [
            _Bands((0.0, 0.35, 0.94), 30.0, float(rng.uniform(0.0, 30.0)), 5.0),
            _HalfSpace((0.0, 0.0, -1.0), 30.0),
            _HalfSpace((0.0, 1.0, 0.0), 55.0),
            _Difference(_HalfSpace((0.0, 0.0, 1.0), _BIG), [_AbsSlab(0, 35.0)]),
        ]
    )
    add(ribs, Tissue.BONE, values=_RIB, allowed=frozenset({Tissue.MUSCLE}))

    # lung bases above the diaphragm
    lungs = []
    for side in (-1.0, 1.0):
        lung = _Intersection(
            [
                _Ellipsoid(
                    (side * 85.0, 25.0, 168.0), rng.uniform(0.9, 1.1) * np.array([75.0, 75.0, 95.0])
                ),
                cavity,
            ]
        )
        lungs.append(lung)
        add(_Intersection([_Offset(lung, 5.0), cavity]), Tissue.MUSCLE)
        add(lung, Tissue.LUNG, texture=tex(20.0, (8.0, 20.0)))

    # stomach (fluid with an anterior gas cap) and bowel loops below the liver
    stomach_centre = np.array([55.0, -25.0, 64.0]) + rng.uniform(-8, 8, 3)
    stomach = _Ellipsoid(
        stomach_centre,
        rng.uniform(0.85, 1.15) * np.array([40.0, 32.0, 45.0]),
        rotation_matrix(about_si_deg=-20.0),
    )
    add(stomach, Tissue.STOMACH, texture=tex(4.0))
    gas_level = float(stomach_centre[1] - rng.uniform(8.0, 20.0))
    add(
        _Intersection([stomach, _HalfSpace((0.0, 1.0, 0.0), gas_level)]),
        Tissue.GAS,
        allowed=frozenset({Tissue.STOMACH}),
    )
    for _ in range(int(rng.integers(8, 15))):
        centre = rng.uniform([-110.0, -85.0, -125.0], [110.0, 10.0, 10.0])
        radii = rng.uniform(10.0, 22.0, 3)
        loop = _Ellipsoid(centre, radii, _random_rotation(rng))
        gas = rng.uniform() < 0.35
        add(loop, Tissue.BOWEL, texture=tex(5.0), allowed=frozenset({Tissue.VISCERA, Tissue.BOWEL}))
        if gas:
            add(
                _Offset(loop, -0.5 * float(radii.min())),
                Tissue.GAS,
                allowed=frozenset({Tissue.BOWEL}),
            )

    # muscles along the spine
    for side in (-1.0, 1.0):
        add(
            _Ellipsoid((side * 42.0, 22.0, -160.0), (26.0, 24.0, 200.0)),
            Tissue.MUSCLE,
            texture=tex(4.0),
        )
        add(
            _Ellipsoid((side * 36.0, 80.0, 0.0), (28.0, 22.0, 600.0)),
            Tissue.MUSCLE,
            texture=tex(4.0),
            allowed=frozenset({Tissue.FAT, Tissue.MUSCLE, Tissue.VISCERA}),
        )

    # spine: posterior arch and processes, vertebral body with marrow and discs, canal
    vertebra = _Cylinder((0.0, 15.0), (24.0, 19.0))
    for shape in (
        _Cylinder((0.0, 50.0), (20.0, 17.0)),
        _Cylinder((0.0, 72.0), (5.0, 13.0)),
        _Cylinder((-28.0, 52.0), (14.0, 5.0)),
        _Cylinder((28.0, 52.0), (14.0, 5.0)),
        vertebra,
    ):
        add(shape, Tissue.BONE)
    add(_Offset(vertebra, -2.5), Tissue.MARROW, texture=tex(25.0, (4.0, 10.0)))
    discs = _Bands((0.0, 0.0, 1.0), 34.0, float(rng.uniform(0.0, 34.0)), 4.5)
    add(_Intersection([_Offset(vertebra, -0.5), discs]), Tissue.DISC)
    add(_Cylinder((0.0, 48.0), (11.0, 9.0)), Tissue.CANAL)

    # kidneys: cortex, medulla, sinus fat at the hilum (right kidney lower)
    kidneys: list[_Shape] = []
    for side in (-1.0, 1.0):
        centre = np.array([side * 78.0, 32.0, -55.0 if side < 0 else -40.0]) + rng.uniform(-6, 6, 3)
        radii = np.array([27.0, 21.0, 52.0]) * rng.uniform(0.9, 1.1)
        rot = rotation_matrix(about_ap_deg=-side * 12.0, about_si_deg=side * 20.0)
        kidney = _Ellipsoid(centre, radii, rot)
        kidneys.append(kidney)
        add(kidney, Tissue.KIDNEY_CORTEX, texture=tex(5.0))
        add(
            _Ellipsoid(centre, radii - 7.0, rot),
            Tissue.KIDNEY_MEDULLA,
            allowed=frozenset({Tissue.KIDNEY_CORTEX}),
        )
        hilum = centre + rot @ np.array([-side * 0.55 * radii[0], -0.2 * radii[1], 0.0])
        add(
            _Ellipsoid(hilum, (11.0, 9.0, 24.0), rot),
            Tissue.RENAL_SINUS,
            allowed=frozenset({Tissue.KIDNEY_CORTEX, Tissue.KIDNEY_MEDULLA}),
        )

    # great vessels
    aorta = _Cylinder((12.0, -17.0), (11.0, 11.0))
    ivc = _Cylinder((-25.0, -12.0), (14.0, 10.0), (-_BIG, 140.0))
    add(aorta, Tissue.AORTA, texture=tex(3.0))
    add(ivc, Tissue.IVC, texture=tex(3.0))

    # spleen, against the left posterolateral wall
    spleen = _Intersection(
        [
            _Ellipsoid(
                np.array([88.0, 38.0, 54.0]) + rng.uniform(-6, 6, 3),
                np.array([22.0, 52.0, 55.0]) * rng.uniform(0.85, 1.2),
                rotation_matrix(about_si_deg=float(rng.uniform(35.0, 55.0))),
            ),
            _Offset(cavity, -2.0),
        ]
    )
    add(spleen, Tissue.SPLEEN, texture=tex(7.0, (8.0, 25.0)))

    # gallbladder (absent in a quarter of patients: cholecystectomy)
    gallbladder: _Shape | None = None
    has_gallbladder = rng.uniform() < 0.75
    gb_centre = np.array([-35.0, -52.0, -6.0]) + rng.uniform(-6, 6, 3)
    gb_radii = np.array([14.0, 13.0, 32.0]) * rng.uniform(0.8, 1.2)
    if has_gallbladder:
        gallbladder = _Ellipsoid(gb_centre, gb_radii, rotation_matrix(about_lr_deg=35.0))

    # liver: right lobe, left lobe and caudate, smoothly joined, with an irregular surface,
    # kept inside the cavity and clear of its neighbours
    right = _Ellipsoid(
        np.array([-68.0, -2.0, 27.0]) + rng.uniform(-5, 5, 3),
        np.array([66.0, 80.0, 76.0]) * rng.uniform(0.92, 1.08, 3),
        rotation_matrix(about_si_deg=float(rng.uniform(-15, -5))),
    )
    left = _Ellipsoid(
        np.array([-5.0, -50.0, 50.0]) + rng.uniform(-6, 6, 3),
        np.array([64.0, 34.0, 36.0]) * rng.uniform(0.85, 1.15, 3),
        rotation_matrix(about_ap_deg=float(rng.uniform(5, 20))),
    )
    caudate = _Ellipsoid((-22.0, 12.0, 42.0), (18.0, 18.0, 28.0))
    lobes = _Wavy(
        _Union([right, left, caudate], smooth_mm=25.0), 9.0, _random_waves(rng, 4, (70.0, 160.0))
    )
    holes: list[_Shape] = [
        *(_Offset(lung, 6.0) for lung in lungs),
        _Offset(kidneys[0], 4.0),
        _Offset(ivc, 1.0),
        _Offset(aorta, 4.0),
        _Cylinder((0.0, 35.0), (30.0, 42.0)),
        _Offset(stomach, 4.0),
    ]
    if gallbladder is not None:
        holes.append(_Offset(gallbladder, 2.0))
    liver = _Difference(_Intersection([lobes, _Offset(cavity, -3.0)]), holes)
    add(liver, Tissue.LIVER, texture=tex(5.0, (10.0, 30.0)))

    # vessels inside the liver: portal vein branches and hepatic veins (liver label)
    hilum = np.array([-45.0, 5.0, 32.0]) + rng.uniform(-5, 5, 3)
    ivc_top = np.array([-25.0, -12.0, 87.0])
    only_liver = frozenset({Tissue.LIVER})
    trunks: list[tuple[np.ndarray, np.ndarray, float, Values]] = []
    for a, b, r0, r1, values in (
        ((-18.0, 5.0, 7.0), hilum, 7.0, 6.0, _PORTAL_VEIN),
        (hilum, (-95.0, 10.0, 27.0), 5.0, 3.0, _PORTAL_VEIN),
        (hilum, (-5.0, -40.0, 47.0), 4.5, 3.0, _PORTAL_VEIN),
        (ivc_top, (-95.0, -25.0, 62.0), 5.0, 2.5, _HEPATIC_VEIN),
        (ivc_top, (-55.0, -55.0, 62.0), 4.5, 2.5, _HEPATIC_VEIN),
        (ivc_top, (0.0, -50.0, 72.0), 4.0, 2.0, _HEPATIC_VEIN),
    ):
        end = np.asarray(b, dtype=float) + rng.uniform(-8, 8, 3)
        add(
            _Capsule(a, end, r0, r1),
            Tissue.HEPATIC_VESSEL,
            values=_enhanced(values, enhancement),
            allowed=only_liver,
        )
        trunks.append((np.asarray(a, dtype=float), end, r1, _enhanced(values, enhancement)))
    detailed = profile.detailed_anatomy
    if detailed:
        from . import phantom_anatomy  # imported here: it builds on this module's shapes

        phantom_anatomy.add_liver_vessel_tree(rng, add, trunks)
    if gallbladder is not None:
        add(gallbladder, Tissue.GALLBLADDER, texture=tex(2.0))

    # liver tumours: nominal sizes from the profile, wholly inside the liver, apart
    liver_mm = _Scaled(liver, scale)
    lo, hi = liver_mm.bounds()
    specs: list[_LesionSpec] = []
    for _ in range(profile.lesions.draw_count(rng)):
        drawn = profile.lesions.draw_diameter(rng)
        ratios = _lesion_ratios(rng)
        rot = _random_rotation(rng)
        kind = LesionKind.HYPOVASCULAR if rng.uniform() < 0.6 else LesionKind.HYPERVASCULAR
        shift = float(rng.normal(0.0, 6.0))
        necrosis = rng.uniform() < 0.5
        waves = _random_waves(rng, 3, (drawn, 3.0 * drawn))
        placed = _place_lesion(
            rng,
            liver_mm,
            lo,
            hi,
            drawn,
            profile.lesions.min_diameter_mm,
            ratios,
            specs,
            fit_margin=1.0,
            clearance=0.0,
        )
        if placed is None:
            continue
        position, diameter = placed
        radii = ratios * diameter / 2.0
        index = len(specs)
        fraction = profile.lesions.isodense_fraction
        isodense = fraction > 0 and bool(rng.uniform() < fraction)
        specs.append(
            _LesionSpec(
                kind,
                position,
                diameter,
                _vec3(2.0 * radii),
                _extent(ratios, diameter),
                isodense,
            )
        )
        tumour = _Wavy(_Ellipsoid(position, radii, rot), _LESION_WAVINESS * diameter, waves)
        outer, inner = _TUMOUR_HU[kind]
        if detailed or isodense:
            from . import phantom_anatomy  # imported here: it builds on this module's shapes

            phantom_anatomy.add_liver_lesion(
                rng,
                add,
                phantom_anatomy.LiverLesion(
                    index=index,
                    tumour=tumour,
                    position=position,
                    radii=radii,
                    rotation=rot,
                    diameter=diameter,
                    outer=_enhanced(outer, enhancement, shift),
                    inner=_enhanced(inner, enhancement, shift),
                ),
                liver=hu(Tissue.LIVER),
                necrosis=_NECROSIS,
                isodense=isodense,
                allowed=_LIVER_TISSUES,
            )
            continue
        add(
            tumour,
            Tissue.TUMOUR,
            values=_enhanced(outer, enhancement, shift),
            texture=tex(6.0),
            allowed=_LIVER_TISSUES,
            lesion=index,
            scaled=False,
        )
        add(
            _Offset(tumour, -min(3.0, 0.2 * diameter)),
            Tissue.TUMOUR,
            values=_enhanced(inner, enhancement, shift),
            texture=tex(6.0),
            allowed=frozenset({Tissue.TUMOUR}),
            scaled=False,
        )
        if necrosis and diameter >= 25.0:
            add(
                _Ellipsoid(position, 0.45 * radii, rot),
                Tissue.TUMOUR_NECROSIS,
                values=_NECROSIS,
                allowed=frozenset({Tissue.TUMOUR}),
                scaled=False,
            )
    return _Anatomy(to_lps, tuple(layers), tuple(specs), np.zeros(6))


def _extent(ratios: np.ndarray, diameter: float) -> float:
    """Farthest reach of a lesion's surface from its centre: ellipsoid plus waves."""
    return float(ratios.max()) * diameter / 2.0 + _LESION_WAVINESS * diameter


def _place_lesion(
    rng: np.random.Generator,
    organ: _Shape,
    lo: np.ndarray,
    hi: np.ndarray,
    diameter: float,
    min_diameter: float,
    ratios: np.ndarray,
    others: Sequence[_LesionSpec],
    *,
    fit_margin: float,
    clearance: float,
) -> tuple[np.ndarray, float] | None:
    """Place a lesion inside ``organ``; where it does not fit, shrink it (not below
    ``min_diameter``) and try again. Returns its centre and the diameter that fits."""
    for _ in range(8):
        extent = _extent(ratios, diameter)
        centre = _place(rng, organ, lo, hi, extent + fit_margin, extent + clearance, others)
        if centre is not None:
            return centre, diameter
        if diameter <= min_diameter:
            break
        diameter = max(min_diameter, 0.85 * diameter)
    return None


def _place(
    rng: np.random.Generator,
    organ: _Shape,
    lo: np.ndarray,
    hi: np.ndarray,
    fit_radius: float,
    extent: float,
    others: Sequence[_LesionSpec],
    tries: int = 300,
) -> np.ndarray | None:
    """A centre in [lo, hi] where a ball of ``fit_radius`` lies inside ``organ`` and a
    lesion reaching ``extent`` from it stays 2 mm clear of ``others``."""
    for _ in range(tries):
        centre = rng.uniform(lo, hi)
        if any(
            np.linalg.norm(centre - o.centre_local) < extent + o.extent_mm + 2.0 for o in others
        ):
            continue
        if _fits(organ, centre, fit_radius):
            return centre
    return None


# --- MR: brain ----------------------------------------------------------------------------

_T1C, _FLAIR = MRSequence.T1C.value, MRSequence.FLAIR.value
_T1, _T2 = MRSequence.T1.value, MRSequence.T2.value


def _seq(t1c: float, flair: float, t1: float, t2: float) -> Values:
    return {_T1C: t1c, _FLAIR: flair, _T1: t1, _T2: t2}


# T1: fat (scalp) and white matter bright, fluid dark; the tumour is hypointense and the
# enhancing rim is bright only after gadolinium (T1C). T2: fluid (CSF, necrosis) bright,
# oedema bright, white matter darker than grey. FLAIR: T2 with free fluid suppressed, so
# oedema is the brightest tissue and CSF dark.
_MR_VALUES: Final[Mapping[Tissue, Values]] = MappingProxyType(
    {
        Tissue.SCALP: _seq(1000, 700, 1000, 800),
        Tissue.SKULL: _seq(120, 90, 120, 100),
        Tissue.CSF: _seq(250, 110, 260, 2000),
        Tissue.GREY_MATTER: _seq(680, 1000, 700, 1100),
        Tissue.WHITE_MATTER: _seq(1000, 760, 1000, 750),
        Tissue.DEEP_GREY: _seq(770, 930, 790, 1000),
        Tissue.VENTRICLE: _seq(230, 90, 240, 2100),
        Tissue.OEDEMA: _seq(760, 1650, 720, 1600),
        Tissue.ENHANCING: _seq(1550, 1350, 780, 1250),
        Tissue.NECROTIC: _seq(320, 1150, 420, 1900),
        # detailed anatomy (models.phantom_anatomy): fat bright on T1 with or without
        # gadolinium; fatty marrow a little less; dura and vessels enhance on T1C, the
        # vessels are flow voids otherwise
        Tissue.SCALP_FAT: _seq(1500, 1150, 1500, 1300),
        Tissue.MARROW: _seq(1250, 900, 1250, 1000),
        Tissue.DURA: _seq(1450, 600, 550, 500),
        Tissue.VESSEL: _seq(1700, 250, 350, 200),
    }
)


def _brain(rng: np.random.Generator, profile: SiteProfile) -> _Anatomy:
    to_lps = _pose(rng, (6.0, 4.0, 6.0), (6.0, 6.0, 6.0))
    scale = rng.uniform(0.92, 1.06, 3) * profile.anatomy_scale
    grey_factor = float(rng.uniform(0.95, 1.05))
    enhancement = float(rng.uniform(0.85, 1.2))
    oedema_gain = float(rng.uniform(0.85, 1.15))
    layers: list[_Layer] = []

    def values(tissue: Tissue) -> Values:
        v = dict(_MR_VALUES[tissue])
        if tissue in (Tissue.GREY_MATTER, Tissue.DEEP_GREY):
            v = {k: x * grey_factor for k, x in v.items()}
        if tissue == Tissue.ENHANCING:
            v[_T1C] = 1000.0 + enhancement * (v[_T1C] - 1000.0)
        if tissue == Tissue.OEDEMA:
            v[_FLAIR] = 760.0 + oedema_gain * (v[_FLAIR] - 760.0)
            v[_T2] = 750.0 + oedema_gain * (v[_T2] - 750.0)
        return v

    def tex(std: float, wavelength: tuple[float, float] = (8.0, 30.0)) -> _Texture:
        return _Texture(std, _random_waves(rng, 3, wavelength))

    def add(
        shape: _Shape,
        tissue: Tissue,
        *,
        texture: _Texture | None = None,
        allowed: frozenset[Tissue] | None = None,
        lesion: int | None = None,
        scaled: bool = True,
    ) -> None:
        if scaled:
            shape = _Scaled(shape, scale)
        layers.append(_Layer(shape, tissue, values(tissue), texture, allowed, lesion))

    # the head's soft tissue (scalp, face, neck), then skull, CSF and brain, each a shell
    # around the brain's envelope
    head = _Ellipsoid((0.0, 2.0, -5.0), (76.0, 98.0, 95.0))
    cerebrum = _Intersection(
        [_Ellipsoid((0.0, 4.0, 10.0), (62.0, 82.0, 64.0)), _HalfSpace((0.0, 0.0, -1.0), 30.0)],
        smooth_mm=12.0,
    )
    cerebellum = _Ellipsoid((0.0, 48.0, -38.0), (46.0, 26.0, 20.0))
    brainstem = _Capsule((0.0, 18.0, -10.0), (0.0, 24.0, -110.0), 12.0, 10.0)
    envelope = _Union([cerebrum, cerebellum, brainstem], smooth_mm=8.0)
    add(head, Tissue.SCALP, texture=tex(30.0))
    add(
        _Intersection([_Offset(envelope, 9.0), _Offset(head, -4.0)]),
        Tissue.SKULL,
        texture=tex(15.0),
    )
    add(_Intersection([_Offset(envelope, 3.0), _Offset(head, -9.0)]), Tissue.CSF, texture=tex(10.0))
    if profile.detailed_anatomy:
        from . import phantom_anatomy  # imported here: it builds on this module's shapes

        phantom_anatomy.add_head_detail(rng, add, head, envelope, tex)
    brain = _Intersection([envelope, _Offset(head, -11.0)])
    add(brain, Tissue.GREY_MATTER, texture=tex(15.0))
    gyri = _random_waves(rng, 4, (18.0, 30.0))
    add(
        _Wavy(_Offset(cerebrum, -7.5), 4.5, gyri),
        Tissue.WHITE_MATTER,
        texture=tex(12.0),
        allowed=frozenset({Tissue.GREY_MATTER}),
    )
    add(_Ellipsoid((0.0, 46.0, -36.0), (26.0, 12.0, 10.0)), Tissue.WHITE_MATTER, texture=tex(12.0))
    add(
        _Offset(brainstem, -2.5),
        Tissue.WHITE_MATTER,
        texture=tex(12.0),
        allowed=frozenset({Tissue.GREY_MATTER}),
    )
    for side in (-1.0, 1.0):
        add(
            _Ellipsoid((side * 10.0, 12.0, 8.0), (9.0, 15.0, 10.0)),
            Tissue.DEEP_GREY,
            texture=tex(10.0),
        )
        add(
            _Ellipsoid((side * 22.0, -6.0, 10.0), (7.0, 15.0, 11.0)),
            Tissue.DEEP_GREY,
            texture=tex(10.0),
        )
    add(
        _Intersection([_AbsSlab(0, 1.5), _HalfSpace((0.0, 0.0, -1.0), -34.0), cerebrum]), Tissue.CSF
    )

    ventricle_scale = float(rng.uniform(0.8, 1.4))
    ventricles: list[_Shape] = []
    for side in (-1.0, 1.0):
        ventricles.append(
            _Ellipsoid(
                (side * 11.0, 2.0, 22.0),
                np.array([6.0, 30.0, 9.0]) * ventricle_scale,
                rotation_matrix(about_si_deg=-side * 8.0),
            )
        )
    ventricles.append(_Ellipsoid((0.0, 10.0, 5.0), np.array([2.2, 13.0, 9.0]) * ventricle_scale))
    ventricles.append(_Ellipsoid((0.0, 38.0, -35.0), (5.0, 3.0, 6.0)))
    for ventricle in ventricles:
        add(ventricle, Tissue.VENTRICLE, allowed=frozenset(_PARENCHYMA))

    # glioma in a cerebral hemisphere: tumour core (enhancing rim around necrosis) inside
    # finger-like oedema that stays in the parenchyma
    glioma = profile.lesions
    cerebrum_mm = _Scaled(cerebrum, scale)
    specs: list[_LesionSpec] = []
    for _ in range(glioma.draw_count(rng)):
        drawn = glioma.draw_diameter(rng)
        ratios = _lesion_ratios(rng)
        rot = _random_rotation(rng)
        core_waves = _random_waves(rng, 3, (drawn, 3.0 * drawn))
        margin = float(rng.uniform(6.0, 16.0))
        oedema_waves = _random_waves(rng, 4, (15.0, 40.0))
        rim = float(rng.uniform(2.5, 5.0))
        necrosis = rng.uniform() < 0.85
        side = 1.0 if rng.uniform() < 0.5 else -1.0
        # a cerebral hemisphere, off the midline; a large core may cross it
        lo = np.array([side * 6.0, -55.0, -10.0]) * scale
        hi = np.array([side * 45.0, 45.0, 45.0]) * scale
        placed = _place_lesion(
            rng,
            cerebrum_mm,
            np.minimum(lo, hi),
            np.maximum(lo, hi),
            drawn,
            glioma.min_diameter_mm,
            ratios,
            specs,
            fit_margin=2.0,
            clearance=1.45 * margin,  # the oedema reaches this far
        )
        if placed is None:
            continue
        centre, diameter = placed
        radii = ratios * diameter / 2.0
        necrotic = necrosis and diameter >= 12.0
        index = len(specs)
        specs.append(
            _LesionSpec(
                LesionKind.GLIOMA,
                centre,
                diameter,
                _vec3(2.0 * radii),
                _extent(ratios, diameter) + 1.45 * margin,
            )
        )
        core = _Wavy(_Ellipsoid(centre, radii, rot), _LESION_WAVINESS * diameter, core_waves)
        oedema = _Wavy(_Offset(core, margin), 0.45 * margin, oedema_waves)
        add(
            oedema,
            Tissue.OEDEMA,
            texture=tex(25.0),
            allowed=_PARENCHYMA,
            lesion=index,
            scaled=False,
        )
        core_over = frozenset(_PARENCHYMA | {Tissue.OEDEMA, Tissue.VENTRICLE})
        add(
            core, Tissue.ENHANCING, texture=tex(40.0), allowed=core_over, lesion=index, scaled=False
        )
        if necrotic:
            add(
                _Offset(core, -rim),
                Tissue.NECROTIC,
                texture=tex(20.0),
                allowed=frozenset({Tissue.ENHANCING}),
                scaled=False,
            )
    bias = np.concatenate([rng.normal(size=3), rng.normal(0.0, 0.5, size=3)])
    return _Anatomy(to_lps, tuple(layers), tuple(specs), bias)


# --- generators ------------------------------------------------------------------------------


def _finish(
    profile: SiteProfile,
    signal: np.ndarray,
    rng: np.random.Generator,
    *,
    rician: bool,
    value_range: tuple[float, float],
    draw: VariationDraw | None = None,
) -> np.ndarray:
    gain = 1.0 if draw is None else draw.noise_gain
    sigma = np.float32(profile.noise_sigma * gain)
    if rician:
        if sigma > 0:
            real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
            imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
            signal = np.sqrt(real * real + imag * imag)
        out = signal * np.float32(profile.intensity_scale) + np.float32(profile.intensity_offset)
    else:
        out = signal * np.float32(profile.intensity_scale) + np.float32(profile.intensity_offset)
        if sigma > 0:
            out += sigma * _ct_noise(rng, signal.shape)
    np.rint(out, out=out)
    np.clip(out, *value_range, out=out)
    return out.astype(np.int16)


def _ct_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit-variance noise correlated in the image plane, as reconstructed CT noise is."""
    white = rng.standard_normal(shape, dtype=np.float32)
    for axis in (1, 2):
        if white.shape[axis] < 3:
            continue
        smooth = 2.0 * white
        lead = [slice(None)] * 3
        lag = [slice(None)] * 3
        lead[axis], lag[axis] = slice(1, None), slice(None, -1)
        smooth[tuple(lead)] += white[tuple(lag)]
        smooth[tuple(lag)] += white[tuple(lead)]
        white = smooth
    return white * np.float32(1.0 / math.sqrt(6.0 * 6.0))  # each [1,2,1] pass: variance x6


def _lesion_truth(anatomy: _Anatomy, lesion_map: np.ndarray, voxel_ml: float) -> tuple[Lesion, ...]:
    counts = np.bincount(lesion_map.ravel(), minlength=len(anatomy.lesions) + 1)
    out = []
    for index, spec in enumerate(anatomy.lesions):
        centre = anatomy.to_lps @ np.append(spec.centre_local, 1.0)
        voxels = int(counts[index + 1])
        out.append(
            Lesion(
                kind=spec.kind,
                centre_lps=_vec3(centre[:3]),
                diameter_mm=spec.diameter_mm,
                axes_mm=spec.axes_mm,
                voxels=voxels,
                volume_ml=voxels * voxel_ml,
                isodense=spec.isodense,
            )
        )
    return tuple(out)


def _in(tissues: np.ndarray, members: frozenset[Tissue]) -> np.ndarray:
    lut = np.zeros(256, dtype=bool)
    lut[[int(t) for t in members]] = True
    return lut[tissues]


_PHASE_WORD: Final = {
    ContrastPhase.NATIVE: "NATIVE",
    ContrastPhase.ARTERIAL: "ARTERIAL",
    ContrastPhase.PORTAL_VENOUS: "PORTAL",
}


def abdominal_ct_phantom(
    profile: SiteProfile = CT_DEFAULT, rng: np.random.Generator | None = None
) -> Phantom:
    """An abdominal CT in HU with liver (1) and liver tumour (2) labels.

    ``rng`` defaults to ``profile.rng(0)``. The profile's contrast phase sets the organ and
    tumour enhancement; a per-patient factor varies it by +-20 %. Lesion voxels are
    counted in the tumour label; the tumour label lies inside the liver envelope.
    """
    rng = profile.rng() if rng is None else rng
    anatomy = _abdomen(rng, profile)
    draw = _variation_draw(profile, rng, _CT_CONDITIONS, _CT_FOLLOWS)
    canvas = _render(
        profile, anatomy, profile.contrast_phase.value, draw, background=-1000.0, additive=True
    )
    field_hu = _variation_bias(canvas, draw)
    if field_hu is not None:
        canvas.image += field_hu
    tissues = canvas.tissues
    labels = np.zeros(tissues.shape, dtype=np.uint8)
    labels[_in(tissues, _LIVER_TISSUES)] = 1
    tumour = _in(tissues, _LIVER_TUMOUR_TISSUES)
    labels[tumour] = 2
    lesion_map = np.where(tumour, canvas.lesion_map, np.uint8(0))
    image = _finish(profile, canvas.image, rng, rician=False, value_range=_CT_RANGE, draw=draw)
    voxel_ml = float(abs(np.linalg.det(canvas.affine[:3, :3]))) / 1000.0
    return Phantom(
        image=image,
        labels=labels,
        affine_lps=canvas.affine,
        modality="CT",
        tissues=tissues,
        lesions=_lesion_truth(anatomy, lesion_map, voxel_ml),
        lesion_map=lesion_map,
        masks=MappingProxyType({"body": tissues != Tissue.AIR}),
        profile=profile,
        series_description=f"CT ABDOMEN {_PHASE_WORD[profile.contrast_phase]}",
        body_part="ABDOMEN",
        label_names=CT_LABELS,
    )


def brain_mr_phantom(
    profile: SiteProfile = MR_DEFAULT,
    rng: np.random.Generator | None = None,
    sequence: MRSequence | str = MRSequence.T1C,
) -> Phantom:
    """A brain MR (T1C or FLAIR) with the whole glioma as label 1.

    ``masks`` holds ``brain`` and the sub-regions ``oedema``, ``enhancing`` and
    ``necrotic``. Generators seeded alike give the same patient in every sequence, so two
    calls make a co-registered multi-sequence study.
    """
    sequence = MRSequence(sequence)
    rng = profile.rng() if rng is None else rng
    anatomy = _brain(rng, profile)
    draw = _variation_draw(profile, rng, _MR_CONDITIONS, None)
    canvas = _render(profile, anatomy, sequence.value, draw, background=0.0, additive=False)
    tissues = canvas.tissues
    signal = canvas.image
    if profile.bias_field > 0:
        signal *= _bias_field(canvas, anatomy.bias, profile.bias_field)
    field = _variation_bias(canvas, draw)
    if field is not None:
        signal *= np.exp(field)
    image = _finish(profile, signal, rng, rician=True, value_range=_MR_RANGE, draw=draw)
    labels = _in(tissues, _GLIOMA_TISSUES).astype(np.uint8)
    lesion_map = np.where(labels > 0, canvas.lesion_map, np.uint8(0))
    masks = {
        "brain": _in(tissues, _BRAIN_TISSUES),
        "oedema": tissues == Tissue.OEDEMA,
        "enhancing": tissues == Tissue.ENHANCING,
        "necrotic": tissues == Tissue.NECROTIC,
    }
    voxel_ml = float(abs(np.linalg.det(canvas.affine[:3, :3]))) / 1000.0
    return Phantom(
        image=image,
        labels=labels,
        affine_lps=canvas.affine,
        modality="MR",
        tissues=tissues,
        lesions=_lesion_truth(anatomy, lesion_map, voxel_ml),
        lesion_map=lesion_map,
        masks=MappingProxyType(masks),
        profile=profile,
        series_description=_SERIES_DESCRIPTION[sequence],
        body_part="HEAD",
        label_names=MR_LABELS,
    )


_SERIES_DESCRIPTION: Final[Mapping[MRSequence, str]] = MappingProxyType(
    {
        MRSequence.T1C: "T1 POST GD",
        MRSequence.FLAIR: "FLAIR",
        MRSequence.T1: "T1",
        MRSequence.T2: "T2",
    }
)


def brats_mr_study(
    profile: SiteProfile = MR_BRATS,
    rng: np.random.Generator | None = None,
    *,
    skull_stripped: bool = True,
) -> Phantom:
    """One patient imaged as T1C, T1, T2 and FLAIR (:data:`BRATS_CHANNELS`) on one grid.

    ``image`` is int16 ``(4, slice, row, column)`` in that channel order; ``labels`` the
    glioma's disjoint tissue classes (:data:`BRATS_TISSUE_LABELS`: 0 background, 1
    necrotic/non-enhancing core, 2 oedema, 3 enhancing). The anatomy is drawn once (as by
    :func:`brain_mr_phantom` with the same generator), each sequence gets its own
    tissue intensities and its own Rician noise (drawn in channel order) under the same
    bias field. ``skull_stripped`` sets everything outside the brain to exactly 0, as in
    the BraTS data, so a nonzero z-score normalises over the brain.
    """
    rng = profile.rng() if rng is None else rng
    anatomy = _brain(rng, profile)
    draw = _variation_draw(profile, rng, _MR_CONDITIONS, None)
    bias = (
        None
        if profile.bias_field <= 0
        else _bias_field(
            _Canvas(profile, anatomy.to_lps, background=0.0), anatomy.bias, profile.bias_field
        )
    )
    images: list[np.ndarray] = []
    canvas: _Canvas | None = None
    for name in BRATS_CHANNELS:
        canvas = _render(profile, anatomy, name, draw, background=0.0, additive=False)
        signal = canvas.image
        if bias is not None:
            signal *= bias
        field = _variation_bias(canvas, draw)
        if field is not None:
            signal *= np.exp(field)
        images.append(_finish(profile, signal, rng, rician=True, value_range=_MR_RANGE, draw=draw))
    assert canvas is not None
    tissues = canvas.tissues
    brain = _in(tissues, _BRAIN_TISSUES)
    image = np.stack(images)
    if skull_stripped:
        image[:, ~brain] = 0
    labels = np.zeros(tissues.shape, dtype=np.uint8)
    labels[tissues == Tissue.NECROTIC] = 1
    labels[tissues == Tissue.OEDEMA] = 2
    labels[tissues == Tissue.ENHANCING] = 3
    lesion_map = np.where(labels > 0, canvas.lesion_map, np.uint8(0))
    masks = {
        "brain": brain,
        "oedema": tissues == Tissue.OEDEMA,
        "enhancing": tissues == Tissue.ENHANCING,
        "necrotic": tissues == Tissue.NECROTIC,
    }
    voxel_ml = float(abs(np.linalg.det(canvas.affine[:3, :3]))) / 1000.0
    return Phantom(
        image=image,
        labels=labels,
        affine_lps=canvas.affine,
        modality="MR",
        tissues=tissues,
        lesions=_lesion_truth(anatomy, lesion_map, voxel_ml),
        lesion_map=lesion_map,
        masks=MappingProxyType(masks),
        profile=profile,
        series_description="BRAIN T1C T1 T2 FLAIR",
        body_part="HEAD",
        label_names=BRATS_TISSUE_LABELS,
    )


_CT_CONDITIONS: Final = tuple(phase.value for phase in ContrastPhase)
_MR_CONDITIONS: Final = tuple(sequence.value for sequence in MRSequence)
#: Lesion tissues take the liver's random HU shift plus their own.
_CT_FOLLOWS: Final[Mapping[int, int]] = MappingProxyType(
    {int(t): int(Tissue.LIVER) for t in _LIVER_TUMOUR_TISSUES}
)


def _variation_draw(
    profile: SiteProfile,
    rng: np.random.Generator,
    conditions: Sequence[str],
    follows: Mapping[int, int] | None,
) -> VariationDraw | None:
    """This case's draw of the profile's variation, after the anatomy; None (and nothing
    drawn) where the profile randomises nothing."""
    if not profile.variation.random:
        return None
    return profile.variation.draw(rng, conditions, follows)


def _variation_bias(canvas: _Canvas, draw: VariationDraw | None) -> np.ndarray | None:
    """The case's random bias field on the canvas (None: none)."""
    return None if draw is None else draw.bias_field(canvas.index_to_local, canvas.shape)


def _bias_field(canvas: _Canvas, coefficients: np.ndarray, strength: float) -> np.ndarray:
    """``exp(strength * h)`` with ``h`` a smooth linear+quadratic field, |h| <= 1 in the head."""
    g, q = coefficients[:3].tolist(), coefficients[3:].tolist()
    norm = sum(abs(v) for v in g + q) or 1.0
    x, y, z = (c * np.float32(1.0 / 100.0) for c in canvas.coords)
    h = g[0] * x + g[1] * y + g[2] * z + q[0] * x * x + q[1] * y * y + q[2] * z * z
    return np.exp(np.float32(strength / norm) * h).astype(np.float32)


def generate_phantom(
    kind: PhantomKind | str, profile: SiteProfile | None = None, case: int = 0
) -> Phantom:
    """Case ``case`` of a site: ``profile.rng(case)`` drives the generator for ``kind``."""
    kind = PhantomKind(kind)
    if kind == PhantomKind.CT_ABDOMEN:
        ct = profile or CT_DEFAULT
        return abdominal_ct_phantom(ct, ct.rng(case))
    if kind == PhantomKind.MR_BRATS:
        brats = profile or MR_BRATS
        return brats_mr_study(brats, brats.rng(case))
    mr = profile or MR_DEFAULT
    sequence = MRSequence.T1C if kind == PhantomKind.MR_T1C else MRSequence.FLAIR
    return brain_mr_phantom(mr, mr.rng(case), sequence)
