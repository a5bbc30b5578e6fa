"""Per-case randomisation of the phantoms: what a model must not rely on (SynthSeg's idea).

A :class:`Variation` is a frozen set of ranges that a :class:`models.phantoms.SiteProfile`
carries. For each case the generator draws one :class:`VariationDraw` from the case's
random generator, after the anatomy and before the noise, so the same (profile, seed,
case) gives the identical phantom. The default ``Variation()`` randomises nothing and
draws nothing, which keeps every profile without one exactly as it was.

What varies, per case:

- ``tissue_hu`` (CT): each tissue's HU shifted by ``uniform(-tissue_hu, +tissue_hu)``
  (a lesion's tissues follow the liver's shift plus a shift of their own, so lesion
  contrast varies about its nominal value rather than flipping at random);
- ``tissue_gain`` (MR): each tissue's signal in each sequence scaled by
  ``uniform(1 - tissue_gain, 1 + tissue_gain)``;
- ``bias`` : a smooth field over the patient - additive, up to ``+-bias`` HU, on CT
  (beam hardening, scatter); multiplicative, ``exp(+-s)`` with ``s`` up to ``bias``, on
  MR (added to the profile's own ``bias_field``);
- ``psf_fwhm_mm``/``slice_fwhm_mm``: a Gaussian point spread function, its in-plane and
  through-slice full width at half maximum drawn from these ranges (0: sharp), applied
  to the image on the output grid; the truth stays sharp on that grid;
- ``deform_mm``: a smooth random displacement field (plane waves of wavelengths in
  ``deform_wavelength_mm``, amplitude up to ``deform_mm``) applied to the points at
  which the anatomy is sampled, so every organ's shape bends a little - the image and
  the truth alike (a lesion's ``centre_lps`` in the truth stays the undeformed one, at
  most ``deform_mm`` from where it is drawn);
- ``noise_gain``: the profile's noise sigma scaled by ``uniform(*noise_gain)``.

Not random but part of the same rendering: ``slice_samples`` (odd) averages the image
over that many points across each slice's thickness, the slice profile of a thick-slice
series; the truth is taken at the slice centre.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

import numpy as np

__all__ = ["NO_VARIATION", "Variation", "VariationDraw", "blur", "smooth_field"]

_FWHM_PER_SIGMA: Final = 2.0 * math.sqrt(2.0 * math.log(2.0))
#: Tissue codes are uint8: per-tissue draws are tables of this length.
_TISSUE_CODES: Final = 256


def _range(name: str, value: tuple[float, float], *, low: float = 0.0) -> tuple[float, float]:
    pair = (float(value[0]), float(value[1]))
    if len(value) != 2 or not low <= pair[0] <= pair[1]:
        raise ValueError(f"Variation.{name} must be (lo, hi) with {low} <= lo <= hi, not {value}")
    return pair


@dataclass(frozen=True, slots=True)
class Variation:
    """Ranges of per-case randomisation; see the module docstring. Zero: none."""

    tissue_hu: float = 0.0
    tissue_gain: float = 0.0
    bias: float = 0.0
    psf_fwhm_mm: tuple[float, float] = (0.0, 0.0)
    slice_fwhm_mm: tuple[float, float] = (0.0, 0.0)
    deform_mm: float = 0.0
    deform_wavelength_mm: tuple[float, float] = (80.0, 200.0)
    noise_gain: tuple[float, float] = (1.0, 1.0)
    slice_samples: int = 1

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "psf_fwhm_mm", _range("psf_fwhm_mm", self.psf_fwhm_mm))
        set_(self, "slice_fwhm_mm", _range("slice_fwhm_mm", self.slice_fwhm_mm))
        set_(self, "noise_gain", _range("noise_gain", self.noise_gain))
        wavelength = _range("deform_wavelength_mm", self.deform_wavelength_mm)
        set_(self, "deform_wavelength_mm", wavelength)
        if wavelength[0] <= 0:
            raise ValueError("Variation.deform_wavelength_mm must be positive")
        if self.tissue_hu < 0:
            raise ValueError("Variation.tissue_hu must not be negative")
        if not 0 <= self.tissue_gain < 1:
            raise ValueError("Variation.tissue_gain must be in [0, 1)")
        if self.bias < 0:
            raise ValueError("Variation.bias must not be negative")
        if self.deform_mm < 0:
            raise ValueError("Variation.deform_mm must not be negative")
        # a displacement whose gradient nears 1 folds the anatomy over itself
        if self.deform_mm * 2.0 * math.pi / wavelength[0] > 0.5:
            raise ValueError(
                "Variation.deform_mm is too large for the shortest deform_wavelength_mm "
                "(need deform_mm * 2 pi / wavelength <= 0.5, or the anatomy folds)"
            )
        if self.slice_samples < 1 or self.slice_samples % 2 == 0:
            raise ValueError("Variation.slice_samples must be an odd number >= 1")

    @property
    def random(self) -> bool:
        """Whether a case draws anything (the default draws nothing)."""
        return (
            self.tissue_hu > 0
            or self.tissue_gain > 0
            or self.bias > 0
            or self.psf_fwhm_mm[1] > 0
            or self.slice_fwhm_mm[1] > 0
            or self.deform_mm > 0
            or self.noise_gain != (1.0, 1.0)
        )

    def draw(
        self,
        rng: np.random.Generator,
        conditions: Sequence[str],
        follows: Mapping[int, int] | None = None,
    ) -> VariationDraw:
        """One case's values. ``conditions`` are the phases or sequences (MR gains are per
        condition); ``follows`` maps a tissue code to the code whose HU shift it adds
        to its own (lesion tissues follow their organ). The number and order of draws
        depend only on this Variation and ``conditions``, never on the grid."""
        offsets = rng.uniform(-self.tissue_hu, self.tissue_hu, size=_TISSUE_CODES)
        for tissue, parent in (follows or {}).items():
            offsets[tissue] += offsets[parent]
        gains = rng.uniform(
            1.0 - self.tissue_gain, 1.0 + self.tissue_gain, size=(len(conditions), _TISSUE_CODES)
        )
        bias = float(rng.uniform(0.0, self.bias))
        bias_waves = _waves(rng, 4, (150.0, 400.0))
        psf = float(rng.uniform(*self.psf_fwhm_mm))
        slice_psf = float(rng.uniform(*self.slice_fwhm_mm))
        deform = float(rng.uniform(0.0, self.deform_mm))
        deform_waves = tuple(_waves(rng, 3, self.deform_wavelength_mm) for _ in range(3))
        noise = float(rng.uniform(*self.noise_gain))
        return VariationDraw(
            offsets=offsets.astype(np.float32),
            gains=MappingProxyType(
                {c: gains[i].astype(np.float32) for i, c in enumerate(conditions)}
            ),
            bias=bias,
            bias_waves=bias_waves,
            psf_fwhm_mm=psf,
            slice_fwhm_mm=slice_psf,
            deform_mm=deform,
            deform_waves=deform_waves,
            noise_gain=noise,
        )


#: The default: nothing randomised.
NO_VARIATION: Final = Variation()


@dataclass(frozen=True, slots=True, eq=False)
class VariationDraw:
    """One case's draw of a :class:`Variation`."""

    offsets: np.ndarray  # HU per tissue code
    gains: Mapping[str, np.ndarray]  # signal factor per tissue code, per condition
    bias: float
    bias_waves: np.ndarray
    psf_fwhm_mm: float
    slice_fwhm_mm: float
    deform_mm: float
    deform_waves: tuple[np.ndarray, ...]  # one set per axis
    noise_gain: float

    def value(self, tissue: int, condition: str, value: float, *, additive: bool) -> float:
        """A tissue's nominal value after this case's shift (CT) or gain (MR)."""
        if additive:
            return value + float(self.offsets[tissue])
        return value * float(self.gains[condition][tissue])

    def displace(
        self,
        coords: tuple[np.ndarray, np.ndarray, np.ndarray],
        index_to_mm: np.ndarray,
    ) -> None:
        """Move a grid's sample points ``coords`` (mm, in place) by the smooth
        displacement field; ``index_to_mm`` (4x4) maps the grid's indices to them."""
        if self.deform_mm <= 0:
            return
        for axis, waves in enumerate(self.deform_waves):
            shift = smooth_field(index_to_mm, coords[axis].shape, waves)
            shift *= np.float32(self.deform_mm)
            coords[axis][...] += shift

    def bias_field(self, index_to_mm: np.ndarray, shape: tuple[int, ...]) -> np.ndarray | None:
        """The smooth field in [-1, 1] times :attr:`bias` on a grid (``index_to_mm``: its
        indices to mm), or None where there is none."""
        if self.bias <= 0:
            return None
        out = smooth_field(index_to_mm, shape, self.bias_waves)
        out *= np.float32(self.bias)
        return out

    def blur(self, image: np.ndarray, spacing_mm: Sequence[float]) -> np.ndarray:
        """``image`` (slice, row, column) through this case's point spread function."""
        fwhm = (self.slice_fwhm_mm, self.psf_fwhm_mm, self.psf_fwhm_mm)
        return blur(image, [f / float(s) for f, s in zip(fwhm, spacing_mm, strict=True)])


def _waves(rng: np.random.Generator, count: int, wavelength_mm: tuple[float, float]) -> np.ndarray:
    direction = rng.normal(size=(count, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    wavelength = rng.uniform(*wavelength_mm, size=(count, 1))
    phase = rng.uniform(0.0, 2.0 * math.pi, size=(count, 1))
    return np.hstack([direction * (2.0 * math.pi / wavelength), phase])


def smooth_field(index_to_mm: np.ndarray, shape: tuple[int, ...], waves: np.ndarray) -> np.ndarray:
    """A smooth field within [-1, 1] on a 3-D grid: the mean of the plane waves' sines
    (rows ``[kx, ky, kz, phase]``, k in rad/mm) at the points ``index_to_mm`` (4x4) maps
    the indices to. On a grid the phase is a sum of one term per axis, so
    ``sin(a + b + c) = sin(a + b) cos(c) + cos(a + b) sin(c)`` needs no 3-D sines."""
    total = np.zeros(shape, dtype=np.float32)
    index = [np.arange(n, dtype=np.float64) for n in shape]
    for kx, ky, kz, phase in waves.tolist():
        k = np.array([kx, ky, kz])
        slope = k @ index_to_mm[:3, :3]  # phase per step along each index axis
        offset = float(k @ index_to_mm[:3, 3]) + phase
        ab = (slope[0] * index[0] + offset)[:, None] + (slope[1] * index[1])[None, :]
        c = slope[2] * index[2]
        sin_ab = np.sin(ab).astype(np.float32)[:, :, None]
        cos_ab = np.cos(ab).astype(np.float32)[:, :, None]
        total += sin_ab * np.cos(c).astype(np.float32)[None, None, :]
        total += cos_ab * np.sin(c).astype(np.float32)[None, None, :]
    total *= np.float32(1.0 / len(waves))
    return total


def blur(image: np.ndarray, fwhm_voxels: Sequence[float]) -> np.ndarray:
    """Separable Gaussian blur, FWHM per axis in voxels (<= 0.5: that axis untouched);
    edges reflected. Float32 out."""
    out = image.astype(np.float32, copy=True)
    for axis, fwhm in enumerate(fwhm_voxels):
        sigma = fwhm / _FWHM_PER_SIGMA
        if fwhm <= 0.5 or out.shape[axis] < 2:
            continue
        radius = max(1, math.ceil(3.0 * sigma))
        taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        taps /= taps.sum()
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
        acc = np.zeros_like(out)
        n = out.shape[axis]
        window: list[slice] = [slice(None)] * out.ndim
        for k, weight in enumerate(taps.tolist()):
            window[axis] = slice(k, k + n)
            acc += np.float32(weight) * padded[tuple(window)]
        out = acc
    return out
